package raft

import (
	"errors"
	"math"
	"testing"
)

// FuzzPeerMessages drives a live 3-node in-memory cluster (elections,
// proposals, reads, transfers, ticks, crashes and restarts, snapshots,
// normal delivery) with an op program read from the fuzz input, and
// injects messages built from it. The first byte picks the mode:
//
//   - Mode (a), member forgeries: genuine messages captured from the
//     cluster, with any field mutated (type, term, index, commit, log term,
//     reject, hint, offset, context, entries' index/term/type/data,
//     snapshot metadata, From/To), are delivered as if from a member.
//     Raft is not Byzantine-tolerant: a forged message that passes
//     validation from an authenticated member can legitimately break
//     safety (a forged vote grant elects two leaders, a forged ack within
//     the log commits what no quorum holds), and later genuine messages
//     may then be refused. So only what each node guarantees on its own is
//     required: no panic, commit <= last index, applied <= commit, the
//     durable term never decreases, and no read of storage fails
//     (MemoryStorage fails only when asked for what it does not hold, so a
//     failure means raft acted on a number it should have refused).
//   - Mode (b), an unreliable network and strangers: genuine messages are
//     replayed, duplicated, reordered and dropped, and messages forged from
//     servers that are not members (mutated like above, From a non-member)
//     are injected. Then the cluster is a correct one and the harness's
//     cross-node safety checks must hold (one leader per term, every node
//     applies the same entry at each index, commit never goes back); every
//     stranger's message must be refused (ErrInvalidMessage, or dropped
//     without changing or sending anything); and no genuine message, however
//     late or repeated, may be refused (a correct peer never gets its link
//     dropped). Plus the per-node invariants of mode (a).
func FuzzPeerMessages(f *testing.F) {
	for _, seed := range [][]byte{
		{0},
		{0, 10, 2, 0, 10, 5, 1, 6, 10, 3, 7, 9, 10, 2, 4, 40, 1, 1, 9, 10, 3, 15, 5},
		{1, 9, 6, 5, 0, 4, 1, 9, 5, 3, 10, 0, 17, 4, 10, 1, 2, 5, 40},
		{1, 6, 6, 6, 8, 1, 7, 2, 0, 3, 9, 9, 9, 7, 2, 1, 1, 1, 9, 5, 2, 5, 7, 10, 3, 2},
		{0, 6, 9, 8, 1, 0, 1, 12, 9, 10, 4, 15, 0, 10, 4, 16, 1, 10, 2, 13, 3},
		// Mid-transfer, a snapshot response turned into a rejection with
		// an offset past the snapshot (found by searching, not the fuzzer:
		// the window is one round trip).
		{0, 0, 1, 9, 0, 0, 5, 9, 9, 9, 0, 0, 4, 9, 9, 10, 0, 0, 1, 5, 7, 3, 0, 0, 6, 9, 9},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		newPeerFuzz(t, data).run()
	})
}

// fuzzOpsMax bounds the ops run per input; fuzzHistoryMax the genuine
// messages kept for replay and mutation; fuzzQueueMax the messages in flight.
const (
	fuzzOpsMax     = 300
	fuzzHistoryMax = 128
	fuzzQueueMax   = 512
)

type peerFuzz struct {
	t          *testing.T
	in         fuzzInput
	strangers  bool // mode (b)
	h          *harness
	history    []Message
	hardTerms  map[NodeID]uint64
	proposeSeq int
}

func newPeerFuzz(t *testing.T, data []byte) *peerFuzz {
	fz := &peerFuzz{t: t, in: fuzzInput{b: data}, hardTerms: map[NodeID]uint64{}}
	fz.strangers = fz.in.byte()%2 == 1
	fz.h = newHarness(uint64(fz.in.byte()), func(c *Config) {
		c.MaxSnapshotChunkBytes, c.MaxMsgBytes, c.MaxInflightMsgs = 2, 256, 4
	})
	fz.h.bootstrap(1, 2, 3)
	fz.h.campaign(1)
	if fz.in.byte()%2 == 1 {
		fz.lagBehindSnapshot()
	}
	return fz
}

// lagBehindSnapshot leaves node 3 behind leader 1's compacted log, so a
// snapshot transfer starts with the first ticks.
func (fz *peerFuzz) lagBehindSnapshot() {
	h := fz.h
	h.crash(3)
	for i := 0; i < 3; i++ {
		fz.propose()
		h.stabilize()
	}
	must(h.snapshot(h.nodes[1]))
	h.restart(3)
}

func (fz *peerFuzz) run() {
	for i := 0; i < fuzzOpsMax && !fz.in.empty(); i++ {
		fz.op(fz.in.byte() % 13)
		fz.processAll()
		if len(fz.h.queue) > fuzzQueueMax {
			fz.h.queue = fz.h.queue[len(fz.h.queue)-fuzzQueueMax:]
		}
		fz.check()
	}
}

func (fz *peerFuzz) op(code byte) {
	h := fz.h
	switch code {
	case 0:
		fz.tick(fz.node(), int(fz.in.byte()%8)+1)
	case 1:
		for _, id := range h.ids {
			fz.tick(h.nodes[id], 1)
		}
	case 2:
		if m, ok := fz.takeQueued(); ok {
			fz.deliverGenuine(m)
		}
	case 3:
		fz.takeQueued() // drop
	case 4:
		if i, ok := fz.queued(); ok {
			h.queue = append(h.queue, h.queue[i]) // duplicate, delivered later
		}
	case 5:
		if len(fz.history) > 0 {
			fz.deliverGenuine(fz.history[int(fz.in.byte())%len(fz.history)]) // replay
		}
	case 6:
		fz.propose()
	case 7:
		fz.crashOrRestart(fz.node())
	case 8:
		if n := fz.node(); !n.down && n.raft.Status().Applied > n.storage.Snapshot().Index {
			must(h.snapshot(n))
		}
	case 9:
		for k := len(h.queue); k > 0 && len(h.queue) > 0; k-- {
			m := h.queue[0]
			h.queue = h.queue[1:]
			fz.deliverGenuine(m)
		}
	case 10:
		fz.inject()
	case 11:
		if l := h.leader(); l != None {
			_ = h.nodes[l].raft.ReadIndex(uint64(fz.in.byte()) + 1)
		}
	case 12:
		if l := h.leader(); l != None {
			_ = h.nodes[l].raft.TransferLeadership(NodeID(fz.in.byte() % 4))
		}
	}
}

func (fz *peerFuzz) node() *hnode { return fz.h.nodes[NodeID(fz.in.byte()%3)+1] }

func (fz *peerFuzz) tick(n *hnode, count int) {
	for i := 0; i < count && !n.down; i++ {
		n.raft.Tick()
		fz.h.process(n)
	}
}

func (fz *peerFuzz) queued() (int, bool) {
	if len(fz.h.queue) == 0 {
		return 0, false
	}
	return int(fz.in.byte()) % len(fz.h.queue), true
}

func (fz *peerFuzz) takeQueued() (Message, bool) {
	i, ok := fz.queued()
	if !ok {
		return Message{}, false
	}
	m := fz.h.queue[i]
	fz.h.queue = append(fz.h.queue[:i], fz.h.queue[i+1:]...)
	return m, true
}

func (fz *peerFuzz) propose() {
	if l := fz.h.leader(); l != None {
		fz.proposeSeq++
		_, _, _ = fz.h.nodes[l].raft.Propose([]byte{byte(fz.proposeSeq), byte(fz.proposeSeq >> 8)})
	}
}

// crashOrRestart keeps a majority up, so the cluster can go on.
func (fz *peerFuzz) crashOrRestart(n *hnode) {
	if n.down {
		fz.h.restart(n.id)
		return
	}
	for _, id := range fz.h.ids {
		if fz.h.nodes[id].down {
			return
		}
	}
	fz.h.crash(n.id)
}

func (fz *peerFuzz) processAll() {
	for _, id := range fz.h.ids {
		fz.h.process(fz.h.nodes[id])
	}
}

// deliverGenuine delivers a message some node really sent (now or
// earlier): in mode (b) it must never be refused.
func (fz *peerFuzz) deliverGenuine(m Message) {
	n := fz.h.nodes[m.To]
	if n == nil || n.down {
		return
	}
	if len(fz.history) == fuzzHistoryMax {
		fz.history = fz.history[1:]
	}
	fz.history = append(fz.history, m)
	if err := n.raft.Step(m); err != nil && fz.strangers {
		fz.t.Fatalf("a genuine message was refused: %v\n%s", err, fz.h)
	}
	fz.h.process(n)
}

// inject delivers a mutated genuine message: from a member in mode (a),
// from a stranger in mode (b).
func (fz *peerFuzz) inject() {
	var src Message
	if i, ok := fz.queued(); ok && fz.in.byte()%2 == 0 {
		src = fz.h.queue[i]
	} else if len(fz.history) > 0 {
		src = fz.history[int(fz.in.byte())%len(fz.history)]
	} else {
		return
	}
	m := mutateMessage(src, &fz.in)
	n := fz.h.nodes[m.To]
	if n == nil {
		n = fz.h.nodes[src.To]
	}
	if n.down {
		return
	}
	if !fz.strangers {
		_ = n.raft.Step(m)
		return
	}
	m.From = NodeID(4 + uint64(fz.in.byte())) // a server that never was a member
	if fz.in.byte()%8 == 0 {
		m.From = math.MaxUint64 - NodeID(fz.in.byte())
	}
	fz.stepStranger(n, m)
}

func (fz *peerFuzz) stepStranger(n *hnode, m Message) {
	r := n.raft
	before, vote, sent := r.Basic(), r.vote, len(r.msgs)
	err := r.Step(m)
	if err != nil && !errors.Is(err, ErrInvalidMessage) {
		fz.t.Fatalf("error not wrapping ErrInvalidMessage: %v", err)
	}
	if r.Basic() != before || r.vote != vote || len(r.msgs) != sent {
		fz.t.Fatalf("a stranger's %v (err %v) changed node %d: %+v -> %+v, sent %v",
			m, err, n.id, before, r.Basic(), r.msgs[sent:])
	}
}

// check verifies each node's own invariants, and in mode (b) the harness's
// cross-node safety checks.
func (fz *peerFuzz) check() {
	for _, id := range fz.h.ids {
		n := fz.h.nodes[id]
		if n.down {
			continue
		}
		l := n.raft.log
		if l.committed > l.lastIndex() || l.applied > l.committed {
			fz.t.Fatalf("node %d: applied %d commit %d last %d", id, l.applied, l.committed, l.lastIndex())
		}
		hard := n.storage.HardState().Term
		if hard < fz.hardTerms[id] || n.raft.term < hard {
			fz.t.Fatalf("node %d: durable term %d after %d, term %d", id, hard, fz.hardTerms[id], n.raft.term)
		}
		fz.hardTerms[id] = hard
		if len(n.storageErrs) > 0 {
			// MemoryStorage fails only when asked for what it does not
			// hold: raft acted on a number it should have refused.
			fz.t.Fatalf("node %d: storage error %v", id, n.storageErrs)
		}
	}
	if fz.strangers && len(fz.h.errs) > 0 {
		fz.t.Fatalf("safety violated: %v\n%s", fz.h.errs, fz.h)
	}
}

// fuzzInput reads the fuzz input; past its end it reads zeros.
type fuzzInput struct{ b []byte }

func (in *fuzzInput) empty() bool { return len(in.b) == 0 }

func (in *fuzzInput) byte() byte {
	if len(in.b) == 0 {
		return 0
	}
	c := in.b[0]
	in.b = in.b[1:]
	return c
}

func (in *fuzzInput) u64() uint64 {
	var v uint64
	for i := 0; i < 8; i++ {
		v = v<<8 | uint64(in.byte())
	}
	return v
}

// value returns a variation of cur: nearby, small, or near the bounds and
// 2^64.
func (in *fuzzInput) value(cur uint64) uint64 {
	switch c := in.byte(); c % 12 {
	case 0:
		return 0
	case 1:
		return cur + 1
	case 2:
		return cur - 1
	case 3:
		return 1 << 40
	case 4:
		return math.MaxUint64
	case 5:
		return math.MaxUint64 - 1
	case 6:
		return termMax
	case 7:
		return termMax + 1
	case 8:
		return in.u64()
	default:
		return cur + uint64(c%16)
	}
}

// mutateMessage returns a deep copy of m (entries and snapshot are shared
// with the nodes' logs) with one to three fields changed.
func mutateMessage(m Message, in *fuzzInput) Message {
	m.Entries = append([]Entry(nil), m.Entries...)
	if m.Snapshot != nil {
		s := *m.Snapshot
		s.Config = s.Config.Clone()
		m.Snapshot = &s
	}
	for k := in.byte()%3 + 1; k > 0; k-- {
		mutateField(&m, in)
	}
	return m
}

func mutateField(m *Message, in *fuzzInput) {
	switch in.byte() % 16 {
	case 0:
		m.Type = MessageType(in.byte() % 13)
	case 1:
		m.Term = in.value(m.Term)
	case 2:
		m.Index = in.value(m.Index)
	case 3:
		m.Commit = in.value(m.Commit)
	case 4:
		m.LogTerm = in.value(m.LogTerm)
	case 5:
		m.Reject = !m.Reject
	case 6:
		m.RejectHint = in.value(m.RejectHint)
	case 7:
		m.Offset = in.value(m.Offset)
	case 8:
		m.Context = in.value(m.Context)
	case 9:
		m.Transfer, m.Done = in.byte()%2 == 0, in.byte()%2 == 0
	case 10, 11:
		mutateEntries(m, in)
	case 12:
		mutateSnapshot(m, in)
	case 13:
		m.From = NodeID(in.byte() % 5)
	case 14:
		m.To = NodeID(in.byte() % 5)
	case 15:
		m.Data = mutateBytes(m.Data, in)
	}
}

func mutateEntries(m *Message, in *fuzzInput) {
	if len(m.Entries) == 0 || in.byte()%4 == 0 {
		m.Entries = append(m.Entries, Entry{Index: m.Index + uint64(len(m.Entries)) + 1, Term: m.Term,
			Type: EntryNormal})
	}
	e := &m.Entries[int(in.byte())%len(m.Entries)]
	switch in.byte() % 6 {
	case 0:
		e.Index = in.value(e.Index)
	case 1:
		e.Term = in.value(e.Term)
	case 2:
		e.Type = EntryType(in.byte() % 5)
	case 3:
		e.Data = mutateBytes(e.Data, in)
	case 4:
		e.Type, e.Data = EntryConfig, EncodeMembership(fuzzMembership(in))
	case 5:
		m.Entries = m.Entries[:int(in.byte())%(len(m.Entries)+1)]
	}
}

func mutateSnapshot(m *Message, in *fuzzInput) {
	if m.Snapshot == nil {
		m.Snapshot = &SnapshotMeta{Index: m.Index, Term: m.Term, Config: fuzzMembership(in)}
	}
	s := m.Snapshot
	switch in.byte() % 5 {
	case 0:
		s.Index = in.value(s.Index)
	case 1:
		s.Term = in.value(s.Term)
	case 2:
		s.ConfigIndex = in.value(s.ConfigIndex)
	case 3:
		s.Config = fuzzMembership(in)
	case 4:
		m.Snapshot = nil
	}
}

// fuzzMembership returns a membership of up to four servers with ids and
// roles from the input (not always valid).
func fuzzMembership(in *fuzzInput) Membership {
	var m Membership
	for n := in.byte() % 5; n > 0; n-- {
		m.Servers = append(m.Servers, Server{ID: NodeID(in.byte() % 6), Role: Role(in.byte() % 4)})
	}
	return m
}

func mutateBytes(b []byte, in *fuzzInput) []byte {
	b = append([]byte(nil), b...)
	switch in.byte() % 3 {
	case 0:
		if len(b) > 0 {
			b[int(in.byte())%len(b)] ^= in.byte() | 1
		}
	case 1:
		b = b[:int(in.byte())%(len(b)+1)]
	case 2:
		b = append(b, in.byte())
	}
	return b
}
