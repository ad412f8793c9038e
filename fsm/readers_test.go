package fsm_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/vfs"
)

// TestQueryDoesNotJoinAnotherQuerysSnapshot: a query started while another
// one is stepping (a long result streamed over several loop events) sees
// every write applied before it started. On one shared read connection it
// would read the other query's older snapshot.
func TestQueryDoesNotJoinAnotherQuerysSnapshot(t *testing.T) {
	s := newSolo(t, fsm.ModeFrames)
	s.exec("", "CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER)")
	for i := 1; i <= 10; i++ {
		s.exec("", fmt.Sprintf("INSERT INTO t VALUES (%d, 0)", i))
	}
	long, err := s.db.OpenCursor("", "SELECT k FROM t ORDER BY k")
	if err != nil {
		t.Fatal(err)
	}
	if more, err := long.Step(); err != nil || !more {
		t.Fatalf("first step: %v %v", more, err)
	}
	s.exec("", "UPDATE t SET v = 1 WHERE k = 5")
	rows, err := queryDB(t, s.db, "", "SELECT v FROM t WHERE k = 5")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0][0] != int64(1) {
		t.Fatalf("a query after the update read %v, want [[1]]: it joined the streaming query's snapshot", rows)
	}
	// The streaming query keeps its own snapshot.
	n := 1
	for {
		more, err := long.Step()
		if err != nil {
			t.Fatal(err)
		}
		if !more {
			break
		}
		n++
	}
	s.db.CloseCursor(long)
	if n != 10 {
		t.Fatalf("streaming query read %d rows, want 10", n)
	}
}

func TestQueriesBoundedByReadConnections(t *testing.T) {
	s := newSolo(t, fsm.ModeFrames)
	s.exec("", "CREATE TABLE t (k INTEGER PRIMARY KEY)")
	var open []*vfs.Stmt
	for i := 0; i < fsm.MaxReadConnections; i++ {
		c, err := s.db.OpenCursor("", "SELECT k FROM t")
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		open = append(open, c)
	}
	if _, err := s.db.OpenCursor("", "SELECT k FROM t"); !errors.Is(err, fsm.ErrTooManyQueries) {
		t.Fatalf("query past the limit: %v, want ErrTooManyQueries", err)
	}
	s.db.CloseCursor(open[0])
	c, err := s.db.OpenCursor("", "SELECT k FROM t")
	if err != nil {
		t.Fatalf("query after one closed: %v", err)
	}
	s.db.CloseCursor(c)
	for _, c := range open[1:] {
		s.db.CloseCursor(c)
	}
}

// TestPrepareSeesSchemaWhileQueryStreams: PREPARE's check compiles against
// the latest schema even while a query steps on the first read connection.
func TestPrepareSeesSchemaWhileQueryStreams(t *testing.T) {
	s := newSolo(t, fsm.ModeFrames)
	s.exec("", "CREATE TABLE t (k INTEGER PRIMARY KEY)")
	s.exec("", "INSERT INTO t VALUES (1), (2)")
	long, err := s.db.OpenCursor("", "SELECT k FROM t")
	if err != nil {
		t.Fatal(err)
	}
	defer s.db.CloseCursor(long)
	if more, err := long.Step(); err != nil || !more {
		t.Fatalf("first step: %v %v", more, err)
	}
	s.exec("", "CREATE TABLE u (x)")
	if n, _, err := s.db.PrepareCheck("", "SELECT x FROM u WHERE x = ?", false); err != nil || n != 1 {
		t.Fatalf("PrepareCheck of a table created after the streaming query began: %d params, %v", n, err)
	}
}
