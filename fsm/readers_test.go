package fsm_test

import (
	"errors"
	"fmt"
	"strings"
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

// queryArgs runs sql with args on a read connection and returns its rows.
func queryArgs(t *testing.T, d *fsm.DB, sql string, args ...any) [][]any {
	t.Helper()
	cur, err := d.OpenCursor("", sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer d.CloseCursor(cur)
	var rows [][]any
	for {
		more, err := cur.Step()
		if err != nil {
			t.Fatal(err)
		}
		if !more {
			return rows
		}
		row := make([]any, cur.ColumnCount())
		for i := range row {
			row[i] = cur.Column(i)
		}
		rows = append(rows, row)
	}
}

// TestQueryStatementsKept: a query's statement is compiled once per read
// connection and kept for the next query of the same SQL, which binds its
// own parameters (none left over from the last one), reads the schema as it
// is now, and cannot be stepped through the closed query's handle; a
// connection keeps at most 16 statements.
func TestQueryStatementsKept(t *testing.T) {
	s := newSolo(t, fsm.ModeFrames)
	s.exec("", "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
	s.exec("", "INSERT INTO t VALUES (1, 'one'), (2, 'two')")
	base := s.db.QueryCompiles()
	const q = "SELECT v FROM t WHERE k = ?"
	if rows := queryArgs(t, s.db, q, int64(1)); fmt.Sprint(rows) != "[[one]]" {
		t.Fatalf("first query: %v", rows)
	}
	if rows := queryArgs(t, s.db, q, int64(2)); fmt.Sprint(rows) != "[[two]]" {
		t.Fatalf("second query: %v", rows)
	}
	if got := s.db.QueryCompiles() - base; got != 1 {
		t.Fatalf("%d compiles for two queries of one SQL, want 1", got)
	}
	// A parameter the next query does not bind is NULL, not the last one's.
	const n = "SELECT ?1 IS NULL"
	if rows := queryArgs(t, s.db, n, int64(5)); fmt.Sprint(rows) != "[[0]]" {
		t.Fatalf("bound: %v", rows)
	}
	if rows := queryArgs(t, s.db, n); fmt.Sprint(rows) != "[[1]]" {
		t.Fatalf("unbound after a bound one: %v, want [[1]] (NULL)", rows)
	}
	// The closed query's handle steps nothing.
	cur, err := s.db.OpenCursor("", q, int64(1))
	if err != nil {
		t.Fatal(err)
	}
	s.db.CloseCursor(cur)
	if more, err := cur.Step(); err == nil || more {
		t.Fatalf("step after close: %v %v, want an error", more, err)
	}
	if rows := queryArgs(t, s.db, q, int64(1)); fmt.Sprint(rows) != "[[one]]" {
		t.Fatalf("query after a stale step: %v", rows)
	}
	// A kept statement reads the schema of now.
	const all = "SELECT * FROM t WHERE k = 1"
	if rows := queryArgs(t, s.db, all); fmt.Sprint(rows) != "[[1 one]]" {
		t.Fatalf("before ALTER: %v", rows)
	}
	s.exec("", "ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 7")
	if rows := queryArgs(t, s.db, all); fmt.Sprint(rows) != "[[1 one 7]]" {
		t.Fatalf("after ALTER: %v", rows)
	}
	// Bounded: 17 other statements push the first one out.
	before := s.db.QueryCompiles()
	for i := 0; i < 17; i++ {
		queryArgs(t, s.db, fmt.Sprintf("SELECT %d", i))
	}
	queryArgs(t, s.db, q, int64(1))
	if got := s.db.QueryCompiles() - before; got != 18 {
		t.Fatalf("%d compiles, want 18 (the first statement was pushed out)", got)
	}
}

// TestLargeQueryStatementsNotKept: a statement over 16 KiB (here its SQL
// alone) is finalized when its query closes, so each query of it compiles
// again; the statements kept are finalized when the databases close (DB.Close
// reports a connection closed with statements left).
func TestLargeQueryStatementsNotKept(t *testing.T) {
	s := newSolo(t, fsm.ModeFrames)
	s.exec("", "CREATE TABLE t (k INTEGER PRIMARY KEY)")
	s.exec("", "INSERT INTO t VALUES (1), (2)")
	var sql strings.Builder
	sql.WriteString("SELECT k FROM t WHERE k IN (0")
	for i := 1; sql.Len() < 70_000; i++ {
		fmt.Fprintf(&sql, ",%d", i+2)
	}
	sql.WriteString(") OR k = 2")
	before := s.db.QueryCompiles()
	for i := 0; i < 3; i++ {
		if rows := queryArgs(t, s.db, sql.String()); fmt.Sprint(rows) != "[[2]]" {
			t.Fatalf("large query: %v", rows)
		}
	}
	if got := s.db.QueryCompiles() - before; got != 3 {
		t.Fatalf("%d compiles of three queries of a 70 KB statement, want 3 (none kept)", got)
	}
	for i := 0; i < 3; i++ {
		queryArgs(t, s.db, fmt.Sprintf("SELECT k FROM t WHERE k = %d", i))
	}
	if err := s.db.Close(); err != nil {
		t.Fatalf("closing with kept statements: %v", err)
	}
}

// TestReadConnectionsWriteNothing: a query SQLite calls read-only that
// still tries to write (PRAGMA optimize runs ANALYZE) fails on the read
// connection without taking the write lock: the next write succeeds. A
// client query cannot turn the read connection's query_only off.
func TestReadConnectionsWriteNothing(t *testing.T) {
	s := newSolo(t, fsm.ModeFrames)
	s.exec("", "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
	s.exec("", "CREATE INDEX tv ON t(v)")
	for i := 0; i < 20; i++ {
		s.exec("", fmt.Sprintf("INSERT INTO t (v) VALUES ('%d')", i))
	}
	if _, err := queryDB(t, s.db, "", "PRAGMA optimize(0x10002)"); err == nil || !strings.Contains(err.Error(), "readonly") {
		t.Fatalf("PRAGMA optimize as a query: %v, want a read-only error", err)
	}
	if _, errs := s.batch(&fsm.BatchItem{SQL: "INSERT INTO t (v) VALUES ('x')"}); errs[0] != nil {
		t.Fatalf("the write after it: %v", errs[0])
	}
	if _, err := queryDB(t, s.db, "", "PRAGMA query_only=0"); err == nil {
		t.Fatal("a query turned query_only off")
	}
	if rows, err := queryDB(t, s.db, "", "PRAGMA query_only"); err != nil || fmt.Sprint(rows) != "[[1]]" {
		t.Fatalf("query_only on the read connection: %v %v", rows, err)
	}
}
