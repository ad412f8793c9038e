package sim

import (
	"strings"

	"time"

	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
)

// faultKinds are the scheduled faults; per-message faults (drop, duplicate,
// reorder, slow disk) happen on every message and write of the fault phase.
var faultKinds = []struct {
	name   string
	weight int
	fn     func(*Sim)
}{
	{"crash", 3, (*Sim).faultCrash},
	{"partition-isolate", 2, (*Sim).faultIsolate},
	{"partition-halves", 2, (*Sim).faultHalves},
	{"partition-oneway", 2, (*Sim).faultOneWay},
	{"partition-flap", 1, (*Sim).faultFlap},
	{"links-one-by-one", 1, (*Sim).faultLinks},
	{"heal", 2, (*Sim).faultHeal},
	{"pause", 1, (*Sim).faultPause},
	{"clock-jump", 1, (*Sim).faultClockJump},
	{"membership", 3, (*Sim).faultMembership},
	{"transfer", 2, (*Sim).faultTransfer},
	{"crash-mid-write", 2, (*Sim).faultCrashMidWrite},
	{"eio", 1, (*Sim).faultEIO},
	{"eio-read", 1, (*Sim).faultReadEIO},
	{"corrupt-read", 1, (*Sim).faultCorruptRead},
	{"enospc", 1, (*Sim).faultNoSpace},
	{"stale-leader", 2, (*Sim).faultStaleLeader},
	{"slow-leader-disk", 1, (*Sim).faultSlowLeaderDisk},
}

// electionTimeout is the nominal election timeout of the simulated nodes.
func (s *Sim) electionTimeout() time.Duration { return 10 * s.opts.Tick }

func (s *Sim) scheduleFault() {
	d := s.randDuration(s.opts.FaultInterval/2, s.opts.FaultInterval*3/2)
	s.after(d, &event{kind: evFault, fn: func() {
		if !s.faultsOn {
			return
		}
		total := 0
		for _, k := range faultKinds {
			total += k.weight
		}
		pick := s.rng.IntN(total)
		for _, k := range faultKinds {
			if pick < k.weight {
				k.fn(s)
				break
			}
			pick -= k.weight
		}
		s.scheduleFault()
	}})
}

// liveNodes returns the nodes that are members and running.
func (s *Sim) liveNodes() []*node {
	var out []*node
	for _, id := range s.sortedIDs() {
		if n := s.nodes[id]; n.up && !n.removed {
			out = append(out, n)
		}
	}
	return out
}

func (s *Sim) pickLive() *node {
	live := s.liveNodes()
	if len(live) == 0 {
		return nil
	}
	return live[s.rng.IntN(len(live))]
}

// faultCrash crashes a node, keeping a majority of the nodes up, and
// restarts it later.
func (s *Sim) faultCrash() {
	if down, total := s.downCount(); (down+1)*2 >= total {
		return
	}
	n := s.pickLive()
	if n == nil {
		return
	}
	s.crash(n)
	s.count("crash")
	if s.rng.IntN(3) == 0 {
		s.flipBit(n)
	}
	s.restartLater(n, s.randDuration(50*time.Millisecond, 1500*time.Millisecond))
}

// downCount returns how many members are down, and how many members there are.
func (s *Sim) downCount() (down, total int) {
	for _, id := range s.sortedIDs() {
		n := s.nodes[id]
		if n.removed {
			continue
		}
		total++
		if !n.up {
			down++
		}
	}
	return down, total
}

// flipBit flips a bit inside a batch of a closed segment of a crashed node:
// its next start must refuse the log.
func (s *Sim) flipBit(n *node) {
	names, _ := n.fs.List()
	var segs []string
	for _, name := range names {
		if len(name) > 4 && name[:4] == "seg-" {
			segs = append(segs, name)
		}
	}
	if len(segs) < 2 {
		return
	}
	file := segs[s.rng.IntN(len(segs)-1)]
	size := n.fs.Size(file)
	const header = 56
	if size <= header+16 {
		return
	}
	f := &bitFlip{file: file, off: header + s.rng.Int64N(size-header), bit: uint(s.rng.IntN(8))}
	if err := n.fs.FlipBit(f.file, f.off, f.bit); err == nil {
		n.flipped = f
		s.count("bitflip")
	}
}

// faultCrashMidWrite makes a node crash at one of its next disk operations,
// so the crash can land between a write and its sync (torn tails).
func (s *Sim) faultCrashMidWrite() {
	if down, total := s.downCount(); (down+1)*2 >= total {
		return
	}
	n := s.pickLive()
	if n == nil {
		return
	}
	if s.rng.IntN(2) == 0 {
		n.fs.CrashAtSegmentSync()
		s.tracef("node %d will crash at its next segment sync", n.id)
		return
	}
	if s.opts.SQLite && s.rng.IntN(2) == 0 {
		// A crash inside the work on the database files: a checkpoint's
		// or a received snapshot's file writes and syncs, the record's
		// replacement (dirty mark, index, install switch), the snapshot
		// record after an install.
		prefix := []string{"sqlite-", "fsm-databases", "snap-"}[s.rng.IntN(3)]
		k := 1 + s.rng.IntN(6)
		n.fs.CrashAtFile(prefix, k)
		s.count("crash-armed-" + strings.TrimSuffix(prefix, "-"))
		s.tracef("node %d will crash at operation %d on a %s file", n.id, k, prefix)
		return
	}
	n.fs.CrashAt(1 + s.rng.IntN(4))
	s.tracef("node %d will crash at a disk operation", n.id)
}

// faultEIO fails one of a node's next disk operations with EIO: the node
// stops (no retry) and restarts from its disk.
func (s *Sim) faultEIO() {
	n := s.pickLive()
	if n == nil {
		return
	}
	n.fs.FailAt(1+s.rng.IntN(4), nil)
	s.count("eio")
}

// faultReadEIO fails one of a running node's next reads of its disk (an
// entry no longer cached, a snapshot chunk) with EIO: raft reports it as a
// storage failure, the node stops and restarts from its disk. A read fault
// not hit before the node restarts is cancelled (recovery reads are not
// what it tests).
func (s *Sim) faultReadEIO() {
	n := s.pickLive()
	if n == nil {
		return
	}
	n.fs.FailReadAt(1 + s.rng.IntN(20))
	s.count("eio-read")
}

// faultCorruptRead makes one of a running node's next reads of a log
// segment return a flipped bit, the file itself intact (a bad cable, a
// controller fault): the log must detect it as corruption (raft reports a
// storage failure, the node restarts and reads the intact file), never hand
// the damaged entry to raft, which would send or apply it.
func (s *Sim) faultCorruptRead() {
	n := s.pickLive()
	if n == nil {
		return
	}
	n.fs.CorruptReadAt(1 + s.rng.IntN(20))
	s.count("corrupt-read")
}

// faultNoSpace fills a node's disk for a while, then frees space.
func (s *Sim) faultNoSpace() {
	n := s.pickLive()
	if n == nil {
		return
	}
	n.fs.Capacity = n.fs.Used() + int64(s.rng.IntN(2048))
	s.count("enospc")
	fs := n.fs
	s.after(s.randDuration(100*time.Millisecond, 800*time.Millisecond), &event{kind: evFault, fn: func() {
		fs.Capacity = 0
	}})
}

// faultStaleLeader cuts the leader (with one follower, in clusters of five
// or more) off from the rest and stalls its ticks, so it keeps believing it
// leads (its check-quorum never runs) while it still takes messages and
// clients' requests: reads it serves then must still be linearizable.
func (s *Sim) faultStaleLeader() {
	l := s.leader()
	if l == nil {
		return
	}
	group := map[raft.NodeID]bool{l.id: true}
	ids := s.sortedIDs()
	if len(ids) >= 5 {
		others := []raft.NodeID{}
		for _, id := range ids {
			if id != l.id && s.nodes[id].up && !s.nodes[id].removed {
				others = append(others, id)
			}
		}
		if len(others) > 0 {
			group[others[s.rng.IntN(len(others))]] = true
		}
	}
	var inside, outside []raft.NodeID
	for _, id := range ids {
		if group[id] {
			inside = append(inside, id)
		} else {
			outside = append(outside, id)
		}
	}
	cuts := s.cutBetween(inside, outside)
	l.stalled = true
	inc := l.inc
	// Clients that knew it as the leader keep sending to it; the others
	// moved to the majority's side (and find its new leader there).
	for _, c := range s.clients {
		switch {
		case c.bank:
		case s.rng.IntN(2) == 0:
			// Half of them only read meanwhile (a write there would
			// keep them waiting): a lease that outlives the leader's
			// term shows here.
			c.target = l.id
			c.readsOnly = c.counter == nil && s.rng.IntN(2) == 0
		case len(outside) > 0:
			c.target = outside[s.rng.IntN(len(outside))]
			c.avoid = l.id
			c.writesOnly = s.rng.IntN(2) == 0
			if p := c.pending; p != nil && p.node == l.id && c.counter == nil {
				s.clientTimeout(c, p) // it gave up waiting there
			}
		}
	}
	s.count("stale-leader")
	s.tracef("stale leader %d (group %v)", l.id, group)
	if s.rng.IntN(2) == 0 {
		// The majority's timers fire late and catch up at once: a burst
		// of ticks, but no time, so their vote leases hold and the stale
		// leader's lease stays valid until they end.
		s.after(s.randDuration(0, s.electionTimeout()/5), &event{kind: evFault, fn: func() {
			s.count("stale-leader-tick-burst")
			s.tracef("tick burst on %v", outside)
			for _, id := range outside {
				if n := s.nodes[id]; n.up && !n.paused {
					for i := 0; i < 20; i++ {
						s.take(n, n.loop.Tick())
					}
				}
			}
		}})
	}
	s.after(s.randDuration(2*s.electionTimeout(), 8*s.electionTimeout()), &event{kind: evFault, fn: func() {
		if l.inc == inc {
			l.stalled = false
		}
		for _, c := range s.clients {
			if c.avoid == l.id {
				c.avoid = raft.None
			}
			c.readsOnly, c.writesOnly = false, false
		}
		s.restoreCuts(cuts)
		s.tracef("stale leader %d released", l.id)
	}})
}

// faultSlowLeaderDisk makes the appends of the leader (or, half the time,
// of any node, which may lead next) slow for a while, so the others persist
// first and its commit index runs ahead of what it has written and applied.
func (s *Sim) faultSlowLeaderDisk() {
	n, kind := s.leader(), "slow-leader-disk"
	if n == nil || s.rng.IntN(2) == 0 {
		n, kind = s.pickLive(), "slow-node-disk"
	}
	if n == nil {
		return
	}
	n.slowUntil = s.now + s.randDuration(300*time.Millisecond, 1500*time.Millisecond)
	n.slowBy = s.randDuration(20*time.Millisecond, 80*time.Millisecond)
	s.count(kind)
	if kind != "slow-node-disk" {
		return
	}
	// Slower than an election: if it wins one meanwhile, its commit index
	// runs ahead of what it has written, so its reads must wait for its
	// disk. Half the time the leader crashes at the first moment the slow
	// node holds its whole log (so it may win) but has not written
	// entries the leader already applied (and acknowledged).
	n.slowBy = s.randDuration(300*time.Millisecond, 700*time.Millisecond)
	if l := s.leader(); l != nil && l != n && s.rng.IntN(2) == 0 {
		s.watchFailover(l, n, l.inc, n.inc)
	}
}

// watchFailover crashes leader l once the slow node n holds all of l's log
// but has written less than l applied, checking every millisecond while n
// is slow.
func (s *Sim) watchFailover(l, n *node, linc, ninc int) {
	if !s.faultsOn || !l.up || !n.up || l.inc != linc || n.inc != ninc || s.now >= n.slowUntil {
		return
	}
	lb, nb := l.loop.Raft().Basic(), n.loop.Raft().Basic()
	if lb.State == raft.StateLeader && nb.LastIndex >= lb.LastIndex && nb.Persisted < lb.Applied {
		if down, total := s.downCount(); (down+1)*2 < total {
			s.crash(l)
			s.count("slow-disk-failover")
			s.restartLater(l, s.randDuration(200*time.Millisecond, 1000*time.Millisecond))
		}
		return
	}
	s.after(time.Millisecond, &event{kind: evFault, fn: func() { s.watchFailover(l, n, linc, ninc) }})
}

// cutBetween cuts, both ways, every link between a node of as and a node of
// bs that is not cut yet, and returns those cuts (for restoreCuts).
func (s *Sim) cutBetween(as, bs []raft.NodeID) [][2]raft.NodeID {
	var cuts [][2]raft.NodeID
	for _, a := range as {
		for _, b := range bs {
			for _, c := range [][2]raft.NodeID{{a, b}, {b, a}} {
				if !s.net.cut[c] {
					s.net.cut[c] = true
					cuts = append(cuts, c)
				}
			}
		}
	}
	return cuts
}

// restoreCuts removes the cuts cutBetween made.
func (s *Sim) restoreCuts(cuts [][2]raft.NodeID) {
	for _, c := range cuts {
		delete(s.net.cut, c)
	}
}

func (s *Sim) cutBoth(a, b raft.NodeID) {
	s.net.cut[[2]raft.NodeID{a, b}] = true
	s.net.cut[[2]raft.NodeID{b, a}] = true
}

func (s *Sim) faultIsolate() {
	n := s.pickLive()
	if n == nil {
		return
	}
	// Prefer isolating the leader: that is where the interesting faults are.
	if l := s.leader(); l != nil && s.rng.IntN(2) == 0 {
		n = l
	}
	for _, id := range s.sortedIDs() {
		if id != n.id {
			s.cutBoth(n.id, id)
		}
	}
	s.count("partition-isolate")
	s.tracef("isolate %d", n.id)
}

func (s *Sim) faultHalves() {
	ids := append([]raft.NodeID(nil), s.sortedIDs()...)
	s.rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	k := 1 + s.rng.IntN(len(ids)-1)
	for _, a := range ids[:k] {
		for _, b := range ids[k:] {
			s.cutBoth(a, b)
		}
	}
	s.count("partition-halves")
	s.tracef("split %v | %v", ids[:k], ids[k:])
}

func (s *Sim) faultOneWay() {
	ids := s.sortedIDs()
	a, b := ids[s.rng.IntN(len(ids))], ids[s.rng.IntN(len(ids))]
	if a == b {
		return
	}
	s.net.cut[[2]raft.NodeID{a, b}] = true
	s.count("partition-oneway")
	s.tracef("cut %d->%d", a, b)
}

// faultFlap isolates a node and heals it repeatedly around the election
// timeout.
func (s *Sim) faultFlap() {
	n := s.pickLive()
	if n == nil {
		return
	}
	s.count("partition-flap")
	at := time.Duration(0)
	for i := 0; i < 6; i++ {
		at += s.randDuration(s.electionTimeout()/2, s.electionTimeout()*3/2)
		cut := i%2 == 0
		s.after(at, &event{kind: evFault, fn: func() {
			if !s.faultsOn {
				return
			}
			for _, id := range s.sortedIDs() {
				if id == n.id {
					continue
				}
				if cut {
					s.cutBoth(n.id, id)
				} else {
					delete(s.net.cut, [2]raft.NodeID{n.id, id})
					delete(s.net.cut, [2]raft.NodeID{id, n.id})
				}
			}
			s.tracef("flap %d cut=%v", n.id, cut)
		}})
	}
}

// faultLinks stops every link one by one, then restores them in random order.
func (s *Sim) faultLinks() {
	ids := s.sortedIDs()
	var links [][2]raft.NodeID
	for _, a := range ids {
		for _, b := range ids {
			if a != b {
				links = append(links, [2]raft.NodeID{a, b})
			}
		}
	}
	s.count("links-one-by-one")
	step := s.electionTimeout() / 4
	for i, l := range links {
		s.after(time.Duration(i+1)*step, &event{kind: evFault, fn: func() {
			if s.faultsOn {
				s.net.cut[l] = true
			}
		}})
	}
	s.rng.Shuffle(len(links), func(i, j int) { links[i], links[j] = links[j], links[i] })
	base := time.Duration(len(links)+1) * step
	for i, l := range links {
		s.after(base+time.Duration(i)*step, &event{kind: evFault, fn: func() { delete(s.net.cut, l) }})
	}
}

func (s *Sim) faultHeal() {
	s.net.cut = map[[2]raft.NodeID]bool{}
	s.count("heal")
	s.tracef("heal")
}

// faultPause stops a node (no ticks, no messages) for longer than the
// election timeout, then resumes it with everything that arrived meanwhile.
func (s *Sim) faultPause() {
	n := s.pickLive()
	if n == nil || n.paused {
		return
	}
	n.paused = true
	s.count("pause")
	s.tracef("pause %d", n.id)
	inc := n.inc
	s.after(s.randDuration(s.electionTimeout()*3/2, s.electionTimeout()*4), &event{kind: evFault, fn: func() {
		if n.up && n.inc == inc && n.paused {
			s.resume(n)
		}
	}})
}

// faultClockJump gives a node a burst of ticks at once.
func (s *Sim) faultClockJump() {
	n := s.pickLive()
	if n == nil || n.paused {
		return
	}
	s.count("clock-jump")
	for i := 5 + s.rng.IntN(15); i > 0; i-- {
		s.take(n, n.loop.Tick())
	}
}

func (s *Sim) faultTransfer() {
	l := s.leader()
	if l == nil {
		return
	}
	voters := l.loop.Raft().Status().Config.Voters()
	to := raft.None
	if s.rng.IntN(2) == 0 {
		to = voters[s.rng.IntN(len(voters))]
	}
	// As a node's TRANSFER request does: tracked, answered when done.
	id := s.adminRequest()
	out := l.loop.RequestTransfer(id, to)
	err := refusal(out, id)
	s.take(l, out)
	if err == nil {
		s.count("transfer")
		s.tracef("transfer %d -> %d", l.id, to)
	}
}

// adminRequest returns a request id for a membership change or transfer
// (its reply matches no client, so nobody waits on it).
func (s *Sim) adminRequest() uint64 {
	s.nextReq++
	return s.nextReq
}

// refusal is the error the loop answered request id with at once, if it
// refused it.
func refusal(out loop.Output, id uint64) error {
	for _, r := range out.Replies {
		if r.ID == id && r.Err != nil {
			return r.Err
		}
	}
	return nil
}

// minVoters is the fewest voters a membership change may leave.
const minVoters = 3

// faultMembership makes one membership change on the leader: add a new node
// (as spare), promote, demote, remove (the leader too), or replace a removed
// node by a wiped one under a new id.
func (s *Sim) faultMembership() {
	l := s.leader()
	if l == nil {
		return
	}
	cfg := l.loop.Raft().Status().Config
	var choices []raft.ConfigChange
	var kinds []string
	// Add a node that is not a member yet (a new id).
	if int(s.nextID) <= s.opts.Nodes+s.opts.Joiners*4 && len(cfg.Servers) < s.opts.Nodes+s.opts.Joiners {
		choices = append(choices, raft.ConfigChange{Type: raft.ConfigAdd, ID: s.nextID})
		kinds = append(kinds, "add")
	}
	voters := len(cfg.Voters())
	for _, sv := range cfg.Servers {
		switch sv.Role {
		case raft.Spare:
			choices = append(choices, raft.ConfigChange{Type: raft.ConfigAssign, ID: sv.ID, Role: raft.Standby},
				raft.ConfigChange{Type: raft.ConfigAssign, ID: sv.ID, Role: raft.Voter})
			kinds = append(kinds, "promote", "promote")
		case raft.Standby:
			choices = append(choices, raft.ConfigChange{Type: raft.ConfigAssign, ID: sv.ID, Role: raft.Voter},
				raft.ConfigChange{Type: raft.ConfigRemove, ID: sv.ID})
			kinds = append(kinds, "promote", "remove")
		case raft.Voter:
			if voters > minVoters {
				choices = append(choices, raft.ConfigChange{Type: raft.ConfigAssign, ID: sv.ID, Role: raft.Standby},
					raft.ConfigChange{Type: raft.ConfigRemove, ID: sv.ID})
				kinds = append(kinds, "demote", "remove")
			}
		}
	}
	if len(choices) == 0 {
		return
	}
	i := s.rng.IntN(len(choices))
	if kinds[0] == "add" && s.rng.IntN(3) == 0 {
		i = 0 // adds would be rare among a large cluster's many choices
	}
	cc, kind := choices[i], kinds[i]
	if cc.Type == raft.ConfigRemove && cc.ID == l.id {
		kind = "remove-leader"
	}
	// As a node's ADD/ASSIGN/REMOVE request does: tracked until its entry
	// applies (the answer goes to no client here).
	id, inc := s.adminRequest(), l.inc
	out := l.loop.RequestMembership(id, cc)
	err := refusal(out, id)
	// A quarter of the changes to another server reach only that server:
	// the leader is cut off from the rest, then fails.
	var cuts [][2]raft.NodeID
	if err == nil && cc.Type != raft.ConfigAdd && cc.ID != l.id && s.rng.IntN(4) == 0 {
		var others []raft.NodeID
		for _, id := range s.sortedIDs() {
			if id != l.id && id != cc.ID {
				others = append(others, id)
			}
		}
		cuts = s.cutBetween([]raft.NodeID{l.id}, others)
		s.count("membership-partial")
	}
	s.take(l, out)
	if err != nil {
		return
	}
	s.count(kind)
	s.tracef("membership %s %d on leader %d", cc.Type, cc.ID, l.id)
	if cc.Type != raft.ConfigAdd && (cuts != nil || s.rng.IntN(3) == 0) {
		// The leader fails while the change is in flight: it may have
		// reached only some voters, whose logs then differ in the
		// configuration they act on.
		s.after(s.randDuration(2*time.Millisecond, 20*time.Millisecond), &event{kind: evFault, fn: func() {
			defer func() {
				s.restoreCuts(cuts)
			}()
			if !s.faultsOn || !l.up || l.inc != inc || l.removed {
				return
			}
			if down, total := s.downCount(); (down+1)*2 < total {
				s.crash(l)
				s.count("membership-crash-leader")
				s.restartLater(l, s.randDuration(300*time.Millisecond, 1500*time.Millisecond))
			}
		}})
	}
	switch cc.Type {
	case raft.ConfigAdd:
		// The new node starts empty and waits to be contacted.
		n := s.addNode(cc.ID)
		s.nextID++
		s.startNode(n)
		for _, id := range s.sortedIDs() {
			if s.nodes[id].removed {
				// A member was removed and wiped: the new id takes
				// its place.
				s.count("rejoin-new-id")
				break
			}
		}
	case raft.ConfigRemove:
		// A removed node is wiped after a while: it never comes back
		// under its old id (a new id may join later).
		if n := s.nodes[cc.ID]; n != nil {
			s.after(s.electionTimeout()*5, &event{kind: evFault, fn: func() { s.retire(n) }})
		}
	}
}

// retire stops a removed node for good once its removal committed: the
// leader's configuration in force leaves it out and is committed. A removal
// merely appended may still be overwritten (the node stays a member), so
// an uncommitted one is looked at again later.
func (s *Sim) retire(n *node) {
	if n.removed {
		return
	}
	l := s.leader()
	if l == nil {
		s.after(s.electionTimeout()*2, &event{kind: evFault, fn: func() { s.retire(n) }})
		return
	}
	st := l.loop.Raft().Status()
	if _, member := st.Config.Get(n.id); member {
		return // the removal was overwritten (leadership changed)
	}
	if st.ConfigIndex > st.Commit {
		s.after(s.electionTimeout()*2, &event{kind: evFault, fn: func() { s.retire(n) }})
		return
	}
	if n.up {
		s.crash(n)
	}
	n.removed = true
	s.tracef("retire %d", n.id)
}
