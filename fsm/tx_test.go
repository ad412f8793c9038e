package fsm_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/sqltext"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
)

// execTx submits a request of session's transaction spanning requests.
func (c *cluster) execTx(n *node, session uint64, sql string) uint64 {
	c.nextID++
	id := c.nextID
	db := n.db
	c.take(n, n.l.SubmitWrite(loop.WriteRequest{ID: id, Tx: session,
		ExecuteTx: func() ([]byte, any, bool, error) { return db.ExecuteTx("", sql, nil, false) },
		Proposed:  db.Proposed,
		Abort:     db.Abort,
		EndsTx:    sqltext.LoneTxControl(sql) == "COMMIT" || sqltext.LoneTxControl(sql) == "ROLLBACK",
		Rollback:  sqltext.LoneTxControl(sql) == "ROLLBACK",
	}))
	return id
}

func (c *cluster) txReply(n *node, session uint64, sql string) loop.Reply {
	c.t.Helper()
	id := c.execTx(n, session, sql)
	c.run()
	r, ok := c.replies[id]
	if !ok {
		c.t.Fatalf("%s: no reply", sql)
	}
	return r
}

func (c *cluster) mustTx(n *node, session uint64, sql string) {
	c.t.Helper()
	if r := c.txReply(n, session, sql); r.Err != nil {
		c.t.Fatalf("%s: %v", sql, r.Err)
	}
}

// bigInsert writes about 6 MB in one statement: more than SQLite's page
// cache (2 MB by default), so the transaction spills pages to the WAL
// before it commits.
const bigInsert = "WITH RECURSIVE s(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM s WHERE k < 6000) " +
	"INSERT INTO big SELECT k, randomblob(1000) FROM s"

// TestTxSpanningRequestsSpillRollbackCommit runs transactions spanning
// requests that spill to the WAL before committing: a rolled back one
// leaves no trace on any node, and a committed one replicates as one entry
// to identical replicas, invisible to other connections until applied.
func TestTxSpanningRequestsSpillRollbackCommit(t *testing.T) {
	c := newCluster(t, 3, fsm.ModeFrames, 0)
	l := c.elect()
	c.mustExec(l, "CREATE TABLE big (k INTEGER PRIMARY KEY, v BLOB)")
	c.tick(2)
	// Rolled back.
	c.mustTx(l, 1, "BEGIN")
	c.mustTx(l, 1, bigInsert)
	if rows := query(t, l, "SELECT count(*) FROM big"); rows[0][0] != int64(6000) {
		t.Fatalf("the transaction's own connection sees %v rows", rows)
	}
	c.mustTx(l, 1, "ROLLBACK")
	// Committed: the leader's second connection sees nothing before.
	c.mustTx(l, 2, "BEGIN")
	c.mustTx(l, 2, bigInsert)
	c.mustTx(l, 2, "UPDATE big SET v = zeroblob(10) WHERE k % 2 = 0")
	other, err := l.v.Open("db", 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if rows, _ := other.Query("SELECT count(*) FROM big"); rows[0][0] != int64(0) {
		t.Fatalf("open transaction visible to another connection: %v", rows)
	}
	before := l.l.Applied()
	c.mustTx(l, 2, "COMMIT")
	if got := l.l.Applied() - before; got != 1 {
		t.Fatalf("the commit took %d entries, want 1", got)
	}
	c.mustExec(l, "INSERT INTO big VALUES (7000, x'00')")
	c.tick(3)
	want := query(t, l, "SELECT count(*), sum(length(v)), sum(k) FROM big")
	if want[0][0] != int64(6001) {
		t.Fatalf("leader: %v", want)
	}
	for _, n := range c.nodes {
		if got := query(t, n, "SELECT count(*), sum(length(v)), sum(k) FROM big"); !reflect.DeepEqual(got, want) {
			t.Fatalf("node %d: %v, leader %v", n.id, got, want)
		}
		if rows := query(t, n, "PRAGMA integrity_check"); rows[0][0] != "ok" {
			t.Fatalf("node %d: %v", n.id, rows)
		}
	}
}

// TestTxSpanningRequestsAbortedByPartition: a leader cut off from the
// majority with an open transaction loses leadership; the transaction is
// rolled back (its next request fails with ErrTxAborted, ROLLBACK then
// succeeds) and no node ever shows its writes, also after the partition
// heals.
func TestTxSpanningRequestsAbortedByPartition(t *testing.T) {
	c := newCluster(t, 3, fsm.ModeFrames, 0)
	l := c.elect()
	c.mustExec(l, "CREATE TABLE t (x)")
	c.tick(2)
	c.mustTx(l, 9, "BEGIN")
	c.mustTx(l, 9, "INSERT INTO t VALUES (42)")
	l.down = true
	nl := c.electOther(l)
	c.tick(2)
	c.mustExec(nl, "INSERT INTO t VALUES (7)")
	// The old leader steps down by itself (check-quorum) before it hears
	// from anyone.
	for i := 0; i < 100 && l.l.Raft().Basic().State == raft.StateLeader; i++ {
		c.tick(1)
	}
	if r := c.txReply(l, 9, "INSERT INTO t VALUES (43)"); !errors.Is(r.Err, loop.ErrTxAborted) {
		t.Fatalf("request of the aborted transaction: %v", r.Err)
	}
	if r := c.txReply(l, 9, "ROLLBACK"); r.Err != nil {
		t.Fatalf("rollback of the aborted transaction: %v", r.Err)
	}
	l.down = false
	c.tick(30)
	for _, n := range c.nodes {
		if rows := query(t, n, "SELECT x FROM t"); !reflect.DeepEqual(rows, [][]any{{int64(7)}}) {
			t.Fatalf("node %d shows %v", n.id, rows)
		}
	}
}
