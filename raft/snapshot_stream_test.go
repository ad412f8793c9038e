package raft

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

// Tests of Config.SnapshotSource and Config.SnapshotSink: snapshots streamed
// from a source on the leader to a sink on the follower, raft buffering
// none of it.

const (
	streamChunk = 64   // MaxSnapshotChunkBytes in these tests
	streamSize  = 1000 // bytes of every snapshot a streamSource serves: 16 chunks
)

// streamData is the content of snapshot index in its gen-th version.
func streamData(index uint64, gen int) []byte {
	b := make([]byte, streamSize)
	for i := range b {
		b[i] = byte((uint64(i)*7 + index*31 + uint64(gen)*101) % 251)
	}
	return b
}

// streamSource serves the metadata of its node's storage snapshot (or
// meta(), when set) with streamData as data.
type streamSource struct {
	st *MemoryStorage
	// meta, when set, gives the metadata to open instead of the storage
	// snapshot's.
	meta func() SnapshotMeta
	// openErrs are answered by the next OpenSnapshot calls, in order.
	openErrs []error
	// changed, when set, is asked before each read: true makes the read
	// fail with ErrSnapshotChanged and retires the opened snapshot (the
	// next opening serves the next version of the data).
	changed func(index, offset uint64) bool
	// newest: only the storage's newest snapshot can be read (it goes
	// away when the storage compacts further).
	newest bool
	// laterEvery: every laterEvery-th OpenSnapshot says later.
	laterEvery int
	// empty: the snapshots have no data.
	empty bool

	gen      int           // version of the data the next opening serves
	opened   *SnapshotMeta // nil: nothing open, or it was retired
	openGen  int
	openEnd  uint64 // the furthest byte read of these bytes
	opens    int    // OpenSnapshot calls
	laters   int    // ... answered with an error
	reads    int
	served   map[uint64][]byte // index -> data of the last opening read
	readErrs []string          // reads raft should not have made
}

func (s *streamSource) OpenSnapshot() (SnapshotMeta, error) {
	s.opens++
	if s.laterEvery > 0 && s.opens%s.laterEvery == 0 {
		s.laters++
		return SnapshotMeta{}, ErrSnapshotLater
	}
	if len(s.openErrs) > 0 {
		err := s.openErrs[0]
		s.openErrs = s.openErrs[1:]
		s.laters++
		return SnapshotMeta{}, err
	}
	var meta SnapshotMeta
	if s.meta != nil {
		meta = s.meta()
	} else if meta = s.st.Snapshot(); meta.Index == 0 {
		s.laters++
		return SnapshotMeta{}, ErrSnapshotLater
	}
	if s.opened == nil || s.opened.Index != meta.Index || s.openGen != s.gen {
		s.openEnd = 0 // other bytes than those read so far
	}
	s.opened, s.openGen = &meta, s.gen
	return meta, nil
}

func (s *streamSource) ReadSnapshot(index, offset uint64, maxBytes int) ([]byte, bool, error) {
	s.reads++
	if s.opened == nil || s.opened.Index != index || (s.newest && s.st.Snapshot().Index != index) {
		return nil, false, ErrSnapshotChanged
	}
	if s.changed != nil && s.changed(index, offset) {
		s.opened = nil
		s.gen++
		return nil, false, ErrSnapshotChanged
	}
	data := streamData(index, s.openGen)
	if s.empty {
		data = []byte{}
	}
	if s.served == nil {
		s.served = map[uint64][]byte{}
	}
	s.served[index] = data
	if offset > s.openEnd {
		// Raft reads an opening from 0 and never past what it read.
		s.readErrs = append(s.readErrs, fmt.Sprintf("read of %d at %d, %d read of the opening", index, offset, s.openEnd))
	}
	if offset > uint64(len(data)) {
		return nil, false, fmt.Errorf("offset %d beyond %d", offset, len(data))
	}
	end := min(offset+uint64(maxBytes), uint64(len(data)))
	s.openEnd = max(s.openEnd, end)
	return data[offset:end], end == uint64(len(data)), nil
}

var errSink = errors.New("sink: checksum mismatch")

// streamSink assembles what it is given (standing for a file the
// application writes) and checks raft gives it every byte in order.
type streamSink struct {
	// fail, when set, is asked for each chunk: true rejects it.
	fail func(offset uint64, done bool) bool
	// failEvery: every failEvery-th chunk is rejected.
	failEvery int
	// verify checks a complete snapshot is some version of streamData
	// (standing for a checksum), rejecting it otherwise.
	verify    bool
	badChecks int

	meta     SnapshotMeta
	partial  []byte
	active   bool
	attempts int // chunks at offset 0
	writes   int
	fails    int
	aborts   int
	bytes    int // bytes accepted, all attempts together
	ready    map[uint64][]byte
	errs     []string // contract violations
}

func (s *streamSink) WriteSnapshotChunk(meta SnapshotMeta, offset uint64, data []byte, done bool) error {
	s.writes++
	if (s.fail != nil && s.fail(offset, done)) || (s.failEvery > 0 && s.writes%s.failEvery == 0) {
		s.fails++
		s.active, s.partial = false, nil
		return errSink
	}
	if offset == 0 {
		s.attempts++
		s.meta, s.partial, s.active = meta, nil, true
	} else if !s.active || meta.Index != s.meta.Index || meta.Term != s.meta.Term ||
		offset != uint64(len(s.partial)) {
		s.errs = append(s.errs, fmt.Sprintf("chunk of %d/%d at %d (active %v, %d/%d holding %d)",
			meta.Index, meta.Term, offset, s.active, s.meta.Index, s.meta.Term, len(s.partial)))
		return errors.New("sink: out of order")
	}
	s.partial = append(s.partial, data...)
	s.bytes += len(data)
	if done && s.verify && !isStreamData(meta.Index, s.partial) {
		s.badChecks++
		s.partial, s.active = nil, false
		return errSink
	}
	if done {
		if s.ready == nil {
			s.ready = map[uint64][]byte{}
		}
		s.ready[meta.Index] = s.partial
		s.partial, s.active = nil, false
	}
	return nil
}

func isStreamData(index uint64, b []byte) bool {
	for gen := 0; gen < 64; gen++ {
		if bytes.Equal(b, streamData(index, gen)) {
			return true
		}
	}
	return false
}

func (s *streamSink) AbortSnapshot() {
	s.aborts++
	s.partial, s.active = nil, false
}

// streamCluster is a harness whose nodes all have a streamSource and a
// streamSink. Its own loop (settle) delivers messages like the harness's
// stabilize but records Step errors instead of panicking, and checks after
// every step that no node's raft buffers an incoming snapshot.
type streamCluster struct {
	t        *testing.T
	h        *harness
	srcs     map[NodeID]*streamSource
	sinks    map[NodeID]*streamSink
	stepErrs []error
	buffered []string
}

func newStreamCluster(t *testing.T, more func(*Config)) *streamCluster {
	sc := &streamCluster{t: t, srcs: map[NodeID]*streamSource{}, sinks: map[NodeID]*streamSink{}}
	sc.h = newHarness(7, func(c *Config) {
		c.MaxSnapshotChunkBytes = streamChunk
		if sc.srcs[c.ID] == nil {
			sc.srcs[c.ID] = &streamSource{st: c.Storage.(*MemoryStorage)}
			sc.sinks[c.ID] = &streamSink{verify: true}
		}
		c.SnapshotSource, c.SnapshotSink = sc.srcs[c.ID], sc.sinks[c.ID]
		if more != nil {
			more(c)
		}
	})
	sc.h.bootstrap(1, 2, 3)
	sc.h.campaign(1)
	if sc.h.leader() != 1 {
		t.Fatalf("no leader\n%s", sc.h)
	}
	return sc
}

// behind leaves node 3 behind a snapshot of node 1 (the leader), which
// compacted its log, and returns that snapshot's index. Node 3 stays cut
// off.
func (sc *streamCluster) behind(t *testing.T) uint64 {
	h := sc.h
	h.isolate(3)
	proposeAll(h, "a", "b", "c")
	must(h.snapshot(h.nodes[1]))
	proposeAll(h, "d", "e")
	idx := h.nodes[1].storage.Snapshot().Index
	if h.nodes[1].storage.FirstIndex() <= lastOf(h, 3)+1 {
		t.Fatalf("node 3 (last %d) does not need the snapshot at %d", lastOf(h, 3), idx)
	}
	return idx
}

func (sc *streamCluster) step(m Message) {
	h := sc.h
	n := h.nodes[m.To]
	if n == nil || n.down || h.cut[[2]NodeID{m.From, m.To}] {
		return
	}
	if err := n.raft.Step(m); err != nil {
		sc.stepErrs = append(sc.stepErrs, fmt.Errorf("%s: %w", describeMessage(m), err))
	}
	sc.checkUnbuffered()
}

func (sc *streamCluster) checkUnbuffered() {
	for _, id := range sc.h.ids {
		if in := sc.h.nodes[id].raft.incoming; in != nil && in.buf != nil {
			sc.buffered = append(sc.buffered, fmt.Sprintf("node %d buffers %d bytes", id, len(in.buf)))
		}
	}
}

// settle processes and delivers until nothing moves.
func (sc *streamCluster) settle() {
	h := sc.h
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
				sc.step(m)
			}
			moved = true
		}
		if !moved {
			return
		}
	}
	sc.t.Fatalf("the cluster did not settle (messages go round forever)\n%s", h)
}

// tick ticks every live node n times, settling after each round.
func (sc *streamCluster) tick(n int) {
	for i := 0; i < n; i++ {
		for _, id := range sc.h.ids {
			if !sc.h.nodes[id].down {
				sc.h.nodes[id].raft.Tick()
			}
		}
		sc.settle()
	}
}

// catchUp heals the network, proposes value and ticks until node 3 applied
// it (false if it never does).
func (sc *streamCluster) catchUp(value string) bool {
	h := sc.h
	h.heal()
	proposed := false
	for i := 0; i < 100; i++ {
		sc.tick(1)
		if l := h.leader(); l != None && !proposed {
			_, _, err := h.nodes[l].raft.Propose([]byte(value))
			proposed = err == nil
		}
		if proposed && appliedOn(h.nodes[3], value) {
			return true
		}
	}
	return false
}

// checkClean fails on anything that must never happen in these tests.
func (sc *streamCluster) checkClean(t *testing.T) {
	t.Helper()
	for _, id := range sc.h.ids {
		if n := sc.h.nodes[id]; len(n.storageErrs) > 0 {
			t.Errorf("node %d storage errors: %v", id, n.storageErrs)
		}
		if s := sc.sinks[id]; len(s.errs) > 0 || s.badChecks > 0 {
			t.Errorf("node %d sink: %v, %d bad snapshots", id, s.errs, s.badChecks)
		}
		if s := sc.srcs[id]; len(s.readErrs) > 0 {
			t.Errorf("node %d source: %v", id, s.readErrs)
		}
	}
	if len(sc.stepErrs) > 0 {
		t.Errorf("step errors: %v", sc.stepErrs)
	}
	if len(sc.buffered) > 0 {
		t.Errorf("raft buffered snapshots: %v", sc.buffered[:min(3, len(sc.buffered))])
	}
	if len(sc.h.errs) > 0 {
		t.Errorf("safety: %v", sc.h.errs)
	}
}

// checkInstalled requires node 3 to have installed snapshot index with no
// Data (the harness stores Update.Snapshot.Data as the storage's snapshot
// data), its sink to hold exactly what the leader's source served.
func (sc *streamCluster) checkInstalled(t *testing.T, index uint64) {
	t.Helper()
	n := sc.h.nodes[3]
	if got := n.storage.Snapshot().Index; got != index {
		t.Fatalf("node 3 installed snapshot %d, want %d\n%s", got, index, sc.h)
	}
	if d := n.storage.SnapshotData(); d != nil {
		t.Errorf("Update.Snapshot carried %d bytes of data", len(d))
	}
	served := sc.srcs[1].served[index]
	if got := sc.sinks[3].ready[index]; len(served) == 0 || !bytes.Equal(got, served) {
		t.Errorf("sink holds %d bytes of snapshot %d, the source served %d (equal: %v)",
			len(got), index, len(served), bytes.Equal(got, served))
	}
}

// TestStreamSnapshotCatchUp: a follower far behind a compacted leader
// catches up through the leader's source and its own sink, the snapshot
// spanning 16 chunks, raft buffering none of it.
func TestStreamSnapshotCatchUp(t *testing.T) {
	sc := newStreamCluster(t, nil)
	idx := sc.behind(t)
	if !sc.catchUp("after") {
		t.Fatalf("node 3 did not catch up\n%s", sc.h)
	}
	sc.checkClean(t)
	sc.checkInstalled(t, idx)
	src, sink := sc.srcs[1], sc.sinks[3]
	if src.opens != 1 || sink.attempts != 1 || sink.bytes != streamSize || sink.aborts != 0 {
		t.Errorf("opens %d, attempts %d, bytes %d, aborts %d; want 1, 1, %d, 0",
			src.opens, sink.attempts, sink.bytes, sink.aborts, streamSize)
	}
	if want := (streamSize + streamChunk - 1) / streamChunk; sink.writes != want {
		t.Errorf("sink given %d chunks, want %d", sink.writes, want)
	}
	if st := sc.h.nodes[3].storage; st.Snapshot().Term != sc.h.nodes[1].storage.Snapshot().Term {
		t.Errorf("installed term %d", st.Snapshot().Term)
	}
	// The leader never read its storage's snapshot data (it would have
	// sent "state-at-N").
	if bytes.Contains(sink.ready[idx], []byte("state-at")) {
		t.Error("the storage snapshot was sent")
	}
}

// TestStreamSnapshotLater: OpenSnapshot says later (plainly, wrapped, or
// with another error) a few times; the replica is retried once per
// heartbeat response, never spinning, then catches up with nothing failed.
func TestStreamSnapshotLater(t *testing.T) {
	if !IsSnapshotLater(ErrSnapshotLater) || !IsSnapshotLater(fmt.Errorf("busy: %w", ErrSnapshotLater)) ||
		IsSnapshotLater(errors.New("later")) || IsSnapshotLater(nil) {
		t.Fatal("IsSnapshotLater")
	}
	sc := newStreamCluster(t, nil)
	idx := sc.behind(t)
	src := sc.srcs[1]
	boom := errors.New("checkpoint failed")
	src.openErrs = []error{ErrSnapshotLater, fmt.Errorf("busy: %w", ErrSnapshotLater), boom, ErrSnapshotLater}
	sc.h.heal()
	// Each tick's heartbeat response (or the rejected probe that finds
	// the log compacted) tries once, and the replica stays out of
	// snapshot state.
	for i := 0; i < 3; i++ {
		before := src.opens
		sc.tick(1)
		if n := src.opens - before; n > 2 {
			t.Fatalf("tick %d opened %d times", i, n)
		}
		r1 := sc.h.nodes[1].raft
		if r1.state != StateLeader || len(sc.h.nodes[1].storageErrs) > 0 {
			t.Fatalf("the leader failed: %s, %v", r1.state, sc.h.nodes[1].storageErrs)
		}
		if r1.prs[3].state == snapshotState {
			t.Fatalf("replica in snapshot state while the source says later")
		}
	}
	if src.laters < 3 {
		t.Fatalf("the source said later %d times in 3 ticks", src.laters)
	}
	if !sc.catchUp("after") {
		t.Fatalf("node 3 did not catch up\n%s", sc.h)
	}
	sc.checkClean(t)
	sc.checkInstalled(t, idx)
	if src.laters != 4 || src.opens != 5 {
		t.Errorf("opens %d, laters %d; want 5, 4", src.opens, src.laters)
	}
	if sc.h.nodes[1].raft.state != StateLeader {
		t.Error("the leader lost its leadership")
	}
}

// TestStreamSnapshotLaterForever: while the source keeps saying later,
// the leader asks about once a tick, and the cluster keeps committing.
func TestStreamSnapshotLaterForever(t *testing.T) {
	sc := newStreamCluster(t, nil)
	sc.behind(t)
	src := sc.srcs[1]
	for i := 0; i < 100; i++ {
		src.openErrs = append(src.openErrs, ErrSnapshotLater)
	}
	sc.h.heal()
	sc.tick(20)
	if src.opens < 15 || src.opens > 40 {
		t.Fatalf("%d OpenSnapshot calls in 20 ticks", src.opens)
	}
	proposeAll(sc.h, "more")
	if !appliedOn(sc.h.nodes[2], "more") {
		t.Fatal("nothing commits while a replica waits for a snapshot")
	}
	src.openErrs = nil
	if !sc.catchUp("after") {
		t.Fatalf("node 3 did not catch up\n%s", sc.h)
	}
	sc.checkClean(t)
}

// TestStreamSnapshotChanged: the opened snapshot goes away mid-stream
// (ErrSnapshotChanged); the leader opens another, at the same index with
// other bytes or at a newer index, and the follower's sink starts over from
// offset 0, ending with exactly the new snapshot's bytes.
func TestStreamSnapshotChanged(t *testing.T) {
	t.Run("same index", func(t *testing.T) {
		sc := newStreamCluster(t, nil)
		idx := sc.behind(t)
		src := sc.srcs[1]
		once := false
		src.changed = func(_, offset uint64) bool {
			if offset >= 5*streamChunk && !once {
				once = true
				return true
			}
			return false
		}
		if !sc.catchUp("after") {
			t.Fatalf("node 3 did not catch up\n%s", sc.h)
		}
		sc.checkClean(t)
		sc.checkInstalled(t, idx)
		sink := sc.sinks[3]
		if src.opens != 2 || sink.attempts != 2 || sink.aborts != 1 {
			t.Errorf("opens %d, attempts %d, aborts %d; want 2, 2, 1", src.opens, sink.attempts, sink.aborts)
		}
		if !bytes.Equal(sink.ready[idx], streamData(idx, 1)) {
			t.Error("the installed snapshot is not the second opening's data")
		}
	})
	t.Run("newer index", func(t *testing.T) {
		sc := newStreamCluster(t, nil)
		idx := sc.behind(t)
		src := sc.srcs[1]
		leader := sc.h.nodes[1].raft
		newer, err := leader.SnapshotMeta(leader.log.applied)
		must(err)
		if newer.Index <= idx {
			t.Fatalf("no newer index than %d", idx)
		}
		src.changed = func(_, offset uint64) bool {
			if offset >= 5*streamChunk && src.meta == nil {
				src.meta = func() SnapshotMeta { return newer }
				return true
			}
			return false
		}
		if !sc.catchUp("after") {
			t.Fatalf("node 3 did not catch up\n%s", sc.h)
		}
		sc.checkClean(t)
		sc.checkInstalled(t, newer.Index)
		sink := sc.sinks[3]
		if src.opens != 2 || sink.attempts != 2 || sink.aborts != 1 {
			t.Errorf("opens %d, attempts %d, aborts %d; want 2, 2, 1", src.opens, sink.attempts, sink.aborts)
		}
		if _, ok := sink.ready[idx]; ok {
			t.Error("the first snapshot was completed")
		}
	})
	t.Run("gone as soon as opened", func(t *testing.T) {
		// Each opening is gone by its first read, 30 times: that is
		// "later", one opening per trigger, not a loop of openings.
		sc := newStreamCluster(t, nil)
		idx := sc.behind(t)
		src := sc.srcs[1]
		gone := 30
		src.changed = func(_, offset uint64) bool {
			if gone > 0 {
				gone--
				return true
			}
			return false
		}
		sc.h.heal()
		for i := 0; i < 5; i++ {
			before := src.opens
			sc.tick(1)
			if n := src.opens - before; n > 2 {
				t.Fatalf("tick %d opened %d times", i, n)
			}
		}
		if !sc.catchUp("after") {
			t.Fatalf("node 3 did not catch up\n%s", sc.h)
		}
		sc.checkClean(t)
		sc.checkInstalled(t, idx)
		if sc.sinks[3].attempts != 1 {
			t.Errorf("sink attempts %d", sc.sinks[3].attempts)
		}
	})
}

// TestStreamSnapshotSinkError: the sink rejects a chunk (a middle one, or
// the last one failing the whole snapshot's check); the follower answers a
// reject at offset 0, forgets the partial snapshot without calling
// AbortSnapshot, and the leader starts over from 0 on the same opening.
func TestStreamSnapshotSinkError(t *testing.T) {
	for name, failOn := range map[string]func(offset uint64, done bool) bool{
		"middle chunk": func(offset uint64, _ bool) bool { return offset == 7*streamChunk },
		"last chunk":   func(_ uint64, done bool) bool { return done },
	} {
		t.Run(name, func(t *testing.T) {
			sc := newStreamCluster(t, nil)
			idx := sc.behind(t)
			sink := sc.sinks[3]
			sink.fail = func(offset uint64, done bool) bool { return sink.fails == 0 && failOn(offset, done) }
			if !sc.catchUp("after") {
				t.Fatalf("node 3 did not catch up\n%s", sc.h)
			}
			sc.checkClean(t)
			sc.checkInstalled(t, idx)
			if src := sc.srcs[1]; sink.fails != 1 || sink.attempts != 2 || sink.aborts != 0 || src.opens != 1 {
				t.Errorf("fails %d, attempts %d, aborts %d, opens %d; want 1, 2, 0, 1",
					sink.fails, sink.attempts, sink.aborts, src.opens)
			}
		})
	}
}

// TestStreamSnapshotEmptyRejected: an empty snapshot (one chunk, empty and
// done) the sink rejects is sent again at once, on the reject alone (its
// offset, 0, is no rewind).
func TestStreamSnapshotEmptyRejected(t *testing.T) {
	sc := newStreamCluster(t, nil)
	idx := sc.behind(t)
	src, sink := sc.srcs[1], sc.sinks[3]
	src.empty, sink.verify = true, false
	sink.fail = func(uint64, bool) bool { return sink.fails == 0 }
	sc.h.heal()
	for i := 0; i < 20 && sink.fails == 0; i++ {
		sc.tick(1)
	}
	if got, ok := sink.ready[idx]; sink.fails != 1 || !ok || len(got) != 0 {
		t.Fatalf("fails %d, ready %v %q: the rejected snapshot was not sent again at once", sink.fails, ok, got)
	}
	if !sc.catchUp("after") {
		t.Fatalf("node 3 did not catch up\n%s", sc.h)
	}
	sc.checkClean(t)
	if st := sc.h.nodes[3].storage; st.Snapshot().Index != idx || st.SnapshotData() != nil || sink.attempts != 1 || sink.writes != 2 {
		t.Fatalf("installed %d, data %q, attempts %d", st.Snapshot().Index, st.SnapshotData(), sink.attempts)
	}
}

// TestStreamSnapshotAbort: raft calls AbortSnapshot when it drops a partial
// snapshot: a newer term's leader, a snapshot it turned out not to need.
func TestStreamSnapshotAbort(t *testing.T) {
	// partial delivers the leader's messages until node 3's sink holds
	// some chunks of the snapshot, then cuts the leader's link to node 3.
	partial := func(t *testing.T, sc *streamCluster) {
		h := sc.h
		h.heal()
		sink := sc.sinks[3]
		for i := 0; i < 50 && len(sink.partial) < 3*streamChunk; i++ {
			h.tick(1, 1)
			for len(h.queue) > 0 && len(sink.partial) < 3*streamChunk {
				m := h.queue[0]
				h.queue = h.queue[1:]
				sc.step(m)
				for _, id := range h.ids {
					h.process(h.nodes[id])
				}
			}
		}
		if len(sink.partial) < 3*streamChunk {
			t.Fatalf("no partial snapshot on node 3\n%s", h)
		}
		h.cut[[2]NodeID{1, 3}] = true
		h.dropQueued(func(m Message) bool { return m.To == 3 && m.From == 1 })
	}
	t.Run("new leader", func(t *testing.T) {
		sc := newStreamCluster(t, nil)
		sc.behind(t)
		partial(t, sc)
		must(sc.h.nodes[1].raft.TransferLeadership(2))
		sc.settle()
		if sc.h.leader() != 2 {
			t.Fatalf("transfer failed\n%s", sc.h)
		}
		sink := sc.sinks[3]
		if sink.aborts != 1 || sc.h.nodes[3].raft.incoming != nil {
			t.Fatalf("aborts %d, incoming %v after a new term", sink.aborts, sc.h.nodes[3].raft.incoming)
		}
		if !sc.catchUp("after") { // node 2's log is not compacted
			t.Fatalf("node 3 did not catch up\n%s", sc.h)
		}
		sc.checkClean(t)
		if sink.aborts != 1 || sink.ready != nil {
			t.Errorf("aborts %d, ready %d", sink.aborts, len(sink.ready))
		}
	})
	t.Run("not needed", func(t *testing.T) {
		sc := newStreamCluster(t, nil)
		sc.behind(t)
		partial(t, sc)
		r3 := sc.h.nodes[3].raft
		// A snapshot at an index node 3 holds: it drops the partial one.
		must(r3.Step(Message{Type: MsgSnap, From: 1, To: 3, Term: r3.term,
			Snapshot: &SnapshotMeta{Index: 1, Term: 1, Config: r3.config()}, Data: []byte("x"), Done: true}))
		if sink := sc.sinks[3]; sink.aborts != 1 || r3.incoming != nil {
			t.Fatalf("aborts %d, incoming %v", sink.aborts, r3.incoming)
		}
		if !sc.catchUp("after") {
			t.Fatalf("node 3 did not catch up\n%s", sc.h)
		}
		sc.checkClean(t)
	})
}

// TestStreamSnapshotInvalidMeta: metadata from OpenSnapshot that raft cannot
// send fails the leader like a storage failure (Update.StorageErr), and the
// others go on without it.
func TestStreamSnapshotInvalidMeta(t *testing.T) {
	cases := map[string]func(r *Raft, good SnapshotMeta) SnapshotMeta{
		"above committed": func(r *Raft, m SnapshotMeta) SnapshotMeta {
			m.Index = r.log.committed + 5
			return m
		},
		"above applied": func(r *Raft, m SnapshotMeta) SnapshotMeta {
			m.Index = r.log.applied + 1
			return m
		},
		"zero index": func(r *Raft, m SnapshotMeta) SnapshotMeta { return SnapshotMeta{Config: m.Config} },
		"compacted": func(r *Raft, m SnapshotMeta) SnapshotMeta {
			m.Index, m.Term, m.ConfigIndex = 1, 1, 1
			return m
		},
		"wrong term": func(r *Raft, m SnapshotMeta) SnapshotMeta {
			m.Term++
			return m
		},
		"wrong config": func(r *Raft, m SnapshotMeta) SnapshotMeta {
			m.Config = Membership{Servers: m.Config.Servers[:1]}
			return m
		},
		"invalid config": func(r *Raft, m SnapshotMeta) SnapshotMeta {
			m.Config = Membership{}
			return m
		},
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			sc := newStreamCluster(t, nil)
			sc.behind(t)
			n := sc.h.nodes[1]
			good := n.storage.Snapshot()
			sc.srcs[1].meta = func() SnapshotMeta { return bad(n.raft, good) }
			sc.h.heal()
			for i := 0; i < 10 && len(n.storageErrs) == 0; i++ {
				sc.tick(1)
			}
			if len(n.storageErrs) != 1 || !strings.Contains(n.storageErrs[0].Error(), "snapshot source opened") {
				t.Fatalf("storage errors: %v", n.storageErrs)
			}
			if n.raft.state == StateLeader {
				t.Fatal("still leader")
			}
			if sc.srcs[1].reads != 0 {
				t.Errorf("%d reads of an invalid snapshot", sc.srcs[1].reads)
			}
			sc.h.isolate(1)
			sc.tick(40)
			if l := sc.h.leader(); l == None || l == 1 {
				t.Fatalf("leader %d\n%s", l, sc.h)
			}
		})
	}
}

// TestStreamSnapshotMaxBytes: MaxSnapshotBytes bounds what a follower with a
// sink accepts: a chunk ending past it is an invalid message, the sink is
// given nothing past it, and nothing is installed; at exactly the size, the
// snapshot is accepted.
func TestStreamSnapshotMaxBytes(t *testing.T) {
	t.Run("past the bound", func(t *testing.T) {
		const bound = 10*streamChunk + 5
		sc := newStreamCluster(t, func(c *Config) {
			if c.ID == 3 {
				c.MaxSnapshotBytes = bound
			}
		})
		idx := sc.behind(t)
		sc.h.heal()
		sc.tick(25)
		if len(sc.stepErrs) == 0 {
			t.Fatal("no chunk refused")
		}
		for _, err := range sc.stepErrs {
			if !errors.Is(err, ErrInvalidMessage) || !strings.Contains(err.Error(), "MaxSnapshotBytes") {
				t.Fatalf("step error: %v", err)
			}
		}
		sink, r3 := sc.sinks[3], sc.h.nodes[3].raft
		if len(sink.partial) > bound || sink.ready != nil || sc.h.nodes[3].storage.Snapshot().Index == idx {
			t.Fatalf("sink holds %d bytes, ready %d", len(sink.partial), len(sink.ready))
		}
		if r3.incoming == nil || r3.incoming.received != uint64(len(sink.partial)) || r3.incoming.buf != nil {
			t.Fatalf("incoming %+v, the sink holds %d", r3.incoming, len(sink.partial))
		}
		if len(sc.buffered) > 0 {
			t.Fatal(sc.buffered[0])
		}
	})
	t.Run("at the bound", func(t *testing.T) {
		sc := newStreamCluster(t, func(c *Config) {
			if c.ID == 3 {
				c.MaxSnapshotBytes = streamSize
			}
		})
		idx := sc.behind(t)
		if !sc.catchUp("after") {
			t.Fatalf("node 3 did not catch up\n%s", sc.h)
		}
		sc.checkClean(t)
		sc.checkInstalled(t, idx)
	})
}

// TestStreamSnapshotMixed: a source without sinks (followers buffer, and
// get the source's bytes as Update.Snapshot.Data) and sinks without a
// source (the leader reads Storage).
func TestStreamSnapshotMixed(t *testing.T) {
	t.Run("source only", func(t *testing.T) {
		sc := newStreamCluster(t, func(c *Config) { c.SnapshotSink = nil })
		idx := sc.behind(t)
		if !sc.catchUp("after") {
			t.Fatalf("node 3 did not catch up\n%s", sc.h)
		}
		sc.buffered = nil // expected here
		sc.checkClean(t)
		if got := sc.h.nodes[3].storage.SnapshotData(); !bytes.Equal(got, streamData(idx, 0)) {
			t.Fatalf("installed %d bytes, not the source's", len(got))
		}
	})
	t.Run("sink only", func(t *testing.T) {
		sc := newStreamCluster(t, func(c *Config) { c.SnapshotSource = nil })
		sc.sinks[3].verify = false // the storage snapshot is "state-at-N"
		idx := sc.behind(t)
		if !sc.catchUp("after") {
			t.Fatalf("node 3 did not catch up\n%s", sc.h)
		}
		sc.checkClean(t)
		want := sc.h.nodes[1].storage.SnapshotData()
		if got := sc.sinks[3].ready[idx]; !bytes.Equal(got, want) || sc.h.nodes[3].storage.SnapshotData() != nil {
			t.Fatalf("sink holds %q, storage snapshot %q", got, want)
		}
	})
}

// TestStreamSnapshotResponseChecks: with a source, a snapshot response is
// checked against what was read for that replica, per replica: another
// replica's transfer of another snapshot does not make it stale or invalid.
func TestStreamSnapshotResponseChecks(t *testing.T) {
	sc := newStreamCluster(t, nil)
	sc.behind(t)
	r := sc.h.nodes[1].raft
	sc.h.heal()
	h := sc.h
	for i := 0; i < 50 && r.prs[3].state != snapshotState; i++ {
		h.tick(1, 1)
		for len(h.queue) > 0 && r.prs[3].state != snapshotState {
			m := h.queue[0]
			h.queue = h.queue[1:]
			sc.step(m)
			for _, id := range h.ids {
				h.process(h.nodes[id])
			}
		}
	}
	pr := r.prs[3]
	if pr.state != snapshotState || pr.snapOffset == 0 {
		t.Fatalf("no transfer to node 3\n%s", h)
	}
	sent := pr.snapOffset
	// Node 2 is sent another snapshot meanwhile.
	other := SnapshotMeta{Index: 2, Term: 2, Config: r.config(), ConfigIndex: 1}
	r.noteSnapshotRead(2, other.Index, 500)
	err := r.Step(Message{Type: MsgSnapResp, From: 3, To: 1, Term: r.term, Index: pr.snap.Index, Offset: sent + 1})
	if !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("response beyond the bytes sent: %v", err)
	}
	must(r.Step(Message{Type: MsgSnapResp, From: 3, To: 1, Term: r.term, Index: pr.snap.Index, Offset: sent}))
	if pr.state != snapshotState || pr.snapOffset <= sent {
		t.Fatalf("transfer did not go on: %s offset %d", pr.state, pr.snapOffset)
	}
}

// TestStreamSnapshotLateResponse: after the leader opened the same index
// again, a late response about the earlier opening (further than the new
// one sent) does not make it read the new opening past what it read: it
// goes on from what this opening sent.
func TestStreamSnapshotLateResponse(t *testing.T) {
	// One chunk in flight, so that the late response is further than
	// what the new opening sent.
	sc := newStreamCluster(t, func(c *Config) { c.SnapshotChunksInFlight = 1 })
	idx := sc.behind(t)
	h, r1, src, sink := sc.h, sc.h.nodes[1].raft, sc.srcs[1], sc.sinks[3]
	h.heal()
	// deliverUntil delivers one message at a time until done.
	deliverUntil := func(what string, done func() bool) {
		for i := 0; i < 50 && !done(); i++ {
			h.tick(1, 1)
			for len(h.queue) > 0 && !done() {
				m := h.queue[0]
				h.queue = h.queue[1:]
				sc.step(m)
				for _, id := range h.ids {
					h.process(h.nodes[id])
				}
			}
		}
		if !done() {
			t.Fatalf("never %s\n%s", what, h)
		}
	}
	var late *Message
	deliverUntil("5 chunks", func() bool {
		for _, m := range h.queue {
			if m.Type == MsgSnapResp && m.From == 3 && m.Offset >= 5*streamChunk {
				late = &m
				return true
			}
		}
		return false
	})
	reopen := true
	src.changed = func(uint64, uint64) bool {
		defer func() { reopen = false }()
		return reopen
	}
	// The leader opens the snapshot again and sends its first two chunks.
	deliverUntil("reopened", func() bool {
		return r1.state == StateLeader && src.opens == 2 && sink.attempts == 2 && r1.prs[3].snapOffset >= 2*streamChunk
	})
	must(r1.Step(*late))
	pr := r1.prs[3]
	if pr.snapAcked > pr.snapOffset || pr.snapAcked >= late.Offset {
		t.Fatalf("acknowledged %d of the new opening, sent %d", pr.snapAcked, pr.snapOffset)
	}
	// The chunks in flight are lost: the leader resends from what it
	// takes as acknowledged.
	h.queue = nil
	if !sc.catchUp("after") {
		t.Fatalf("node 3 did not catch up\n%s", h)
	}
	sc.checkClean(t)
	sc.checkInstalled(t, idx)
	if !bytes.Equal(sink.ready[idx], streamData(idx, 1)) {
		t.Error("the installed snapshot is not the second opening's data")
	}
}

// TestRapidStreamSnapshots runs TestRapidFaultSchedules' fault schedules
// (reordering, drops, duplicates, partitions, crashes, stalled disks,
// transfers, membership changes, compactions) on a cluster whose nodes all
// stream snapshots from a source to a sink, which now and then say later,
// lose the snapshot being read (when the storage compacts further) or
// reject a chunk. Beyond the model's checks: no
// Step error (no false invalid message), no storage error, raft never
// buffers a snapshot, every sink is given chunks in order and completes
// only snapshots the sources served, and after healing the cluster commits.
func TestRapidStreamSnapshots(t *testing.T) {
	if f := flag.Lookup("rapid.steps"); f != nil && f.Value.String() == "30" {
		must(f.Value.Set("200"))
		defer f.Value.Set("30")
	}
	rapid.Check(t, func(t *rapid.T) {
		seed := rapid.Uint64().Draw(t, "seed")
		srcs, sinks := map[NodeID]*streamSource{}, map[NodeID]*streamSink{}
		h := newHarness(seed, func(c *Config) {
			c.MaxSnapshotChunkBytes, c.MaxMsgBytes = 40, 128
			if srcs[c.ID] == nil {
				// Sometimes later, sometimes gone, sometimes a sink
				// error: every path, under faults.
				srcs[c.ID] = &streamSource{st: c.Storage.(*MemoryStorage), newest: true, laterEvery: 3}
				sinks[c.ID] = &streamSink{verify: true, failEvery: 97}
			}
			c.SnapshotSource, c.SnapshotSink = srcs[c.ID], sinks[c.ID]
		})
		h.bootstrap(1, 2, 3)
		h.addNode(4, NewMemoryStorage())
		m := &model{h: h}
		check := func(t *rapid.T) {
			m.checkInvariants(t)
			for _, id := range h.ids {
				n := h.nodes[id]
				if in := n.raft.incoming; !n.down && in != nil && in.buf != nil {
					t.Fatalf("node %d buffers %d bytes", id, len(in.buf))
				}
				if len(n.storageErrs) > 0 {
					t.Fatalf("node %d storage errors: %v", id, n.storageErrs)
				}
				if s := sinks[id]; len(s.errs) > 0 || s.badChecks > 0 {
					t.Fatalf("node %d sink: %v, %d bad snapshots", id, s.errs, s.badChecks)
				}
				if s := srcs[id]; len(s.readErrs) > 0 {
					t.Fatalf("node %d source: %v", id, s.readErrs)
				}
			}
		}
		t.Repeat(map[string]func(*rapid.T){
			"":          check,
			"tick":      m.tick,
			"tickAll":   m.tickAll,
			"flush":     m.flush,
			"deliver":   m.deliver,
			"drop":      m.drop,
			"duplicate": m.duplicate,
			"cut":       m.cutLink,
			"heal":      func(*rapid.T) { h.heal() },
			"crash":     m.crash,
			"hold":      m.hold,
			"release":   m.release,
			"propose":   m.propose,
			"transfer":  m.transfer,
			"conf":      m.conf,
			"snapshot":  m.snapshot,
			"read":      m.read,
		})
		m.liveness(t)
		check(t)
	})
}
