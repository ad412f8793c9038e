package node

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
)

// failingFSM fails the first normal entry it is asked to apply once armed.
type failingFSM struct {
	loop.StateMachine
	armed *atomic.Bool
}

var errInjectedApply = errors.New("injected apply failure")

func (f failingFSM) Apply(e raft.Entry) (any, error) {
	if e.Type == raft.EntryNormal && f.armed.CompareAndSwap(true, false) {
		return nil, errInjectedApply
	}
	return f.StateMachine.Apply(e)
}

func (f failingFSM) Pending() bool { return f.StateMachine.(loop.PendingReporter).Pending() }

// syncBuffer is a log destination safe for the node's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestApplyFailureStopsFollower injects a failure into one follower's apply
// of a committed entry: that follower stops at the entry before (its image
// is the cluster's image at that index, never a diverged one), says so in
// its log and metrics and is not ready, while the others keep serving
// writes and agree with each other.
func TestApplyFailureStopsFollower(t *testing.T) {
	armed := map[raft.NodeID]*atomic.Bool{}
	logs := map[raft.NodeID]*syncBuffer{}
	prev := loopConfigHook
	defer func() { loopConfigHook = prev }()
	loopConfigHook = func(c *loop.Config) {
		a := &atomic.Bool{}
		armed[c.Raft.ID] = a
		c.FSM = failingFSM{StateMachine: c.FSM, armed: a}
	}
	nodes := startClusterWith(t, 3, func(c *Config) {
		logs[c.ID] = &syncBuffer{}
		c.Logger = slog.New(slog.NewTextHandler(logs[c.ID], nil))
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := l.Exec(ctx, "INSERT INTO t VALUES (?)", i); err != nil {
			t.Fatal(err)
		}
	}
	f := nodes[0]
	if f == l {
		f = nodes[1]
	}
	before := l.Applied()
	if err := f.WaitFor(ctx, func() bool { return f.loop.Applied() >= before }); err != nil {
		t.Fatal(err)
	}
	hashBefore, err := f.ImageHash()
	if err != nil {
		t.Fatal(err)
	}
	armed[f.cfg.ID].Store(true)
	for i := 5; i < 10; i++ {
		if _, err := l.Exec(ctx, "INSERT INTO t VALUES (?)", i); err != nil {
			t.Fatalf("write with one follower stopped: %v", err)
		}
	}
	if err := f.WaitFor(ctx, func() bool { return f.loop.Err() != nil }); err != nil {
		t.Fatalf("follower did not stop: %v", err)
	}
	m := f.Metrics()
	if !m.ApplyFailed || m.StorageFailed || m.Applied != before || f.Ready() {
		t.Fatalf("stopped follower: apply failed %v, storage failed %v, applied %d (want %d), ready %v",
			m.ApplyFailed, m.StorageFailed, m.Applied, before, f.Ready())
	}
	if h, err := f.ImageHash(); err != nil || h != hashBefore {
		t.Fatalf("stopped follower's image %x (%v), want its image at index %d %x", h, err, before, hashBefore)
	}
	if out := logs[f.cfg.ID].String(); !strings.Contains(out, "failed to apply") || !strings.Contains(out, errInjectedApply.Error()) {
		t.Fatalf("no log line for the apply failure:\n%s", out)
	}
	// The other two agree at the same applied index.
	want := l.Applied()
	var hashes []uint64
	for _, n := range nodes {
		if n == f {
			continue
		}
		if err := n.WaitFor(ctx, func() bool { return n.loop.Applied() >= want }); err != nil {
			t.Fatal(err)
		}
		h, err := n.ImageHash()
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, h)
	}
	if hashes[0] != hashes[1] {
		t.Fatalf("leader and live follower differ: %x", hashes)
	}
}
