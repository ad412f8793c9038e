package driver_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/driver"
	"github.com/dqlite-go/dqlite/internal/testcluster"
	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wire"
)

func openDB(t testing.TB, addrs []string) *sql.DB {
	db, _ := openDBConnector(t, addrs)
	return db
}

func openDBConnector(t testing.TB, addrs []string) (*sql.DB, *driver.Connector) {
	cn := driver.NewConnector(addrs, "test")
	db := sql.OpenDB(cn)
	t.Cleanup(func() { db.Close() })
	return db, cn
}

// TestBasics runs the database/sql surface against a 3-node cluster.
func TestBasics(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db := openDB(t, c.Addrs)
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, at DATETIME, ok BOOLEAN)"); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	res, err := db.ExecContext(ctx, "INSERT INTO t (name, at, ok) VALUES (?, ?, ?)", "a", at, true)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := res.LastInsertId(); id != 1 {
		t.Fatalf("last insert id %d", id)
	}
	var name string
	var gotAt time.Time
	var ok bool
	if err := db.QueryRowContext(ctx, "SELECT name, at, ok FROM t WHERE id = ?", 1).Scan(&name, &gotAt, &ok); err != nil {
		t.Fatal(err)
	}
	if name != "a" || !gotAt.Equal(at) || !ok {
		t.Fatalf("row: %q %v %v", name, gotAt, ok)
	}
	// A transaction in one request is atomic.
	if _, err := db.ExecContext(ctx, "BEGIN; INSERT INTO t (name) VALUES ('b'); INSERT INTO t (name) VALUES ('c'); COMMIT"); err != nil {
		t.Fatal(err)
	}
	// SQL errors come back with SQLite's message.
	if _, err := db.ExecContext(ctx, "INSERT INTO nosuch VALUES (1)"); err == nil || !contains(err.Error(), "no such table") {
		t.Fatalf("bad SQL: %v", err)
	}
	// Prepared statements.
	st, err := db.PrepareContext(ctx, "SELECT count(*) FROM t WHERE name >= ?")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var n int
	if err := st.QueryRowContext(ctx, "b").Scan(&n); err != nil || n != 2 {
		t.Fatalf("prepared query: %d %v", n, err)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestKillLeader kills the leader during a workload of unique-id inserts
// and reads through database/sql: the driver reaches the new leader by
// itself, no read fails, every id is present at most once, and every
// acknowledged id exactly once.
func TestKillLeader(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	db, cn := openDBConnector(t, c.Addrs)
	db.SetMaxOpenConns(16)
	// No primary key: a write applied twice would show as a duplicate.
	if _, err := db.ExecContext(ctx, "CREATE TABLE ids (id INTEGER NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	const workers, perWorker = 8, 150
	var mu sync.Mutex
	acked := map[int64]bool{}
	unknown := 0
	var readErrs []error
	progress := make(chan struct{}, workers*perWorker)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				id := int64(w*perWorker + i)
				_, err := db.ExecContext(ctx, "INSERT INTO ids VALUES (?)", id)
				mu.Lock()
				switch {
				case err == nil:
					acked[id] = true
				case errors.Is(err, driver.ErrUnknownOutcome):
					unknown++
				default:
					t.Errorf("insert %d: %v", id, err)
				}
				mu.Unlock()
				var n int
				if err := db.QueryRowContext(ctx, "SELECT count(*) FROM ids WHERE id = ?", id).Scan(&n); err != nil {
					mu.Lock()
					readErrs = append(readErrs, err)
					mu.Unlock()
				}
				progress <- struct{}{}
			}
		}()
	}
	// Kill the leader once a third of the work is done.
	for i := 0; i < workers*perWorker/3; i++ {
		<-progress
	}
	li := c.Leader(t, ctx)
	c.Nodes[li].Close()
	c.Nodes[li] = nil
	t.Logf("killed node %d (the leader)", li+1)
	wg.Wait()
	if len(readErrs) > 0 {
		t.Fatalf("%d reads failed, first: %v", len(readErrs), readErrs[0])
	}
	rows, err := db.QueryContext(ctx, "SELECT id, count(*) FROM ids GROUP BY id")
	if err != nil {
		t.Fatal(err)
	}
	present := map[int64]bool{}
	for rows.Next() {
		var id, n int64
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("id %d present %d times", id, n)
		}
		present[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for id := range acked {
		if !present[id] {
			t.Errorf("acknowledged id %d is missing", id)
		}
	}
	st := cn.Stats()
	t.Logf("%d acknowledged, %d unknown outcome, %d present; driver: %d reconnects, %d write retries",
		len(acked), unknown, len(present), st.Reconnects, st.WriteRetries)
	if st.Reconnects == 0 {
		t.Fatal("the driver never reconnected: the leader's death went unnoticed")
	}
	if len(acked) < workers*perWorker/2 {
		t.Fatalf("only %d of %d writes acknowledged", len(acked), workers*perWorker)
	}
}

// TestTransactions runs database/sql transactions spanning requests: reads
// inside see the transaction's writes, other connections see nothing until
// Commit, Rollback leaves nothing, a statement's error keeps the
// transaction usable, and a prepared statement inside sees a table the
// transaction created.
func TestTransactions(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db := openDB(t, c.Addrs)
	if _, err := db.ExecContext(ctx, "CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL CHECK (bal >= 0))"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO acct VALUES (1, 100), (2, 0)"); err != nil {
		t.Fatal(err)
	}
	balances := func(q interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}) (a, b int) {
		t.Helper()
		if err := q.QueryRowContext(ctx, "SELECT (SELECT bal FROM acct WHERE id = 1), (SELECT bal FROM acct WHERE id = 2)").Scan(&a, &b); err != nil {
			t.Fatal(err)
		}
		return a, b
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Read, then write from what was read: a transfer of 30.
	var bal int
	if err := tx.QueryRowContext(ctx, "SELECT bal FROM acct WHERE id = 1").Scan(&bal); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE acct SET bal = ? WHERE id = 1", bal-30); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE acct SET bal = bal + 30 WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	// A failing statement (CHECK) is undone alone.
	if _, err := tx.ExecContext(ctx, "UPDATE acct SET bal = bal - 1000 WHERE id = 1"); err == nil || !contains(err.Error(), "CHECK") {
		t.Fatalf("overdraft: %v", err)
	}
	if a, b := balances(tx); a != 70 || b != 30 {
		t.Fatalf("inside the transaction: %d %d", a, b)
	}
	if a, b := balances(db); a != 100 || b != 0 {
		t.Fatalf("outside the transaction before commit: %d %d", a, b)
	}
	// A table created in the transaction, used through a prepared
	// statement.
	if _, err := tx.ExecContext(ctx, "CREATE TABLE audit (note TEXT)"); err != nil {
		t.Fatal(err)
	}
	st, err := tx.PrepareContext(ctx, "INSERT INTO audit VALUES (?)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.ExecContext(ctx, "moved 30"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if a, b := balances(db); a != 70 || b != 30 {
		t.Fatalf("after commit: %d %d", a, b)
	}
	// BEGIN alone through Exec would open a transaction on a pooled
	// connection database/sql does not know about.
	for _, q := range []string{"BEGIN", "begin immediate;", "COMMIT", "ROLLBACK"} {
		if _, err := db.ExecContext(ctx, q); !errors.Is(err, driver.ErrUseBeginTx) {
			t.Fatalf("%s through Exec: %v", q, err)
		}
	}
	// A statement while the transaction's earlier rows are still open
	// (database/sql allows it on a Tx): the rows are read to the end first.
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "CREATE TABLE many (n INTEGER)"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 3000) "+
		"INSERT INTO many SELECT n FROM s"); err != nil {
		t.Fatal(err)
	}
	rs, err := tx.QueryContext(ctx, "SELECT n FROM many ORDER BY n")
	if err != nil {
		t.Fatal(err)
	}
	if !rs.Next() {
		t.Fatal("no first row")
	}
	if _, err := tx.ExecContext(ctx, "UPDATE acct SET bal = bal - 1 WHERE id = 1"); err != nil {
		t.Fatalf("statement while rows are open: %v", err)
	}
	seen := 1
	for rs.Next() {
		seen++
	}
	if err := rs.Err(); err != nil || seen != 3000 {
		t.Fatalf("rows read around the statement: %d %v", seen, err)
	}
	// A query that fails part way while its rows are buffered: the rows
	// end with its error (the server drops the rows of the batch it was
	// filling), and the next statement is not affected.
	rs, err = tx.QueryContext(ctx, "SELECT CASE WHEN n = 2900 THEN json(n || '{') ELSE n END FROM many")
	if err != nil {
		t.Fatal(err)
	}
	if !rs.Next() {
		t.Fatal("no first row")
	}
	if _, err := tx.ExecContext(ctx, "UPDATE acct SET bal = bal WHERE id = 1"); err != nil {
		t.Fatalf("statement after a failing query's rows: %v", err)
	}
	seen = 1
	for rs.Next() {
		seen++
	}
	if err := rs.Err(); err == nil || !contains(err.Error(), "malformed JSON") || seen < 2 || seen >= 2900 {
		t.Fatalf("failing query: %d rows, then %v", seen, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if a, _ := balances(db); a != 69 {
		t.Fatalf("balance after the nested statement: %d", a)
	}
	// Rollback.
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE acct SET bal = 0"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if a, b := balances(db); a != 69 || b != 30 {
		t.Fatalf("after rollback: %d %d", a, b)
	}
	var notes int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM audit").Scan(&notes); err != nil || notes != 1 {
		t.Fatalf("audit rows: %d %v", notes, err)
	}
}

// TestTransactionLeaderChange: the leader hands over leadership in the
// middle of a transaction. The next statement fails with ErrTxAborted
// (it is not retried alone on the new leader), Rollback succeeds, the
// transaction's writes are nowhere, and the connection works again for
// the next transaction, on the new leader.
func TestTransactionLeaderChange(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db := openDB(t, c.Addrs)
	db.SetMaxOpenConns(1) // the transaction and the checks share one connection
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	li := c.Leader(t, ctx)
	if err := c.Nodes[li].Transfer(ctx, raft.None); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (2)"); !errors.Is(err, driver.ErrTxAborted) {
		t.Fatalf("statement after the leader changed: %v", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (3)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var sum, n int
	if err := db.QueryRowContext(ctx, "SELECT count(*), sum(x) FROM t").Scan(&n, &sum); err != nil || n != 1 || sum != 3 {
		t.Fatalf("rows: %d sum %d (%v)", n, sum, err)
	}
}

// TestTransactionClientGone: a client that opens a transaction and
// disconnects does not hold the writer slot: its transaction is rolled
// back when the connection closes (well before the server's idle limit,
// which the next write's deadline is shorter than).
func TestTransactionClientGone(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db := openDB(t, c.Addrs)
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	li := c.Leader(t, ctx)
	w, err := wire.Dial(ctx, c.Addrs[li], nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := w.Open(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"BEGIN", "INSERT INTO t VALUES (1)"} {
		if _, err := w.Exec(ctx, &wire.Request{Type: wire.ReqExecSQL, Schema: 1, DB: id, SQL: q}); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	w.Close()
	wctx, wcancel := context.WithTimeout(ctx, node.DefaultTxIdleTimeout/2)
	defer wcancel()
	if _, err := db.ExecContext(wctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatalf("write after the client left: %v", err)
	}
	var sum int
	if err := db.QueryRowContext(ctx, "SELECT sum(x) FROM t").Scan(&sum); err != nil || sum != 2 {
		t.Fatalf("sum %d (%v): the abandoned transaction's row must not be there", sum, err)
	}
}

// TestColumnsAfterAlterTable: a query after ALTER TABLE names the columns
// the table has now, on a read connection whose schema (and kept
// statement) predates the change.
func TestColumnsAfterAlterTable(t *testing.T) {
	c := testcluster.Start(t, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := openDB(t, c.Addrs)
	db.SetMaxOpenConns(1)
	for _, q := range []string{"CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO t VALUES (1, 'one')"} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	read := func() ([]string, []any) {
		t.Helper()
		rows, err := db.QueryContext(ctx, "SELECT * FROM t")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		cols, err := rows.Columns()
		if err != nil {
			t.Fatal(err)
		}
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if !rows.Next() {
			t.Fatalf("no row: %v", rows.Err())
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		if rows.Next() || rows.Err() != nil {
			t.Fatalf("a second row, or %v", rows.Err())
		}
		return cols, vals
	}
	if cols, vals := read(); fmt.Sprint(cols, vals) != "[k v] [1 one]" {
		t.Fatalf("before: %v %v", cols, vals)
	}
	for _, q := range []string{"ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 7", "ALTER TABLE t RENAME COLUMN v TO vv"} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if cols, vals := read(); fmt.Sprint(cols, vals) != "[k vv w] [1 one 7]" {
		t.Fatalf("after ALTER TABLE: columns %v, values %v; want [k vv w] [1 one 7]", cols, vals)
	}
}
