package node

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wire"
)

// count returns SELECT count(*) FROM table on n (a linearizable read on the
// leader, or the node's applied state on a follower through Dump's hash).
func countRows(t *testing.T, ctx context.Context, n *Node, table string) int64 {
	t.Helper()
	rows, err := n.Query(ctx, "SELECT count(*) FROM "+table)
	if err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return rows[0][0].(int64)
}

// sameImages waits until every node has applied the leader's last index and
// checks that their images are equal.
func sameImages(t *testing.T, ctx context.Context, nodes []*Node, l *Node) {
	t.Helper()
	last := l.Applied()
	var want uint64
	for i, n := range nodes {
		if err := n.WaitFor(ctx, func() bool { return n.loop.Applied() >= last }); err != nil {
			t.Fatalf("node %d does not catch up: %v", n.cfg.ID, err)
		}
		h, err := n.ImageHash()
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			want = h
		} else if h != want {
			t.Fatalf("node %d image %x differs from node %d's %x", n.cfg.ID, h, nodes[0].cfg.ID, want)
		}
	}
}

// txWithRow creates table t (columns as given) on the leader of nodes and
// opens a transaction that inserted the row 1 into it.
func txWithRow(t *testing.T, nodes []*Node, columns string) (context.Context, *Node, *Tx) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t "+columns); err != nil {
		t.Fatal(err)
	}
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	return ctx, l, tx
}

// TestTxSpanningRequests: a transaction opened by a lone BEGIN spans
// requests. Its writes are visible to its own reads and to nobody else's
// until COMMIT; an autocommit writer arriving meanwhile waits for the
// writer slot and runs after the commit (it sees the committed rows); the
// commit replicates as one entry and every node ends with the same image.
// A statement's error leaves the transaction open (as in SQLite); ROLLBACK
// leaves no trace.
func TestTxSpanningRequests(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x INTEGER PRIMARY KEY); CREATE TABLE seen (n)"); err != nil {
		t.Fatal(err)
	}
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (?)", i); err != nil {
			t.Fatal(err)
		}
	}
	// A failing statement: its own changes are undone, the transaction
	// goes on.
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (1)"); err == nil {
		t.Fatal("duplicate key accepted")
	}
	if rows, err := tx.Query(ctx, "SELECT count(*), sum(x) FROM t"); err != nil || rows[0][0] != int64(5) || rows[0][1] != int64(15) {
		t.Fatalf("the transaction's own read: %v %v", rows, err)
	}
	if n := countRows(t, ctx, l, "t"); n != 0 {
		t.Fatalf("uncommitted rows visible outside the transaction: %d", n)
	}
	// A writer from elsewhere queues behind the transaction.
	writer := make(chan error, 1)
	go func() {
		_, err := l.Exec(ctx, "INSERT INTO seen SELECT count(*) FROM t")
		writer <- err
	}()
	if err := l.WaitFor(ctx, func() bool { return l.loop.QueuedWrites() == 1 }); err != nil {
		t.Fatalf("the writer never queued: %v", err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (6)"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-writer:
		t.Fatalf("a writer ran while the transaction held the writer slot: %v", err)
	default:
	}
	before := l.Applied()
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-writer; err != nil {
		t.Fatal(err)
	}
	if rows, err := l.Query(ctx, "SELECT n FROM seen"); err != nil || len(rows) != 1 || rows[0][0] != int64(6) {
		t.Fatalf("the queued writer saw %v (%v), want the 6 committed rows", rows, err)
	}
	// COMMIT and the queued write: two entries (the transaction's six
	// inserts are one).
	if got := l.Applied() - before; got != 2 {
		t.Fatalf("%d entries applied for the commit and the queued write, want 2", got)
	}
	if err := tx.Commit(ctx); !errors.Is(err, ErrTxDone) {
		t.Fatalf("second commit: %v", err)
	}
	// ROLLBACK leaves no trace.
	tx, err = l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (100); CREATE TABLE u (y)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, ctx, l, "t"); n != 6 {
		t.Fatalf("%d rows after rollback, want 6", n)
	}
	if _, err := l.Query(ctx, "SELECT * FROM u"); err == nil {
		t.Fatal("a rolled back table exists")
	}
	sameImages(t, ctx, nodes, l)
}

// TestTxAbortedOnLeadershipLoss: when the leader hands over leadership,
// its open transaction is rolled back; the client's next statement fails
// with ErrTxAborted (never run as an autocommit write), ROLLBACK succeeds,
// and no node ever shows the transaction's rows.
func TestTxAbortedOnLeadershipLoss(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, l, tx := txWithRow(t, nodes, "(x)")
	if err := l.Transfer(ctx, raft.None); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (2)"); !errors.Is(err, loop.ErrTxAborted) || !errors.Is(err, loop.ErrLeadershipLost) {
		t.Fatalf("statement after the leadership change: %v", err)
	}
	if _, err := tx.Query(ctx, "SELECT count(*) FROM t"); !errors.Is(err, loop.ErrTxAborted) {
		t.Fatalf("query after the leadership change: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatalf("rollback of the aborted transaction: %v", err)
	}
	nl := leaderOf(t, ctx, nodes)
	if _, err := nl.Exec(ctx, "INSERT INTO t VALUES (3)"); err != nil {
		t.Fatal(err)
	}
	if rows, err := nl.Query(ctx, "SELECT x FROM t"); err != nil || len(rows) != 1 || rows[0][0] != int64(3) {
		t.Fatalf("rows after the aborted transaction: %v %v", rows, err)
	}
	sameImages(t, ctx, nodes, nl)
}

// TestTxIdleTimeout: a transaction left idle past TxIdleTimeout is rolled
// back and frees the writer slot for the writers queued behind it; the
// transaction's client then gets ErrTxAborted, and COMMIT fails.
func TestTxIdleTimeout(t *testing.T) {
	nodes := startClusterWith(t, 3, func(c *Config) { c.TxIdleTimeout = 300 * time.Millisecond })
	ctx, l, tx := txWithRow(t, nodes, "(x)")
	// This write can only run once the idle transaction is rolled back.
	if _, err := l.Exec(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); !errors.Is(err, loop.ErrTxAborted) || !errors.Is(err, loop.ErrTxIdle) {
		t.Fatalf("commit of the idle transaction: %v", err)
	}
	if rows, err := l.Query(ctx, "SELECT x FROM t"); err != nil || len(rows) != 1 || rows[0][0] != int64(2) {
		t.Fatalf("rows: %v %v", rows, err)
	}
}

// TestTxQueuedWriterGetsBusy: a writer queued behind a transaction for
// longer than the request timeout fails with a busy error (it never ran:
// safe to send again), not with an unknown outcome.
func TestTxQueuedWriterGetsBusy(t *testing.T) {
	lc := loopConfigHook
	defer func() { loopConfigHook = lc }()
	loopConfigHook = func(c *loop.Config) { c.RequestTimeoutTicks = 4 }
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Exec(ctx, "INSERT INTO t VALUES (2)"); !errors.Is(err, loop.ErrBusy) {
		t.Fatalf("queued writer: %v", err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if rows, err := l.Query(ctx, "SELECT x FROM t"); err != nil || len(rows) != 1 || rows[0][0] != int64(1) {
		t.Fatalf("rows: %v %v", rows, err)
	}
}

// TestTxRolledBackBySQLite: a statement after which SQLite itself rolled
// the transaction back (INSERT OR ROLLBACK) fails with ErrTxAborted, and so
// do the session's next statements: they never run as autocommit writes.
// ROLLBACK then succeeds and nothing of the transaction exists.
func TestTxRolledBackBySQLite(t *testing.T) {
	nodes := startCluster(t, 1)
	ctx, l, tx := txWithRow(t, nodes, "(x INTEGER PRIMARY KEY)")
	if _, err := tx.Exec(ctx, "INSERT OR ROLLBACK INTO t VALUES (1)"); !errors.Is(err, loop.ErrTxAborted) {
		t.Fatalf("the statement that rolled back: %v", err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (2)"); !errors.Is(err, loop.ErrTxAborted) {
		t.Fatalf("the next statement: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if rows, err := l.Query(ctx, "SELECT x FROM t"); err != nil || len(rows) != 0 {
		t.Fatalf("rows: %v %v", rows, err)
	}
	if _, err := l.Exec(ctx, "INSERT INTO t VALUES (3)"); err != nil {
		t.Fatal(err)
	}
}

// TestTxCommitAndBeginRefused: "COMMIT; BEGIN" in one request would
// capture a commit it could not propose while the next transaction holds
// the connection, and "COMMIT; PRAGMA foreign_keys=OFF" would turn foreign
// keys off on the write connection every client shares: statements after
// the end of the transaction in the same request are refused, the whole
// request with them, and the transaction rolled back.
func TestTxCommitAndBeginRefused(t *testing.T) {
	nodes := startCluster(t, 1)
	ctx, l, tx := txWithRow(t, nodes, "(x INTEGER PRIMARY KEY)")
	if _, err := tx.Exec(ctx, "COMMIT; BEGIN"); !errors.Is(err, loop.ErrTxAborted) || !errors.Is(err, fsm.ErrStatementAfterTxEnd) {
		t.Fatalf("COMMIT; BEGIN: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Exec(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if rows, err := l.Query(ctx, "SELECT x FROM t"); err != nil || len(rows) != 1 || rows[0][0] != int64(2) {
		t.Fatalf("rows: %v %v", rows, err)
	}
	if _, err := l.Exec(ctx, "CREATE TABLE child (p INTEGER REFERENCES t (x))"); err != nil {
		t.Fatal(err)
	}
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Refused by the guard (foreign_keys outside a transaction) before the
	// rule on statements after the end applies; either refusal will do.
	if _, err := tx.Exec(ctx, "COMMIT; PRAGMA foreign_keys=OFF"); !errors.Is(err, loop.ErrTxAborted) {
		t.Fatalf("COMMIT; PRAGMA foreign_keys=OFF: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Exec(ctx, "INSERT INTO child VALUES (42)"); err == nil {
		t.Fatal("a write violating a foreign key was accepted")
	}
}

// TestTxAbandonedBeginNeverOpens: a Begin whose client gives up while it
// waits for the writer slot is dropped from the queue; it never opens a
// transaction nobody would end, and leaves nothing behind.
func TestTxAbandonedBeginNeverOpens(t *testing.T) {
	nodes := startCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := l.Begin(short); done <- err }()
	if err := l.WaitFor(ctx, func() bool { return l.loop.QueuedWrites() == 1 }); err != nil {
		t.Fatal(err)
	}
	cancelShort()
	if err := <-done; err == nil {
		t.Fatal("the abandoned Begin succeeded")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	var held bool
	var queued, aborted int
	l.do(func() { held, aborted = l.loop.TxHeld(); queued = l.loop.QueuedWrites() })
	if held || queued != 0 || aborted != 0 {
		t.Fatalf("after the abandoned Begin: transaction held %v, %d queued, %d sessions remembered", held, queued, aborted)
	}
}

// TestTxCursorAbortedReportsWhy: a query of a transaction is still
// streaming when the leader hands over leadership; the transaction is
// rolled back (its cursor finalized) and the query's next batch reports
// ErrTxAborted, not a finalized statement.
func TestTxCursorAbortedReportsWhy(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x); WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 3000) "+
		"INSERT INTO t SELECT n FROM s"); err != nil {
		t.Fatal(err)
	}
	const session = 77
	defer l.endSession(session)
	if _, err := l.execIn(ctx, session, &fsm.BatchItem{SQL: "BEGIN"}); err != nil {
		t.Fatal(err)
	}
	cur, err := backend{l}.Query(ctx, &wire.Write{Session: session, SQL: "SELECT x FROM t"})
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if done, err := cur.Next(func([]wire.Value) bool { return false }); done || err != nil {
		t.Fatalf("first row: done %v, %v", done, err)
	}
	if err := l.Transfer(ctx, raft.None); err != nil {
		t.Fatal(err)
	}
	for {
		done, err := cur.Next(func([]wire.Value) bool { return true })
		if err != nil {
			if !errors.Is(err, loop.ErrTxAborted) {
				t.Fatalf("query after the rollback: %v", err)
			}
			return
		}
		if done {
			t.Fatal("the query of a rolled back transaction ran to its end")
		}
	}
}

// TestAbandonedReadsCloseTheirCursors: reads whose client gave up (here
// with a context already canceled, so the reply and the cancellation race)
// leave no cursor open; an open cursor would stop every checkpoint.
func TestAbandonedReadsCloseTheirCursors(t *testing.T) {
	nodes := startCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	gone, stop := context.WithCancel(ctx)
	stop()
	for i := 0; i < 50; i++ {
		l.Query(gone, "SELECT x FROM t")
		backend{l}.Query(gone, &wire.Write{SQL: "SELECT x FROM t"})
	}
	// A request after them: the loop has handled every cancellation.
	if _, err := l.Query(ctx, "SELECT x FROM t"); err != nil {
		t.Fatal(err)
	}
	var open int
	l.do(func() { open = l.db.OpenCursors() })
	if open != 0 {
		t.Fatalf("%d cursors left open by abandoned reads", open)
	}
}
