package fsm_test

import (
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/mutant"
)

// rowsAfterRestore takes a snapshot holding 3 rows, writes a 4th and a
// table, restores the snapshot and returns the row count and the number of
// tables then.
func rowsAfterRestore(t *testing.T) (rows, tables int64) {
	l := newLeaderDB(t)
	l.batch(&fsm.BatchItem{SQL: "CREATE TABLE t(x)"})
	l.batch(&fsm.BatchItem{SQL: "INSERT INTO t VALUES (1), (2), (3)"})
	snap, err := l.db.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	l.batch(&fsm.BatchItem{SQL: "INSERT INTO t VALUES (4); CREATE TABLE later(y)"})
	if err := l.db.Restore(snap); err != nil {
		t.Fatalf("restore: %v", err)
	}
	return l.count("SELECT count(*) FROM t"), l.count("SELECT count(*) FROM sqlite_master")
}

// TestRestoreReplacesDatabase checks restoring a snapshot into a database
// that moved on replaces it whole: the rows and tables written after the
// snapshot are gone. With mutant.FSMRestoreKeepsOld they stay.
func TestRestoreReplacesDatabase(t *testing.T) {
	if rows, tables := rowsAfterRestore(t); rows != 3 || tables != 1 {
		t.Fatalf("after restore: %d rows, %d tables; want the snapshot's 3 rows and 1 table", rows, tables)
	}
	t.Run("mutant", func(t *testing.T) {
		mutant.Use(t, mutant.FSMRestoreKeepsOld)
		if rows, tables := rowsAfterRestore(t); rows == 3 && tables == 1 {
			t.Fatalf("%s: the restore replaced the database", mutant.FSMRestoreKeepsOld)
		}
	})
}
