package loop

import (
	"fmt"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/raft"
)

// TestHeldCheckpointRunsInAnEventOfItsOwn: when writes have held a
// database's checkpoint back long enough (a write waiting to commit at
// every tick), the event that frees the writer slot runs the checkpoint
// and starts no write: it asks for another event (Output.Again), and that
// one (Continue) starts the queued write. Before, the checkpoint ran
// inside the next write's execution, and one loop event held both (each
// tens of milliseconds with 10 MB writes).
func TestHeldCheckpointRunsInAnEventOfItsOwn(t *testing.T) {
	n, _ := newReviewNode(t)
	if err := n.start(1 << 20); err != nil {
		t.Fatal(err)
	}
	defer n.db.Close()
	n.db.SetCheckpointFrames(1)
	n.l.cfg.Batcher = n.db
	n.elect()
	if n.l.Raft().Status().State != raft.StateLeader {
		t.Fatal("no leader")
	}
	id := uint64(0)
	submit := func(sql string) Output {
		id++
		return n.l.SubmitWrite(WriteRequest{ID: id, Batch: &fsm.BatchItem{SQL: sql}, Group: "db"})
	}
	n.take(submit("CREATE TABLE t (b BLOB)"))
	n.take(n.l.Tick())
	n.take(n.l.Tick()) // its checkpoint done and synced

	// W1 is executed and its entry is being written when W2 comes: W2
	// waits for the slot.
	out := submit("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20) INSERT INTO t SELECT randomblob(3000) FROM s")
	if out.Write == nil || !n.db.Pending() {
		t.Fatal("the first write did not start")
	}
	if again := submit("INSERT INTO t VALUES (x'01')"); again.Write != nil {
		t.Fatal("the second write started while the first held the slot")
	}
	before := n.db.Checkpoints()
	out = n.l.WriteDone(out.Write, n.store.Append(out.Write.Entries))
	if n.db.Checkpoints() == before {
		t.Fatal("the first write's long WAL was not checkpointed when it applied")
	}
	if n.db.Pending() || out.Write != nil {
		t.Fatal("the second write started in the event that checkpointed")
	}
	if !out.Again {
		t.Fatal("the event that held the write back asked for no other")
	}
	out = n.l.Continue()
	if !n.db.Pending() || out.Write == nil {
		t.Fatal("the next event did not start the second write")
	}
	n.take(out)
	rows, err := n.db.Conn().Query("SELECT count(*) FROM t")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := rows[0][0].(int64); got != 21 {
		t.Fatalf("%d rows, want 21", got)
	}
}

// TestCompactionWaitsForTheTicks: when the log is due for compaction but
// the files do not reflect an index past its last snapshot (a database
// written too little to reach the checkpoint threshold), the apply that
// finds it checkpoints nothing (no sync on the loop) and asks the ticks to
// checkpoint every database; once they did, a tick or an apply compacts.
func TestCompactionWaitsForTheTicks(t *testing.T) {
	n, s := newReviewNode(t)
	const thresh = 10
	if err := n.start(thresh); err != nil {
		t.Fatal(err)
	}
	defer n.db.Close()
	n.elect()
	sc := newScratch(t)
	id := uint64(0)
	propose := func(sql string) {
		id++
		n.take(n.l.Propose(id, sc.cmd("db", sql)))
	}
	propose("CREATE TABLE t(x)")
	before := n.db.Checkpoints()
	for i := 0; i < 2*thresh; i++ {
		propose(fmt.Sprintf("INSERT INTO t VALUES (%d)", i))
	}
	if got := n.db.Checkpoints(); got != before {
		t.Fatalf("%d checkpoints ran in apply events (the WAL is short of the threshold)", got-before)
	}
	if snap := s.Snapshot().Index; snap != 0 {
		t.Fatalf("compacted to %d with no checkpoint", snap)
	}
	for i := 0; i < 3; i++ {
		n.take(n.l.Tick())
	}
	if n.db.Checkpoints() == before {
		t.Fatal("the ticks did not checkpoint the short WAL the compaction waits for")
	}
	propose("INSERT INTO t VALUES (-1)")
	if snap := s.Snapshot().Index; snap < 2*thresh {
		t.Fatalf("log compacted to %d after the ticks' checkpoints, want at least %d", snap, 2*thresh)
	}
}
