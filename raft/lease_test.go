package raft

import (
	"testing"
)

const testTick = int64(10_000_000) // 10ms

// leaseHarness is a 3-voter cluster whose nodes share one clock (drift is
// the simulator's business); ticks advance it one tick each unless the test
// ticks without time passing.
type leaseHarness struct {
	*harness
	now int64
}

func newLeaseHarness(t *testing.T, opts func(*Config)) *leaseHarness {
	t.Helper()
	lh := &leaseHarness{now: 1}
	lh.harness = newHarness(1, func(c *Config) {
		c.Clock = func() int64 { return lh.now }
		c.TickNanos = testTick
		if opts != nil {
			opts(c)
		}
	})
	lh.bootstrap(1, 2, 3)
	// Time passes with the ticks until node 1 leads and its lease began.
	lh.passTicks(1, 10)
	lh.nodes[1].raft.electionElapsed = 1 << 20
	lh.passTicks(0, 1)
	if lh.leader() != 1 {
		t.Fatalf("leader %d, want 1", lh.leader())
	}
	lh.passTicks(0, 12)
	return lh
}

// passTicks advances the clock by one tick per tick of every node (of only
// id, when not 0).
func (lh *leaseHarness) passTicks(id NodeID, n int) {
	for i := 0; i < n; i++ {
		lh.now += testTick
		for _, nid := range lh.ids {
			if (id == 0 || nid == id) && !lh.nodes[nid].down {
				lh.nodes[nid].raft.Tick()
			}
		}
		lh.stabilize()
	}
}

func countType(msgs []Message, typ MessageType) int {
	n := 0
	for _, m := range msgs {
		if m.Type == typ {
			n++
		}
	}
	return n
}

func TestLeaseReadWithoutRound(t *testing.T) {
	lh := newLeaseHarness(t, nil)
	r := lh.nodes[1].raft
	if !r.LeaseValid() {
		t.Fatalf("leader holds no lease after a quorum acknowledged its heartbeats")
	}
	must(r.ReadIndex(7))
	u := r.Update()
	if len(u.ReadStates) != 1 || u.ReadStates[0].Context != 7 || u.ReadStates[0].Index != r.log.committed {
		t.Fatalf("lease read: %+v, want one read state at the commit index %d", u.ReadStates, r.log.committed)
	}
	if n := countType(u.Messages, MsgHeartbeat); n != 0 {
		t.Fatalf("a lease read sent %d heartbeats", n)
	}
}

func TestLeaseEndsWithoutAcknowledgements(t *testing.T) {
	lh := newLeaseHarness(t, nil)
	r := lh.nodes[1].raft
	lh.isolate(1)
	// The lease is V(1-d)/(1+d) = 100ms * 0.9/1.1 < 82ms after the last
	// acknowledged round: 9 ticks later it is gone.
	lh.passTicks(1, 9)
	if r.state != StateLeader {
		t.Fatalf("check-quorum already stepped the leader down")
	}
	if r.LeaseValid() {
		t.Fatalf("lease still valid %dms after the last acknowledged round", 9*testTick/1e6)
	}
	must(r.ReadIndex(8))
	lh.process(lh.nodes[1])
	if len(lh.nodes[1].reads) != 0 {
		t.Fatalf("a read was served without a lease or a round: %+v", lh.nodes[1].reads)
	}
}

func TestLeaseHeldWhileTimeStands(t *testing.T) {
	// Ticks without time (a timer catching up): the lease is time, so a
	// burst of ticks neither ends it nor lets a follower vote.
	lh := newLeaseHarness(t, nil)
	lh.isolate(1)
	for i := 0; i < 40; i++ {
		lh.nodes[2].raft.Tick()
		lh.nodes[3].raft.Tick()
		lh.stabilize()
	}
	for _, id := range []NodeID{2, 3} {
		if st := lh.nodes[id].raft.state; st != StateFollower {
			t.Fatalf("node %d became %s within its vote lease after a burst of ticks", id, st)
		}
	}
	// Once time passes, they elect a new leader.
	lh.passTicks(2, 30)
	lh.passTicks(3, 30)
	if l := lh.leader(); l != 2 && l != 3 {
		lh.passTicks(0, 40)
	}
	if lh.nodes[2].raft.state != StateLeader && lh.nodes[3].raft.state != StateLeader {
		t.Fatalf("no new leader once the vote lease ran out")
	}
	if lh.nodes[1].raft.LeaseValid() {
		t.Fatalf("the old leader still holds a lease")
	}
}

func TestLeaseVotesRefusedWithinLease(t *testing.T) {
	lh := newLeaseHarness(t, nil)
	r2 := lh.nodes[2].raft
	// A vote request from 3 for a higher term, while 2 heard from the
	// leader: refused without a term change.
	term := r2.term
	must(r2.Step(Message{Type: MsgVote, From: 3, To: 2, Term: term + 1, Index: r2.log.lastIndex(), LogTerm: r2.log.lastTerm()}))
	if r2.term != term || r2.vote == 3 {
		t.Fatalf("vote granted within the vote lease: term %d vote %d", r2.term, r2.vote)
	}
	// The same request once V passed without the leader: granted.
	lh.now += 11 * testTick
	must(r2.Step(Message{Type: MsgVote, From: 3, To: 2, Term: term + 1, Index: r2.log.lastIndex(), LogTerm: r2.log.lastTerm()}))
	if r2.vote != 3 {
		t.Fatalf("vote refused after the lease: term %d vote %d", r2.term, r2.vote)
	}
}

func TestNoLeaseAfterTransferOrInNewLeadership(t *testing.T) {
	lh := newLeaseHarness(t, nil)
	r := lh.nodes[1].raft
	must(r.TransferLeadership(2))
	if r.LeaseValid() {
		t.Fatalf("lease valid during a transfer")
	}
	lh.stabilize()
	r2 := lh.nodes[2].raft
	if r2.state != StateLeader {
		t.Fatalf("transfer did not complete: 2 is %s", r2.state)
	}
	// The new leader waits out V before its first lease.
	lh.passTicks(0, 3)
	if r2.LeaseValid() {
		t.Fatalf("new leader holds a lease %dms after it was elected", 3*testTick/1e6)
	}
	lh.passTicks(0, 10)
	if !r2.LeaseValid() {
		t.Fatalf("new leader holds no lease after waiting out V")
	}
}

func TestNoLeaseConfig(t *testing.T) {
	lh := newLeaseHarness(t, func(c *Config) { c.NoLease = true })
	if lh.nodes[1].raft.LeaseValid() {
		t.Fatalf("lease with NoLease")
	}
}

func TestFollowerReadIndex(t *testing.T) {
	lh := newLeaseHarness(t, nil)
	f := lh.nodes[2]
	for ctx := uint64(1); ctx <= 3; ctx++ {
		must(f.raft.ReadIndexAny(ctx))
	}
	u := f.raft.Update()
	if n := countType(u.Messages, MsgReadIndex); n != 1 {
		t.Fatalf("%d read index requests for 3 reads, want 1 (batched)", n)
	}
	for _, m := range u.Messages {
		lh.queue = append(lh.queue, m)
	}
	lh.stabilize()
	if len(f.reads) != 3 {
		t.Fatalf("follower got %d read states, want 3", len(f.reads))
	}
	for _, rs := range f.reads {
		if rs.Index != lh.nodes[1].raft.log.committed {
			t.Fatalf("read state at %d, leader commit %d", rs.Index, lh.nodes[1].raft.log.committed)
		}
	}
	// A read waiting on a leader that crashed fails once a new leader
	// is known, and the next one is answered by the new leader.
	lh.crash(1)
	must(f.raft.ReadIndexAny(4))
	lh.process(f)
	lh.passTicks(0, 40)
	var failed bool
	for _, n := range f.notices {
		failed = failed || (n.Kind == NoticeReadFailed && n.Context == 4)
	}
	if !failed {
		t.Fatalf("read 4 sent to the crashed leader did not fail: notices %+v", f.notices)
	}
	if lh.leader() == 2 {
		f = lh.nodes[3]
	}
	before := len(f.reads)
	must(f.raft.ReadIndexAny(5))
	lh.stabilize()
	if len(f.reads) != before+1 {
		t.Fatalf("read through the new leader %d not answered", lh.leader())
	}
	// Without a known leader a follower refuses.
	f.raft.becomeFollower(f.raft.term+1, None)
	if err := f.raft.ReadIndexAny(9); err == nil {
		t.Fatalf("read index without a leader accepted")
	}
}

func TestFollowerReadIndexWithoutLeaseTakesRound(t *testing.T) {
	lh := newLeaseHarness(t, func(c *Config) { c.NoLease = true })
	f := lh.nodes[2]
	must(f.raft.ReadIndexAny(1))
	lh.process(f)
	lh.deliver(func(m Message) bool { return m.Type == MsgReadIndex })
	lh.process(lh.nodes[1])
	var hb int
	for _, m := range lh.queue {
		if m.Type == MsgHeartbeat {
			hb++
		}
		if m.Type == MsgReadIndexResp {
			t.Fatalf("leader without a lease answered before a round")
		}
	}
	if hb == 0 {
		t.Fatalf("leader without a lease sent no heartbeat round")
	}
	lh.stabilize()
	if len(f.reads) != 1 {
		t.Fatalf("follower read not answered after the round")
	}
}

func TestReadStale(t *testing.T) {
	lh := newLeaseHarness(t, nil)
	f := lh.nodes[3]
	bound := 50 * 1_000_000 * int64(1)
	// Nothing known yet: the read goes to the leader.
	must(f.raft.ReadStale(1, bound))
	lh.stabilize()
	if len(f.reads) != 1 {
		t.Fatalf("stale read not answered")
	}
	// Fresh now: served at once, no message.
	must(f.raft.ReadStale(2, bound))
	u := f.raft.Update()
	if len(u.ReadStates) != 1 || countType(u.Messages, MsgReadIndex) != 0 {
		t.Fatalf("fresh stale read: %d read states, %d requests", len(u.ReadStates), countType(u.Messages, MsgReadIndex))
	}
	// Past the bound with the leader gone: refused.
	lh.crash(1)
	lh.now += 2 * bound
	f.raft.lead = None
	if err := f.raft.ReadStale(3, bound); err == nil {
		t.Fatalf("stale read past the bound without a leader served")
	}
}

func takeMsgs(h *harness, match func(Message) bool) []Message {
	var out []Message
	q := h.queue[:0]
	for _, m := range h.queue {
		if match(m) {
			out = append(out, m)
		} else {
			q = append(q, m)
		}
	}
	h.queue = q
	return out
}

// A node that reached a newer term without a leader (here: a pre-vote
// rejection of that term) still refuses votes within its vote lease: a
// leader counts on it.
func TestLeaseSameTermVoteRefused(t *testing.T) {
	lh := newLeaseHarness(t, nil)
	r1, r2, r3 := lh.nodes[1].raft, lh.nodes[2].raft, lh.nodes[3].raft
	T := r1.term
	r3.voteLeaseUntil = 0
	r3.campaign(campaignElection) // node 3 candidate of T+1
	lh.process(lh.nodes[3])
	votes := takeMsgs(lh.harness, func(m Message) bool { return m.From == 3 })
	// A late pre-vote of node 2 for T+1 reaches 3, which rejects it in T+1.
	must(r3.Step(Message{Type: MsgPreVote, From: 2, To: 3, Term: T + 1, Index: r2.log.lastIndex(), LogTerm: r2.log.lastTerm()}))
	lh.process(lh.nodes[3])
	rej := takeMsgs(lh.harness, func(m Message) bool { return m.From == 3 })
	lh.isolate(1)
	for _, m := range append(rej, votes...) {
		if m.To == 2 {
			must(r2.Step(m))
		}
	}
	lh.stabilize()
	if r2.vote == 3 || r3.state == StateLeader {
		t.Fatalf("node 2 voted for 3 within its vote lease (term %d, vote %d); 3 is %s while leader 1 holds a lease: %v",
			r2.term, r2.vote, r3.state, r1.LeaseValid())
	}
}

// A follower restarted in the same term under the same leader does not take
// an answer to a batch of its previous incarnation for a new batch.
func TestForwardSeqDiffersAfterRestart(t *testing.T) {
	lh := newLeaseHarness(t, nil)
	r1 := lh.nodes[1].raft
	must(lh.nodes[2].raft.ReadIndexAny(1))
	lh.process(lh.nodes[2])
	lh.deliver(func(m Message) bool { return m.Type == MsgReadIndex })
	old := takeMsgs(lh.harness, func(m Message) bool { return m.Type == MsgReadIndexResp })
	if len(old) != 1 {
		t.Fatalf("answers %v, want 1", old)
	}
	lh.crash(2)
	lh.restart(2)
	lh.passTicks(0, 3)
	_, _, err := r1.Propose([]byte("w"))
	must(err)
	lh.stabilize()
	lh.passTicks(0, 2)
	c1 := r1.log.committed
	f := lh.nodes[2]
	f.reads = nil
	must(f.raft.ReadIndexAny(2))
	lh.process(f)
	takeMsgs(lh.harness, func(m Message) bool { return m.Type == MsgReadIndex })
	must(f.raft.Step(old[0]))
	lh.process(f)
	for _, rs := range f.reads {
		if rs.Context == 2 && rs.Index < c1 {
			t.Fatalf("read 2, started after commit %d, answered at %d by the answer to the previous incarnation", c1, rs.Index)
		}
	}
}

// A batch to a leader that is re-elected in a newer term fails at once
// (its answer, of the old term, would be dropped).
func TestForwardFailsOnNewTermOfSameLeader(t *testing.T) {
	lh := newLeaseHarness(t, nil)
	f := lh.nodes[2].raft
	must(f.ReadIndexAny(1))
	lh.process(lh.nodes[2])
	takeMsgs(lh.harness, func(m Message) bool { return m.Type == MsgReadIndex })
	must(f.Step(Message{Type: MsgHeartbeat, From: 1, To: 2, Term: f.term + 1}))
	if f.forward != nil {
		t.Fatalf("batch of term %d still in flight in term %d", f.forward.term, f.term)
	}
}

// A removed node's read index request is refused (it would never apply
// the index).
func TestReadIndexRefusedToNonReplica(t *testing.T) {
	lh := newLeaseHarness(t, nil)
	r1 := lh.nodes[1].raft
	must(r1.ProposeConfigChange(ConfigChange{Type: ConfigRemove, ID: 3}))
	lh.stabilize()
	lh.passTicks(0, 3)
	n3 := lh.nodes[3]
	if n3.raft.lead == None {
		t.Fatalf("the removed node forgot its leader: the test no longer reaches the leader's check")
	}
	n3.reads, n3.notices = nil, nil
	if err := n3.raft.ReadIndexAny(5); err != nil {
		return // refused locally: fine too
	}
	lh.stabilize()
	if len(n3.reads) != 0 {
		t.Fatalf("removed node got a read index: %+v", n3.reads)
	}
	failed := false
	for _, n := range n3.notices {
		failed = failed || (n.Kind == NoticeReadFailed && n.Context == 5)
	}
	if !failed {
		t.Fatalf("removed node's read neither answered nor failed: notices %+v", n3.notices)
	}
}

func TestMaxClockDriftNaNRefused(t *testing.T) {
	c := Config{ID: 1, Storage: NewMemoryStorage(), Rand: newHarness(1, nil).config(1, NewMemoryStorage(), 0).Rand,
		Clock: func() int64 { return 1 }, TickNanos: 1, MaxClockDrift: nan()}
	if _, err := New(c); err == nil {
		t.Fatalf("MaxClockDrift NaN accepted")
	}
}

func nan() float64 { z := 0.0; return z / z }

// TestLeaseRoundsBounded: a leader whose heartbeat rounds go unanswered (cut
// off, every read taking a round) remembers at most maxLeaseRounds of them.
func TestLeaseRoundsBounded(t *testing.T) {
	lh := newLeaseHarness(t, func(c *Config) { c.NoLease = true })
	r := lh.nodes[1].raft
	lh.isolate(1)
	for ctx := uint64(1); ctx <= 2*maxLeaseRounds; ctx++ {
		must(r.ReadIndex(ctx))
	}
	if n := len(r.rounds); n != maxLeaseRounds {
		t.Fatalf("%d rounds remembered after %d unanswered, want the bound %d", n, 2*maxLeaseRounds, maxLeaseRounds)
	}
}
