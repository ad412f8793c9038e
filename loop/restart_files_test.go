package loop

import (
	"fmt"
	"testing"

	"github.com/dqlite-go/dqlite/raft"
)

// TestRestartReplaysToRecordedIndex: a checkpoint at the tick records the
// database file at index F, past the log's snapshot (here none). On
// restart the node knows no commit index, but it applied every entry up
// to F before it stopped, so they are committed: the loop replays to F
// before it starts. Before it did, a restarted node stayed at the
// snapshot's index with a file ahead of it, and refused to open snapshot
// views until a quorum told it a commit index past F; a restarted leader
// whose followers needed a snapshot never heard one (the simulator's
// seed 305 with tick checkpoints: no write committed for 10 s).
func TestRestartReplaysToRecordedIndex(t *testing.T) {
	n, s := newReviewNode(t)
	const thresh = 1 << 20 // no compaction: the log's snapshot stays at 0
	if err := n.start(thresh); err != nil {
		t.Fatal(err)
	}
	n.db.SetCheckpointFrames(1)
	n.elect()
	if n.l.Raft().Status().State != raft.StateLeader {
		t.Fatal("no leader")
	}
	sc := newScratch(t)
	id := uint64(0)
	propose := func(sql string) {
		id++
		n.take(n.l.Propose(id, sc.cmd("db", sql)))
	}
	propose("CREATE TABLE t(x)")
	for i := 0; i < 5; i++ {
		propose(fmt.Sprintf("INSERT INTO t VALUES (%d)", i))
	}
	n.take(n.l.Tick()) // the tick's checkpoint copies the WAL into the file,
	n.take(n.l.Tick()) // the next one syncs and records it
	recorded := n.db.DurableIndex()
	if snap := s.Snapshot().Index; snap != 0 {
		t.Fatalf("the log was compacted to %d: the test needs the file ahead of the snapshot", snap)
	}
	if recorded < 2 {
		t.Fatalf("the tick's checkpoint recorded index %d", recorded)
	}
	n.db.Close()
	n.db, n.l = nil, nil

	if err := n.start(thresh); err != nil {
		t.Fatal(err)
	}
	defer n.db.Close()
	// Before any tick or message: nothing but the disk is known.
	if got := n.l.Applied(); got < recorded {
		t.Fatalf("restarted at applied %d, file recorded at %d", got, recorded)
	}
	if c := n.l.Raft().Status().Commit; c < recorded {
		t.Fatalf("restarted with commit %d, file recorded at %d", c, recorded)
	}
	idx, err := n.db.OpenView()
	if err != nil {
		t.Fatalf("a snapshot view after the restart: %v", err)
	}
	if idx < recorded {
		t.Fatalf("view at %d, file recorded at %d", idx, recorded)
	}
	n.db.CloseView()
	rows, err := n.db.Conn().Query("SELECT count(*) FROM t")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := rows[0][0].(int64); got != 5 {
		t.Fatalf("%d rows after the restart, want 5", got)
	}
}
