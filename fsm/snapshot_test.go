package fsm_test

import (
	"fmt"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
)

// restoreCount restores snap into a fresh database and returns its row
// count of t, after an integrity check.
func restoreCount(t *testing.T, snap []byte) int64 {
	t.Helper()
	db, err := openMode(fmt.Sprintf("restore-%d", vfsSeq.Add(1)), 1, fsm.ModeFrames)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Restore(snap); err != nil {
		t.Fatalf("restoring the snapshot: %v", err)
	}
	rows, err := db.Conn().Query("PRAGMA integrity_check")
	if err != nil || rows[0][0] != "ok" {
		t.Fatalf("integrity check of the restored snapshot: %v %v", rows, err)
	}
	rows, err = db.Conn().Query("SELECT count(*) FROM t")
	if err != nil {
		t.Fatal(err)
	}
	return rows[0][0].(int64)
}

// TestSnapshotWhileQueryOpen takes snapshots while a query's cursor holds
// an old read snapshot, which stops checkpoints part way: the snapshot must
// still hold every applied write (it once held only the checkpointed part,
// a malformed database), and once the cursor closes the snapshot also
// empties the WAL.
func TestSnapshotWhileQueryOpen(t *testing.T) {
	l := newLeaderDB(t)
	l.batch(&fsm.BatchItem{SQL: "CREATE TABLE t(x)"})
	l.batch(&fsm.BatchItem{SQL: "INSERT INTO t VALUES (1), (2), (3)"})
	cur, err := l.db.OpenCursor("", "SELECT x FROM t")
	if err != nil {
		t.Fatal(err)
	}
	if more, err := cur.Step(); !more || err != nil {
		t.Fatalf("step: %v %v", more, err)
	}
	insert := func(n int) {
		for i := 0; i < n; i++ {
			if _, errs := l.batch(&fsm.BatchItem{SQL: "INSERT INTO t VALUES (randomblob(3000))"}); errs[0] != nil {
				t.Fatal(errs[0])
			}
		}
	}
	insert(5)
	if err := l.db.Conn().Checkpoint(); err != nil { // stops part way: the cursor's reader
		t.Logf("checkpoint with a reader: %v", err)
	}
	insert(5)
	snap, err := l.db.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if n := restoreCount(t, snap); n != 13 {
		t.Fatalf("snapshot with a query open holds %d rows, want 13", n)
	}
	l.db.CloseCursor(cur)
	if snap, err = l.db.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if n := restoreCount(t, snap); n != 13 {
		t.Fatalf("snapshot after the query holds %d rows, want 13", n)
	}
	if w := l.db.WALSize(); w != 0 {
		t.Fatalf("WAL of %d bytes left after a snapshot with no query open", w)
	}
}
