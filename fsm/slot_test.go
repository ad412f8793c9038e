package fsm_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
)

// TestTimedOutWriteKeepsWriterSlot checks that the writer slot belongs to
// a proposed entry until it resolves, not to its client: a write whose
// client timed out while its entry could not commit yet must not let the
// next write start (it would find the first write's capture pending and
// fail with an internal error). The next write waits, then both apply.
func TestTimedOutWriteKeepsWriterSlot(t *testing.T) {
	c := newClusterWith(t, 3, fsm.ModeFrames, 0, func(lc *loop.Config) { lc.RequestTimeoutTicks = 5 })
	leader := c.elect()
	c.mustExec(leader, "CREATE TABLE t (x)")
	// Appends carrying entries are lost; heartbeats keep the leader.
	blocked := true
	c.drop = func(m raft.Message) bool { return blocked && m.Type == raft.MsgApp && len(m.Entries) > 0 }
	first := c.exec(leader, "INSERT INTO t VALUES (1)")
	c.run()
	for i := 0; i < 8 && c.replies[first].ID == 0; i++ {
		c.tick(1)
	}
	if r := c.replies[first]; !errors.Is(r.Err, loop.ErrTimeout) {
		t.Fatalf("first write: %+v, want a timeout", r)
	}
	if c.leader() != leader {
		t.Fatal("leadership changed; the test needs the leader to stay")
	}
	second := c.exec(leader, "INSERT INTO t VALUES (2)")
	c.run()
	if r, done := c.replies[second]; done {
		t.Fatalf("second write answered while the first entry holds the slot: %+v", r)
	}
	blocked = false
	for i := 0; i < 5 && c.replies[second].ID == 0; i++ {
		c.tick(1)
	}
	if r := c.replies[second]; r.ID == 0 || r.Err != nil {
		t.Fatalf("second write: %+v", r)
	}
	for _, n := range c.nodes {
		if got := query(t, n, "SELECT group_concat(x) FROM t ORDER BY x"); got[0][0] != "1,2" {
			t.Fatalf("node %d: rows %v", n.id, got)
		}
	}
}

// TestFailedBatchDropsItsCapture checks that a batch whose every write
// failed, but whose transaction still wrote (the first client-session
// writes create the deduplication table), leaves no capture behind: the
// next write runs instead of failing on a pending capture nobody proposed.
func TestFailedBatchDropsItsCapture(t *testing.T) {
	c := newCluster(t, 3, fsm.ModeFrames, 0)
	l := c.elect()
	submit := func(item *fsm.BatchItem) uint64 {
		c.nextID++
		c.take(l, l.l.SubmitWrite(loop.WriteRequest{ID: c.nextID, Batch: item}))
		return c.nextID
	}
	first := submit(&fsm.BatchItem{SQL: "CREATE TABLE t (x)"}) // holds the slot: the next two queue
	bad := []uint64{
		submit(&fsm.BatchItem{SQL: "INSERT INTO nosuch VALUES (1)", Client: 7, Seq: 1}),
		submit(&fsm.BatchItem{SQL: "INSERT INTO nosuch VALUES (2)", Client: 8, Seq: 1}),
	}
	c.run()
	c.tick(2)
	if r := c.replies[first]; r.Err != nil {
		t.Fatalf("first write: %v", r.Err)
	}
	for _, id := range bad {
		if r := c.replies[id]; r.Err == nil || !strings.Contains(r.Err.Error(), "no such table") {
			t.Fatalf("write %d: %+v, want no such table", id, r)
		}
	}
	next := submit(&fsm.BatchItem{SQL: "INSERT INTO t VALUES (1)", Client: 9, Seq: 1})
	c.run()
	c.tick(2)
	if r := c.replies[next]; r.ID == 0 || r.Err != nil {
		t.Fatalf("write after the failed batch: %+v", r)
	}
}
