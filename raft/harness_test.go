package raft

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
)

// harness is an in-memory cluster driven step by step by tests: each node has
// a MemoryStorage and a Raft; messages queue in a network that tests deliver,
// drop or partition explicitly. Persistence is synchronous unless a node is
// set to hold its writes (to test acknowledgements of unpersisted entries).
type harness struct {
	nodes   map[NodeID]*hnode
	ids     []NodeID
	queue   []Message
	cut     map[[2]NodeID]bool // directed links that drop messages
	opts    func(*Config)
	seed    uint64
	applied map[uint64]Entry // index -> entry applied anywhere (state machine safety)
	leaders map[uint64]NodeID
	errs    []string
	// trace, when set, receives one line for every message sent or lost and
	// every change of a node's visible state (see traceMessage and
	// observe); the scenario scripts print it. Nil: no tracing.
	trace *strings.Builder
	seen  map[NodeID]nodeView
}

// nodeView is the part of a node's state the trace reports changes of.
type nodeView struct {
	state  StateType
	term   uint64
	vote   NodeID
	lead   NodeID
	commit uint64
	config string
}

type hnode struct {
	id      NodeID
	raft    *Raft
	storage *MemoryStorage
	applied []Entry
	reads   []ReadState
	notices []Notice
	// holdWrites keeps entries handed out for persistence in held instead of
	// writing them, until release.
	holdWrites bool
	held       [][]Entry
	down       bool
	lastCommit uint64
	// storageErrs collects Update.StorageErr.
	storageErrs []error
}

func newHarness(seed uint64, opts func(*Config)) *harness {
	return &harness{nodes: map[NodeID]*hnode{}, cut: map[[2]NodeID]bool{}, opts: opts, seed: seed,
		applied: map[uint64]Entry{}, leaders: map[uint64]NodeID{}}
}

func (h *harness) config(id NodeID, s *MemoryStorage, applied uint64) Config {
	c := Config{ID: id, Storage: s, Rand: rand.New(rand.NewPCG(h.seed, uint64(id))),
		ElectionTicks: 10, HeartbeatTicks: 1, Applied: applied}
	if h.opts != nil {
		h.opts(&c)
	}
	return c
}

// bootstrap creates voters with the given ids, all knowing the membership.
func (h *harness) bootstrap(ids ...NodeID) {
	var m Membership
	for _, id := range ids {
		m.Servers = append(m.Servers, Server{ID: id, Role: Voter, Address: fmt.Sprintf("n%d", id)})
	}
	for _, id := range ids {
		s := NewMemoryStorage()
		must(s.Append([]Entry{BootstrapEntry(m)}))
		s.SetHardState(HardState{Term: 1})
		h.addNode(id, s)
	}
}

// addNode adds a node with the given storage (empty for a joining node).
func (h *harness) addNode(id NodeID, s *MemoryStorage) {
	r, err := New(h.config(id, s, 0))
	must(err)
	h.nodes[id] = &hnode{id: id, raft: r, storage: s}
	h.ids = append(h.ids, id)
	sort.Slice(h.ids, func(i, j int) bool { return h.ids[i] < h.ids[j] })
}

// crash discards a node's volatile state; restart recreates it from storage.
func (h *harness) crash(id NodeID) {
	n := h.nodes[id]
	n.down = true
	n.held, n.holdWrites = nil, false
	// Messages to a crashed node are lost.
	h.dropQueued(func(m Message) bool { return m.To == id })
}

// dropQueued discards the queued messages for which match is true.
func (h *harness) dropQueued(match func(Message) bool) {
	q := h.queue[:0]
	for _, m := range h.queue {
		if match(m) {
			h.tracef("dropped %s", describeMessage(m))
		} else {
			q = append(q, m)
		}
	}
	h.queue = q
}

func (h *harness) restart(id NodeID) {
	n := h.nodes[id]
	snap := n.storage.Snapshot()
	r, err := New(h.config(id, n.storage, snap.Index))
	must(err)
	n.raft, n.down, n.lastCommit = r, false, 0
	n.applied = nil
}

// process drains one node's Update following its ordering rules. It reports
// whether there was anything.
func (h *harness) process(n *hnode) bool {
	if n.down {
		return false
	}
	h.observe(n)
	if !n.raft.HasUpdate() {
		return false
	}
	u := n.raft.Update()
	if u.HardState != nil {
		n.storage.SetHardState(*u.HardState)
	}
	if u.Snapshot != nil {
		must(n.storage.ApplySnapshot(*u.Snapshot))
		n.raft.Persisted(u.Snapshot.Meta.Index, u.Snapshot.Meta.Term)
	}
	if len(u.Entries) > 0 {
		if n.holdWrites {
			n.held = append(n.held, u.Entries)
		} else {
			h.write(n, u.Entries)
		}
	}
	for _, m := range u.Messages {
		h.queue = append(h.queue, m)
		h.tracef("%s", describeMessage(m))
	}
	for _, e := range u.CommittedEntries {
		h.apply(n, e)
	}
	n.reads = append(n.reads, u.ReadStates...)
	n.notices = append(n.notices, u.Notices...)
	if u.StorageErr != nil {
		n.storageErrs = append(n.storageErrs, u.StorageErr)
	}
	if h.trace != nil {
		for _, rs := range u.ReadStates {
			h.tracef("%d: read %d@%d", n.id, rs.Context, rs.Index)
		}
		for _, x := range u.Notices {
			h.tracef("%d: notice %s", n.id, noticeName(x))
		}
		if u.StorageErr != nil {
			h.tracef("%d: storage error: %v", n.id, u.StorageErr)
		}
	}
	h.observe(n)
	h.check()
	return true
}

func (h *harness) write(n *hnode, ents []Entry) {
	must(n.storage.Append(ents))
	last := ents[len(ents)-1]
	n.raft.Persisted(last.Index, last.Term)
}

// release writes a node's held entries.
func (h *harness) release(id NodeID) {
	n := h.nodes[id]
	held := n.held
	n.held = nil
	for _, ents := range held {
		h.write(n, ents)
	}
}

func (h *harness) apply(n *hnode, e Entry) {
	if prev, ok := h.applied[e.Index]; ok {
		if prev.Term != e.Term || !bytes.Equal(prev.Data, e.Data) {
			h.errs = append(h.errs, fmt.Sprintf("node %d applied %d/%d %q, another applied %d/%d %q",
				n.id, e.Index, e.Term, e.Data, prev.Index, prev.Term, prev.Data))
		}
	} else {
		h.applied[e.Index] = e
	}
	n.applied = append(n.applied, e)
}

// check verifies the safety properties that can be seen from outside.
func (h *harness) check() {
	for _, id := range h.ids {
		n := h.nodes[id]
		if n.down {
			continue
		}
		st := n.raft.Status()
		if st.State == StateLeader {
			if l, ok := h.leaders[st.Term]; ok && l != id {
				h.errs = append(h.errs, fmt.Sprintf("two leaders in term %d: %d and %d", st.Term, l, id))
			}
			h.leaders[st.Term] = id
		}
		if st.Commit < n.lastCommit {
			h.errs = append(h.errs, fmt.Sprintf("node %d commit went back %d -> %d", id, n.lastCommit, st.Commit))
		}
		n.lastCommit = st.Commit
		if st.Applied > st.Commit {
			h.errs = append(h.errs, fmt.Sprintf("node %d applied %d > commit %d", id, st.Applied, st.Commit))
		}
	}
}

// deliverOne delivers the i-th queued message.
func (h *harness) deliverOne(i int) {
	m := h.queue[i]
	h.queue = append(h.queue[:i], h.queue[i+1:]...)
	n := h.nodes[m.To]
	if n == nil || n.down || h.cut[[2]NodeID{m.From, m.To}] {
		h.tracef("dropped %s", describeMessage(m))
		return
	}
	must(n.raft.Step(m))
}

// deliver delivers the queued messages for which match is true (the
// others stay queued, in order), then processes every node until it has
// nothing more to hand out, queueing what they send in answer.
func (h *harness) deliver(match func(Message) bool) {
	var now []Message
	q := h.queue[:0]
	for _, m := range h.queue {
		if match(m) {
			now = append(now, m)
		} else {
			q = append(q, m)
		}
	}
	h.queue = q
	for _, m := range now {
		h.queue = append(h.queue, m)
		h.deliverOne(len(h.queue) - 1)
	}
	for _, id := range h.ids {
		// A write reported persisted may produce more (an
		// acknowledgement): process until the node has nothing left.
		for i := 0; i < 100 && h.process(h.nodes[id]); i++ {
		}
	}
}

// stabilize processes updates and delivers messages until nothing moves.
func (h *harness) stabilize() {
	for round := 0; round < 10000; round++ {
		moved := false
		for _, id := range h.ids {
			if h.process(h.nodes[id]) {
				moved = true
			}
		}
		if len(h.queue) > 0 {
			msgs := h.queue
			h.queue = nil
			for _, m := range msgs {
				h.queue = append(h.queue, m)
				h.deliverOne(len(h.queue) - 1)
			}
			moved = true
		}
		if !moved {
			return
		}
	}
	panic("harness: cluster did not stabilize")
}

// tick ticks one node n times, processing after each.
func (h *harness) tick(id NodeID, n int) {
	for i := 0; i < n; i++ {
		if !h.nodes[id].down {
			h.nodes[id].raft.Tick()
		}
		h.process(h.nodes[id])
	}
}

// tickAll ticks every live node n times, stabilizing after each round.
func (h *harness) tickAll(n int) {
	for i := 0; i < n; i++ {
		for _, id := range h.ids {
			if !h.nodes[id].down {
				h.nodes[id].raft.Tick()
			}
		}
		h.stabilize()
	}
}

// campaign ticks a node until it starts a (pre-)election, then stabilizes.
func (h *harness) campaign(id NodeID) {
	r := h.nodes[id].raft
	for i := 0; i < 100 && r.state == StateFollower; i++ {
		r.Tick()
	}
	h.stabilize()
}

func (h *harness) leader() NodeID {
	var lead NodeID
	var term uint64
	for _, id := range h.ids {
		n := h.nodes[id]
		if !n.down && n.raft.state == StateLeader && n.raft.term >= term {
			lead, term = id, n.raft.term
		}
	}
	return lead
}

// isolate cuts every link to and from id; heal restores all links.
func (h *harness) isolate(id NodeID) {
	for _, o := range h.ids {
		if o != id {
			h.cut[[2]NodeID{id, o}] = true
			h.cut[[2]NodeID{o, id}] = true
		}
	}
}

func (h *harness) heal() { h.cut = map[[2]NodeID]bool{} }

// tracef adds one line to the trace, if tracing.
func (h *harness) tracef(format string, args ...any) {
	if h.trace != nil {
		fmt.Fprintf(h.trace, format+"\n", args...)
	}
}

// observe traces what changed in node n's state since it was last
// observed: "N: field=value ..." for the fields of nodeView that differ (a
// node seen for the first time shows its non-zero fields).
func (h *harness) observe(n *hnode) {
	if h.trace == nil || n.down {
		return
	}
	if h.seen == nil {
		h.seen = map[NodeID]nodeView{}
	}
	st := n.raft.Status()
	now := nodeView{state: st.State, term: st.Term, vote: st.Vote, lead: st.Lead, commit: st.Commit,
		config: st.Config.String()}
	was := h.seen[n.id]
	if now == was {
		return
	}
	h.seen[n.id] = now
	var b strings.Builder
	field := func(changed bool, format string, args ...any) {
		if changed {
			fmt.Fprintf(&b, " "+format, args...)
		}
	}
	field(now.state != was.state, "state=%s", now.state)
	field(now.term != was.term, "term=%d", now.term)
	field(now.vote != was.vote, "vote=%d", now.vote)
	field(now.lead != was.lead, "lead=%d", now.lead)
	field(now.commit != was.commit, "commit=%d", now.commit)
	field(now.config != was.config, "config=[%s]", now.config)
	h.tracef("%d:%s", n.id, b.String())
}

// observeAll observes every live node.
func (h *harness) observeAll() {
	for _, id := range h.ids {
		h.observe(h.nodes[id])
	}
}

// describeMessage is the trace's one-line form of a message: sender and
// receiver, type, term, then the fields that type uses (zero-valued
// optional fields left out).
func describeMessage(m Message) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d->%d %s term=%d", m.From, m.To, m.Type, m.Term)
	switch m.Type {
	case MsgApp:
		fmt.Fprintf(&b, " index=%d logterm=%d commit=%d", m.Index, m.LogTerm, m.Commit)
		if len(m.Entries) > 0 {
			b.WriteString(" entries=[")
			for i, e := range m.Entries {
				if i > 0 {
					b.WriteByte(' ')
				}
				fmt.Fprintf(&b, "%d/%d", e.Index, e.Term)
			}
			b.WriteByte(']')
		}
	case MsgAppResp:
		fmt.Fprintf(&b, " index=%d", m.Index)
		if m.Reject {
			fmt.Fprintf(&b, " reject hint=%d logterm=%d", m.RejectHint, m.LogTerm)
		}
	case MsgVote, MsgPreVote:
		fmt.Fprintf(&b, " index=%d logterm=%d", m.Index, m.LogTerm)
		if m.Transfer {
			b.WriteString(" transfer")
		}
	case MsgVoteResp, MsgPreVoteResp:
		if m.Reject {
			b.WriteString(" reject")
			if m.RejectHint != 0 {
				fmt.Fprintf(&b, " lead=%d", m.RejectHint)
			}
		}
	case MsgHeartbeat:
		fmt.Fprintf(&b, " commit=%d", m.Commit)
		if m.Context != 0 {
			fmt.Fprintf(&b, " ctx=%d", m.Context)
		}
	case MsgHeartbeatResp:
		if m.Context != 0 {
			fmt.Fprintf(&b, " ctx=%d", m.Context)
		}
	case MsgSnap:
		fmt.Fprintf(&b, " snap=%d/%d offset=%d bytes=%d", m.Snapshot.Index, m.Snapshot.Term, m.Offset, len(m.Data))
		if m.Done {
			b.WriteString(" done")
		}
	case MsgSnapResp:
		fmt.Fprintf(&b, " index=%d offset=%d", m.Index, m.Offset)
		if m.Reject {
			b.WriteString(" reject")
		}
	}
	return b.String()
}

func (h *harness) String() string {
	var b strings.Builder
	for _, id := range h.ids {
		n := h.nodes[id]
		st := n.raft.Status()
		fmt.Fprintf(&b, "%d: %s t%d lead=%d commit=%d applied=%d last=%d down=%v\n",
			id, st.State, st.Term, st.Lead, st.Commit, st.Applied, st.LastIndex, n.down)
	}
	return b.String()
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}
