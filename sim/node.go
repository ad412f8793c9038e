package sim

import (
	"github.com/dqlite-go/dqlite/internal/faultfs"

	"strings"

	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"time"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/assert"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/vfs"
	"github.com/dqlite-go/dqlite/wal"
)

// node is one simulated server: its durable disk survives crashes; its loop
// and state machine do not.
type node struct {
	id        raft.NodeID
	fs        *Disk    // survives crashes
	disk      *storage // the log opened on fs, per incarnation
	loop      *loop.Loop
	kv        *kvStore
	vfs       *vfs.VFS // SQLite mode
	db        *fsm.DB  // SQLite mode
	up        bool
	paused    bool
	removed   bool // stopped for good (removed and wiped)
	inc       int  // incarnation, bumped at each start
	tickEvery time.Duration
	// skew is tickEvery over the nominal tick: the node's clock runs at
	// 1/skew of true time (its ticks and its clock agree).
	skew float64
	// deferred holds messages that arrived while paused.
	deferred []raft.Message
	// flipped is a bit flipped in a closed segment while the node was
	// down: its next start must report corruption.
	flipped *bitFlip
	// appended is the write job the disk performed and whose completion
	// the loop has not heard yet (with its error): as in production, the
	// loop's reads see the appended entries before WriteDone.
	appended    *loop.WriteJob
	appendedErr error
	// stalled: no ticks (a stale leader's check-quorum never runs), but
	// messages and requests are taken.
	stalled bool
	// slowUntil and slowBy make appends slower until a time.
	slowUntil, slowBy time.Duration
	// checkedConfig is the configuration index whose content the oracle
	// last compared.
	checkedConfig uint64
}

type bitFlip struct {
	file string
	off  int64
	bit  uint
}

// applyHook wraps the kv store to feed the state machine safety oracle.
type applyHook struct {
	s *Sim
	n *node
}

func (h applyHook) Apply(e raft.Entry) (any, error) {
	h.s.checkApply(h.n.id, e)
	return h.n.kv.Apply(e)
}
func (h applyHook) Snapshot() ([]byte, error) { return h.n.kv.Snapshot() }
func (h applyHook) Restore(data []byte) error { return h.n.kv.Restore(data) }

func (s *Sim) addNode(id raft.NodeID) *node {
	// Clock skew: each node's ticks run up to 20% fast or slow.
	skew := 0.8 + 0.4*s.rng.Float64()
	n := &node{id: id, tickEvery: time.Duration(float64(s.opts.Tick) * skew), skew: skew}
	n.fs = NewDisk(s.opts.Seed ^ uint64(id)<<40)
	n.fs.OnFault = func(kind, name string) { s.noteDiskFault(n, kind, name) }
	s.nodes[id] = n
	return n
}

// clock is the node's monotonic clock: true (simulated) time at the rate
// of its ticks, whatever happens to the ticks themselves (stalls, pauses,
// bursts).
func (n *node) clock(s *Sim) func() int64 {
	return func() int64 { return int64(float64(s.now)/n.skew) + 1 }
}

// startNode (re)creates a node's loop and state machine from its disk.
func (s *Sim) startNode(n *node) {
	n.inc++
	n.kv = newKV()
	n.fs.ClearReadFault()
	w, rep, err := wal.Open(n.fs, s.walOptions())
	if f := n.flipped; f != nil {
		n.flipped = nil
		if err == nil {
			s.violate("corruption-detected", "node %d started on a log with a flipped bit in %s at %d: corruption accepted", n.id, f.file, f.off)
			w.Close()
		} else if !wal.IsCorruption(err) {
			s.violate("corruption-detected", "node %d: flipped bit in %s reported as %v, not corruption", n.id, f.file, err)
		}
		s.count("bitflip-detected")
		// The operator restores the damaged file (here: flips it back).
		assert.NoError(n.fs.FlipBit(f.file, f.off, f.bit), "unflipping")
		w, rep, err = wal.Open(n.fs, s.walOptions())
	}
	if err != nil {
		s.violate("recovery", "node %d cannot open its log: %v", n.id, err)
		n.up = false
		return
	}
	if rep.TruncatedFile != "" {
		s.count("torn-tail-recovered")
	}
	if n.disk == nil {
		n.disk = &storage{id: n.id, sim: s, fs: n.fs}
	}
	n.disk.WAL = w
	n.disk.opened()
	var sm loop.StateMachine = applyHook{s: s, n: n}
	var batcher loop.Batcher
	maxMsg, inflight := uint64(4096), 8
	if s.opts.MaxMsgBytes > 0 {
		maxMsg = s.opts.MaxMsgBytes
	}
	if s.opts.MaxInflight > 0 {
		inflight = s.opts.MaxInflight
	}
	if s.opts.SQLite {
		if err := s.openSQL(n); err != nil {
			s.violate("recovery", "node %d: opening SQLite: %v", n.id, err)
			n.up = false
			return
		}
		sm, batcher = sqlHook{s: s, n: n}, n.db
		// Frames entries are pages: at least 64 KiB, so a transaction
		// of a few pages still fits one message.
		if maxMsg = 1 << 20; s.opts.MaxMsgBytes > 0 {
			maxMsg = 64<<10 + s.opts.MaxMsgBytes*64
		}
	}
	cfg := loop.Config{
		Raft: raft.Config{ID: n.id, ElectionTicks: 10, HeartbeatTicks: 2, MaxSnapshotChunkBytes: 256,
			MaxMsgBytes: maxMsg, MaxInflightMsgs: inflight,
			Clock: n.clock(s), TickNanos: int64(s.opts.Tick), MaxClockDrift: s.opts.ClockDrift, NoLease: s.opts.NoLease},
		Storage: n.disk, FSM: sm, Batcher: batcher,
		Rand:                rand.New(rand.NewPCG(s.opts.Seed, uint64(n.id)<<32|uint64(n.inc))),
		SnapshotThreshold:   s.opts.SnapshotThreshold,
		RequestTimeoutTicks: 50,
	}
	l, err := loop.New(cfg)
	if err != nil {
		s.violate("recovery", "node %d failed to start: %v", n.id, err)
		n.up = false
		return
	}
	n.loop, n.up, n.paused, n.deferred, n.stalled = l, true, false, nil, false
	delete(s.commits, n.id)
	delete(s.leaderTerm, n.id)
	n.checkedConfig = 0
	s.tracef("start %d inc=%d", n.id, n.inc)
	s.after(s.randDuration(0, n.tickEvery), &event{kind: evTick, node: n.id, inc: n.inc})
}

func (s *Sim) crash(n *node) {
	n.up, n.paused, n.deferred, n.loop = false, false, nil, nil
	if n.disk != nil {
		n.disk.WAL.Close()
	}
	s.closeSQL(n)
	n.fs.Crash()
	s.tracef("crash %d", n.id)
	s.connectionsReset(n)
}

func (s *Sim) resume(n *node) {
	n.paused = false
	s.tracef("resume %d", n.id)
	msgs := n.deferred
	n.deferred = nil
	for _, m := range msgs {
		s.deliver(m)
	}
}

// take carries out a loop's output: messages into the network, the write
// onto the disk (after its latency), replies to the clients.
func (s *Sim) take(n *node, out loop.Output) {
	for _, m := range out.Messages {
		s.checkDurableBeforeSend(n, m)
		s.send(m)
	}
	if out.Write != nil {
		d := s.randDuration(s.opts.DiskLatencyMin, s.opts.DiskLatencyMax)
		if s.faultsOn && s.chance(0.02) {
			d += 50 * time.Millisecond // a slow disk
			s.count("slow-disk")
		}
		if s.now < n.slowUntil {
			d += n.slowBy
		}
		// The append itself happens part way (the disk goroutine runs
		// beside the loop), its completion reaches the loop at d.
		s.after(time.Duration(s.rng.Int64N(int64(d)+1)), &event{kind: evAppend, node: n.id, inc: n.inc, job: out.Write})
		s.after(d, &event{kind: evWriteDone, node: n.id, inc: n.inc, job: out.Write})
	}
	for _, r := range out.Replies {
		s.reply(n, r)
	}
	if out.Again {
		// As the node posts itself an event: after what is queued now.
		s.after(0, &event{kind: evContinue, node: n.id, inc: n.inc})
	}
}

func (s *Sim) deliver(m raft.Message) {
	n := s.nodes[m.To]
	if n == nil || !n.up || n.removed {
		return
	}
	if n.paused {
		n.deferred = append(n.deferred, m)
		return
	}
	s.tracef("deliver %s", msgSummary(m))
	out, err := n.loop.Step(m)
	if err != nil {
		s.violate("peer-validation", "node %d rejected a message from a peer: %v", n.id, err)
	}
	s.take(n, out)
}

func msgSummary(m raft.Message) string {
	h := fnv.New64a()
	for _, e := range m.Entries {
		h.Write(e.Data)
	}
	return fmt.Sprintf("%s ents=%x", m.String(), h.Sum64())
}

// checkDisks crashes nodes whose disk reached its crash point, and restarts
// nodes whose log failed (a production node exits on a storage failure and
// is restarted from what is on disk).
func (s *Sim) checkDisks() {
	for _, id := range s.sortedIDs() {
		n := s.nodes[id]
		if !n.up {
			continue
		}
		switch {
		case n.fs.Crashed():
			s.crash(n)
			s.count("crash-mid-write")
			s.restartLater(n, s.randDuration(50*time.Millisecond, 500*time.Millisecond))
		case n.loop.Err() != nil:
			s.tracef("node %d stopped: %v", n.id, n.loop.Err())
			s.crash(n)
			s.count("storage-failure-restart")
			s.restartLater(n, s.randDuration(100*time.Millisecond, 600*time.Millisecond))
		}
	}
}

func (s *Sim) restartLater(n *node, d time.Duration) {
	s.after(d, &event{kind: evFault, fn: func() {
		if !n.up && !n.removed {
			s.startNode(n)
			s.count("restart")
		}
	}})
}

// noteDiskFault counts the faults that strike the database files, their
// marks, their record and the snapshot records, and the phase of the database work a
// crash cut short (checkpoint, view, receive, install, restore, replay).
func (s *Sim) noteDiskFault(n *node, kind, name string) {
	switch {
	case strings.HasSuffix(name, faultfs.SectorFileSuffix):
		s.count("dbfile-" + kind)
	case strings.HasPrefix(name, "sqlite-") && strings.HasSuffix(name, ".mark"):
		s.count("dbmark-" + kind)
	case strings.HasPrefix(name, "fsm-databases"):
		s.count("dbrecord-" + kind)
	case strings.HasPrefix(name, "snap-"):
		s.count("snaprecord-" + kind)
	}
	if kind == "crash" && n.db != nil && n.db.Phase() != "" {
		s.count("crash-in-" + n.db.Phase())
	}
}
