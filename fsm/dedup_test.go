package fsm_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/raft"
)

// leaderDB executes batches and applies them as a leader would.
type leaderDB struct {
	t     *testing.T
	db    *fsm.DB
	index uint64
}

func newLeaderDB(t *testing.T) *leaderDB {
	db, err := openMode(fmt.Sprintf("dedup-%d", vfsSeq.Add(1)), 1, fsm.ModeFrames)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &leaderDB{t: t, db: db}
}

// batch executes items as one batch and commits it.
func (l *leaderDB) batch(items ...*fsm.BatchItem) ([]any, []error) {
	in := make([]any, len(items))
	for i := range items {
		in[i] = items[i]
	}
	cmd, results, errs := l.db.ExecuteBatch(in)
	if cmd != nil {
		l.index++
		l.db.Proposed(l.index, 1)
		if _, err := l.db.Apply(raft.Entry{Index: l.index, Term: 1, Data: cmd}); err != nil {
			l.t.Fatal(err)
		}
	}
	return results, errs
}

func (l *leaderDB) count(sql string) int64 {
	rows, err := l.db.Conn().Query(sql)
	if err != nil {
		l.t.Fatal(err)
	}
	return rows[0][0].(int64)
}

// TestDedup checks a retried write (same client and sequence number) is
// applied once and returns the first result, also within one batch.
func TestDedup(t *testing.T) {
	l := newLeaderDB(t)
	l.batch(&fsm.BatchItem{SQL: "CREATE TABLE t(x)"})
	ins := func(seq uint64) *fsm.BatchItem {
		return &fsm.BatchItem{SQL: "INSERT INTO t VALUES (?)", Params: []fsm.Value{{Type: fsm.TypeInteger, Int: int64(seq)}}, Client: 42, Seq: seq}
	}
	res, errs := l.batch(ins(1))
	if errs[0] != nil || res[0].(fsm.Result).LastInsertID != 1 {
		t.Fatalf("first write: %v %v", res, errs)
	}
	res, errs = l.batch(ins(1)) // the retry
	if errs[0] != nil || res[0].(fsm.Result) != (fsm.Result{LastInsertID: 1, RowsAffected: 1}) {
		t.Fatalf("retry: %v %v", res, errs)
	}
	res, errs = l.batch(ins(2), ins(2), ins(3))
	if errs[0] != nil || errs[1] != nil || errs[2] != nil || res[1].(fsm.Result) != res[0].(fsm.Result) {
		t.Fatalf("batch with a retry: %v %v", res, errs)
	}
	if n := l.count("SELECT count(*) FROM t"); n != 3 {
		t.Fatalf("%d rows, want 3 (each sequence number once)", n)
	}
	if _, errs = l.batch(ins(1)); !errors.Is(errs[0], fsm.ErrStaleSequence) {
		t.Fatalf("stale sequence: %v", errs[0])
	}
	// Another client's sequence numbers are its own.
	other := ins(1)
	other.Client = 7
	if _, errs = l.batch(other); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if n := l.count("SELECT count(*) FROM t"); n != 4 {
		t.Fatalf("%d rows, want 4", n)
	}
}

// TestTransactionStatements checks BEGIN ... COMMIT within one request is
// atomic, and a transaction left open or a ROLLBACK is refused with no
// effect.
func TestTransactionStatements(t *testing.T) {
	l := newLeaderDB(t)
	l.batch(&fsm.BatchItem{SQL: "CREATE TABLE t(x)"})
	_, errs := l.batch(&fsm.BatchItem{SQL: "BEGIN; INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); COMMIT"})
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	_, errs = l.batch(
		&fsm.BatchItem{SQL: "BEGIN; INSERT INTO t VALUES (3)"},
		&fsm.BatchItem{SQL: "INSERT INTO t VALUES (4); COMMIT"},
		&fsm.BatchItem{SQL: "begin immediate; INSERT INTO t VALUES (5); ROLLBACK"},
		&fsm.BatchItem{SQL: "INSERT INTO t VALUES (6); INSERT INTO nosuch VALUES (1)"},
	)
	if !errors.Is(errs[0], fsm.ErrOpenTransaction) || !errors.Is(errs[1], fsm.ErrNoTransaction) || errs[2] == nil || errs[3] == nil {
		t.Fatalf("errors: %v", errs)
	}
	if n := l.count("SELECT count(*) FROM t"); n != 2 {
		t.Fatalf("%d rows, want 2 (failed requests leave nothing)", n)
	}
	if _, errs = l.batch(&fsm.BatchItem{SQL: "SAVEPOINT a; INSERT INTO t VALUES (7); ROLLBACK TO a; RELEASE a"}); errs[0] != nil {
		t.Fatalf("user savepoints: %v", errs[0])
	}
	// A batch of one runs without a savepoint: its failures must leave
	// nothing either, and the next write must work.
	for _, sql := range []string{"INSERT INTO t VALUES (8); INSERT INTO nosuch VALUES (1)",
		"BEGIN; INSERT INTO t VALUES (9)", "INSERT INTO t VALUES (10); COMMIT", "INSERT INTO t VALUES (11); ROLLBACK"} {
		if _, errs = l.batch(&fsm.BatchItem{SQL: sql}); errs[0] == nil {
			t.Fatalf("%q alone: no error", sql)
		}
		if l.db.Pending() {
			t.Fatalf("%q alone: a write is left pending", sql)
		}
	}
	if _, errs = l.batch(&fsm.BatchItem{SQL: "INSERT INTO t VALUES (12)"}); errs[0] != nil {
		t.Fatalf("write after failed ones: %v", errs[0])
	}
	if n := l.count("SELECT count(*) FROM t"); n != 3 {
		t.Fatalf("%d rows, want 3 (failed requests of one leave nothing)", n)
	}
}

// TestResultIsTheRequests checks a request's result is its own on the
// shared connection: a DDL or read-only request reports no rows and no
// insert id, whatever an earlier request did.
func TestResultIsTheRequests(t *testing.T) {
	l := newLeaderDB(t)
	res, errs := l.batch(&fsm.BatchItem{SQL: "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)"})
	if errs[0] != nil || res[0].(fsm.Result) != (fsm.Result{LastInsertID: 2, RowsAffected: 2}) {
		t.Fatalf("insert: %v %v", res, errs)
	}
	res, errs = l.batch(&fsm.BatchItem{SQL: "CREATE TABLE u(y)"}, &fsm.BatchItem{SQL: "UPDATE t SET x = x + 1"},
		&fsm.BatchItem{SQL: "UPDATE t SET x = 0 WHERE x > 100"})
	want := []fsm.Result{{}, {RowsAffected: 2}, {}}
	for i := range want {
		if errs[i] != nil || res[i].(fsm.Result) != want[i] {
			t.Fatalf("request %d: %v %v, want %v", i, res[i], errs[i], want[i])
		}
	}
}
