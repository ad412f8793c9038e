package sim

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"time"

	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
)

// node is one simulated server: its durable disk survives crashes; its loop
// and state machine do not.
type node struct {
	id        raft.NodeID
	disk      *disk
	loop      *loop.Loop
	kv        *kvStore
	up        bool
	paused    bool
	removed   bool // stopped for good (removed and wiped)
	inc       int  // incarnation, bumped at each start
	tickEvery time.Duration
	// deferred holds messages that arrived while paused.
	deferred []raft.Message
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
	n := &node{id: id, tickEvery: time.Duration(float64(s.opts.Tick) * skew)}
	n.disk = &disk{MemoryStorage: raft.NewMemoryStorage(), id: id, sim: s}
	s.nodes[id] = n
	return n
}

// startNode (re)creates a node's loop and state machine from its disk.
func (s *Sim) startNode(n *node) {
	n.inc++
	n.kv = newKV()
	cfg := loop.Config{
		Raft: raft.Config{ID: n.id, ElectionTicks: 10, HeartbeatTicks: 2, MaxSnapshotChunkBytes: 256,
			MaxMsgBytes: 4096, MaxInflightMsgs: 8, TestingBugs: s.opts.Bugs},
		Storage: n.disk, FSM: applyHook{s: s, n: n},
		Rand:                rand.New(rand.NewPCG(s.opts.Seed, uint64(n.id)<<32|uint64(n.inc))),
		SnapshotThreshold:   s.opts.SnapshotThreshold,
		RequestTimeoutTicks: 50,
	}
	l, err := loop.New(cfg)
	if err != nil {
		s.violate("node %d failed to start: %v", n.id, err)
		n.up = false
		return
	}
	n.loop, n.up, n.paused, n.deferred = l, true, false, nil
	delete(s.commits, n.id)
	s.tracef("start %d inc=%d", n.id, n.inc)
	s.after(s.randDuration(0, n.tickEvery), &event{kind: evTick, node: n.id, inc: n.inc})
}

func (s *Sim) crash(n *node) {
	n.up, n.paused, n.deferred, n.loop = false, false, nil, nil
	s.tracef("crash %d", n.id)
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
		s.send(m)
	}
	if out.Write != nil {
		d := s.randDuration(s.opts.DiskLatencyMin, s.opts.DiskLatencyMax)
		if s.faultsOn && s.chance(0.02) {
			d += 50 * time.Millisecond // a slow disk
			s.count("slow-disk")
		}
		s.after(d, &event{kind: evWriteDone, node: n.id, inc: n.inc, job: out.Write})
	}
	for _, r := range out.Replies {
		s.reply(n, r)
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
		s.violate("node %d rejected a message from a peer: %v", n.id, err)
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
