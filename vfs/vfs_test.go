package vfs

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
)

var vfsSeq atomic.Int64

func newVFS(t *testing.T) *VFS {
	t.Helper()
	v, err := New(fmt.Sprintf("test-%d", vfsSeq.Add(1)), 1, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

func open(t *testing.T, v *VFS, db string, pageSize int) *Conn {
	t.Helper()
	c, err := v.Open(db, pageSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func exec(t *testing.T, c *Conn, sql string) {
	t.Helper()
	if err := c.Exec(sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func query(t *testing.T, c *Conn, sql string) [][]any {
	t.Helper()
	rows, err := c.Query(sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return rows
}

func count(t *testing.T, c *Conn, table string) int64 {
	t.Helper()
	rows := query(t, c, "SELECT count(*) FROM "+table)
	return rows[0][0].(int64)
}

// commit applies the pending transaction of db and returns its frames.
func commit(t *testing.T, v *VFS, db string) *Frames {
	t.Helper()
	f, err := v.Poll(db)
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	if err := v.Apply(db); err != nil {
		t.Fatalf("apply: %v", err)
	}
	return f
}

// TestCapturedTransactionIsInvisibleUntilApplied checks a committed
// transaction stays invisible to another connection until Apply, that no
// other write can start meanwhile, and that the writer sees it after.
func TestCapturedTransactionIsInvisibleUntilApplied(t *testing.T) {
	v := newVFS(t)
	w := open(t, v, "db", 4096)
	r := open(t, v, "db", 4096)
	exec(t, w, "CREATE TABLE t (x INTEGER)")
	commit(t, v, "db")
	exec(t, w, "INSERT INTO t VALUES (1)")
	if !v.Pending("db") {
		t.Fatal("insert not captured")
	}
	if n := count(t, r, "t"); n != 0 {
		t.Fatalf("reader sees %d rows of a pending transaction", n)
	}
	if err := r.Exec("INSERT INTO t VALUES (2)"); !IsBusy(err) {
		t.Fatalf("second writer while pending: %v", err)
	}
	f := commit(t, v, "db")
	if f.PageSize != 4096 || len(f.Pages) == 0 || f.DBSize == 0 {
		t.Fatalf("frames: %d pages of %d, db size %d", len(f.Pages), f.PageSize, f.DBSize)
	}
	if n := count(t, r, "t"); n != 1 {
		t.Fatalf("reader sees %d rows after apply", n)
	}
	if n := count(t, w, "t"); n != 1 {
		t.Fatalf("writer sees %d rows after apply", n)
	}
	exec(t, r, "INSERT INTO t VALUES (2)")
	commit(t, v, "db")
	if n := count(t, w, "t"); n != 2 {
		t.Fatalf("writer sees %d rows after the other's write", n)
	}
}

// TestAbortLeavesNoTrace aborts a captured transaction: neither the writer
// nor another connection ever sees it, and the next transaction works.
func TestAbortLeavesNoTrace(t *testing.T) {
	v := newVFS(t)
	w := open(t, v, "db", 4096)
	r := open(t, v, "db", 4096)
	exec(t, w, "CREATE TABLE t (x INTEGER)")
	commit(t, v, "db")
	exec(t, w, "INSERT INTO t VALUES (1)")
	if err := v.Abort("db"); err != nil {
		t.Fatal(err)
	}
	if n := count(t, w, "t"); n != 0 {
		t.Fatalf("writer sees %d rows of an aborted transaction", n)
	}
	if n := count(t, r, "t"); n != 0 {
		t.Fatalf("reader sees %d rows of an aborted transaction", n)
	}
	exec(t, w, "INSERT INTO t VALUES (5)")
	commit(t, v, "db")
	if rows := query(t, r, "SELECT x FROM t"); !reflect.DeepEqual(rows, [][]any{{int64(5)}}) {
		t.Fatalf("after abort and a new write: %v", rows)
	}
	if err := v.Abort("db"); err != ErrNoPending {
		t.Fatalf("abort with nothing pending: %v", err)
	}
}

// replicate runs each statement on the leader, captures and applies its
// frames locally, and applies the same frames on the follower.
func replicate(t *testing.T, lv, fv *VFS, lc *Conn, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		exec(t, lc, s)
		if !lv.Pending("db") {
			continue // a read-only statement
		}
		f := commit(t, lv, "db")
		if err := fv.ApplyFrames("db", f); err != nil {
			t.Fatalf("apply frames of %q: %v", s, err)
		}
	}
}

// TestFramesReplicateNonDeterministicSQL replicates random(), randomblob()
// and datetime('now') by frames: the follower holds exactly the leader's
// values, although its own clock differs.
func TestFramesReplicateNonDeterministicSQL(t *testing.T) {
	lv, fv := newVFS(t), newVFS(t)
	lv.SetTime(1_700_000_000_000)
	fv.SetTime(1_800_000_000_000)
	lc := open(t, lv, "db", 4096)
	fc := open(t, fv, "db", 4096)
	replicate(t, lv, fv, lc, "CREATE TABLE t (a, b, c)")
	var stmts []string
	for i := 0; i < 100; i++ {
		stmts = append(stmts, "INSERT INTO t VALUES (random(), datetime('now'), randomblob(16))")
	}
	replicate(t, lv, fv, lc, stmts...)
	want := query(t, lc, "SELECT * FROM t ORDER BY rowid")
	got := query(t, fc, "SELECT * FROM t ORDER BY rowid")
	if len(want) != 100 || !reflect.DeepEqual(got, want) {
		t.Fatalf("follower differs: %d rows vs %d", len(got), len(want))
	}
	if want[0][1] != "2023-11-14 22:13:20" {
		t.Fatalf("datetime('now') = %v, not the injected clock", want[0][1])
	}
}

// TestLargeTransactionWithSavepoints writes a transaction large enough to
// spill the page cache, rolls back to a savepoint after the spill, commits,
// and replicates: the follower must match (the transaction is cut at
// SQLite's commit frame, not at the last frame written).
func TestLargeTransactionWithSavepoints(t *testing.T) {
	lv, fv := newVFS(t), newVFS(t)
	lc := open(t, lv, "db", 4096)
	fc := open(t, fv, "db", 4096)
	replicate(t, lv, fv, lc, "CREATE TABLE t (x, y)")
	if err := lc.SetCacheBytes(10 * 4096); err != nil { // a small cache: the transaction spills
		t.Fatal(err)
	}
	big := strings.Repeat("x", 1000)
	sql := "BEGIN; SAVEPOINT a;"
	for i := 0; i < 200; i++ {
		sql += fmt.Sprintf("INSERT INTO t VALUES (%d, '%s');", i, big)
	}
	sql += "SAVEPOINT b;"
	for i := 0; i < 400; i++ {
		sql += fmt.Sprintf("INSERT INTO t VALUES (%d, '%s');", 1000+i, big)
	}
	sql += "ROLLBACK TO b; INSERT INTO t VALUES (-1, 'end'); RELEASE a; COMMIT;"
	replicate(t, lv, fv, lc, sql)
	want := query(t, lc, "SELECT count(*), sum(x) FROM t")
	got := query(t, fc, "SELECT count(*), sum(x) FROM t")
	if !reflect.DeepEqual(got, want) || want[0][0] != int64(201) {
		t.Fatalf("leader %v follower %v", want, got)
	}
	if rows := query(t, fc, "PRAGMA integrity_check"); rows[0][0] != "ok" {
		t.Fatalf("follower integrity: %v", rows)
	}
}

// TestPageSize65536 replicates a database with the largest page size.
func TestPageSize65536(t *testing.T) {
	lv, fv := newVFS(t), newVFS(t)
	lc := open(t, lv, "db", 65536)
	fc := open(t, fv, "db", 65536)
	replicate(t, lv, fv, lc, "CREATE TABLE t (x)", "INSERT INTO t VALUES (zeroblob(100000))")
	f, _ := lv.Poll("db")
	if f != nil {
		t.Fatal("unexpected pending transaction")
	}
	if got := query(t, fc, "SELECT length(x) FROM t"); got[0][0] != int64(100000) {
		t.Fatalf("follower: %v", got)
	}
	if ps := query(t, fc, "PRAGMA page_size"); ps[0][0] != int64(65536) {
		t.Fatalf("page size %v", ps)
	}
}

// TestCheckpointImageRestore checkpoints, takes an image, restores it into
// another VFS, and keeps replicating after a checkpoint.
func TestCheckpointImageRestore(t *testing.T) {
	lv, fv := newVFS(t), newVFS(t)
	lc := open(t, lv, "db", 4096)
	fc := open(t, fv, "db", 4096)
	replicate(t, lv, fv, lc, "CREATE TABLE t (x)", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)")
	if err := lc.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if lv.WALSize("db") != 0 {
		t.Fatalf("WAL not truncated: %d", lv.WALSize("db"))
	}
	if err := fc.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	replicate(t, lv, fv, lc, "INSERT INTO t VALUES (3)")
	if got := query(t, fc, "SELECT sum(x) FROM t"); got[0][0] != int64(6) {
		t.Fatalf("follower after checkpoint: %v", got)
	}
	if err := lc.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	img, err := lv.Image("db")
	if err != nil {
		t.Fatal(err)
	}
	rv := newVFS(t)
	if err := rv.Restore("db", img); err != nil {
		t.Fatal(err)
	}
	rc := open(t, rv, "db", 4096)
	if got := query(t, rc, "SELECT sum(x) FROM t"); got[0][0] != int64(6) {
		t.Fatalf("restored: %v", got)
	}
	if got := query(t, rc, "PRAGMA quick_check"); got[0][0] != "ok" {
		t.Fatalf("restored quick_check: %v", got)
	}
}

// TestBindAndColumns round-trips every value type through a statement.
func TestBindAndColumns(t *testing.T) {
	v := newVFS(t)
	c := open(t, v, "db", 4096)
	exec(t, c, "CREATE TABLE t (a, b, c, d, e)")
	commit(t, v, "db")
	s, _, err := c.Prepare("INSERT INTO t VALUES (?, ?, ?, ?, ?)")
	if err != nil {
		t.Fatal(err)
	}
	if s.ParamCount() != 5 {
		t.Fatalf("param count %d", s.ParamCount())
	}
	for i, x := range []any{int64(-7), 2.5, "héllo", []byte{0, 1, 2}, nil} {
		if err := s.Bind(i+1, x); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Step(); err != nil {
		t.Fatal(err)
	}
	s.Finalize()
	if c.Changes() != 1 || c.LastInsertRowID() != 1 {
		t.Fatalf("changes %d rowid %d", c.Changes(), c.LastInsertRowID())
	}
	commit(t, v, "db")
	rows := query(t, c, "SELECT * FROM t")
	if !reflect.DeepEqual(rows, [][]any{{int64(-7), 2.5, "héllo", []byte{0, 1, 2}, nil}}) {
		t.Fatalf("rows %#v", rows)
	}
	if _, _, err := c.Prepare("SELEC nonsense"); err == nil || !strings.Contains(err.Error(), "syntax error") {
		t.Fatalf("bad SQL: %v", err)
	}
}

// replicateWrite runs a write on the leader's connection, which must be
// captured, and applies its frames on the follower.
func replicateWrite(t *testing.T, lv, fv *VFS, lc *Conn, sql string) {
	t.Helper()
	exec(t, lc, sql)
	if !lv.Pending("db") {
		t.Fatalf("%q committed without being captured: it would not be replicated", sql)
	}
	if err := fv.ApplyFrames("db", commit(t, lv, "db")); err != nil {
		t.Fatalf("apply frames of %q: %v", sql, err)
	}
}

func sameRows(t *testing.T, a, b *Conn, sql string) {
	t.Helper()
	if x, y := query(t, a, sql), query(t, b, sql); !reflect.DeepEqual(x, y) {
		t.Fatalf("%s: %v against %v", sql, x, y)
	}
}

// TestWritesAfterSpilledRollbackAndWALRestart: a transaction larger than
// the page cache spills frames to the WAL before it ends; rolled back, it
// leaves them past the committed frames. The next transaction overwrites
// them and must still be captured (it once was not: it committed on the
// leader alone). Frames replicated to this node later must not follow the
// leftovers (they once did, and recovery then took the rolled back pages as
// part of the replicated transaction). A WAL restart after a user's
// checkpoint is captured too.
func TestWritesAfterSpilledRollbackAndWALRestart(t *testing.T) {
	lv, fv := newVFS(t), newVFS(t)
	lc, fc := open(t, lv, "db", 4096), open(t, fv, "db", 4096)
	replicateWrite(t, lv, fv, lc, "CREATE TABLE big (k INTEGER PRIMARY KEY, v BLOB)")
	replicateWrite(t, lv, fv, lc, "INSERT INTO big VALUES (0, x'00')")
	const spill = "WITH RECURSIVE s(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM s WHERE k < 5000) " +
		"INSERT INTO big SELECT k, randomblob(1000) FROM s"
	exec(t, lc, "BEGIN")
	exec(t, lc, spill)
	if lv.WALSize("db") < 1<<20 {
		t.Fatalf("the transaction did not spill: WAL of %d bytes", lv.WALSize("db"))
	}
	exec(t, lc, "ROLLBACK")
	if lv.Pending("db") {
		t.Fatal("a rolled back transaction was captured")
	}
	replicateWrite(t, lv, fv, lc, "INSERT INTO big VALUES (1, x'01')")
	sameRows(t, lc, fc, "SELECT k, v FROM big ORDER BY k")
	// The same failure inside one statement (a constraint fails after the
	// spill), then roles swap: the follower writes, the old leader applies.
	if err := lc.Exec(spill); err == nil {
		t.Fatal("duplicate keys accepted")
	}
	replicateWrite(t, fv, lv, fc, "INSERT INTO big VALUES (2, x'02')")
	replicateWrite(t, fv, lv, fc, "UPDATE big SET v = x'ff' WHERE k = 0")
	sameRows(t, lc, fc, "SELECT k, v FROM big ORDER BY k")
	if rows := query(t, lc, "PRAGMA integrity_check"); rows[0][0] != "ok" {
		t.Fatalf("integrity: %v", rows)
	}
	// A passive checkpoint copies every frame back; the next write restarts
	// the WAL from its header.
	fc.trust(true) // clients may not checkpoint; the node may
	exec(t, fc, "PRAGMA wal_checkpoint(PASSIVE)")
	fc.trust(false)
	replicateWrite(t, fv, lv, fc, "INSERT INTO big VALUES (3, x'03')")
	replicateWrite(t, fv, lv, fc, "INSERT INTO big VALUES (4, x'04')")
	sameRows(t, lc, fc, "SELECT k, v FROM big ORDER BY k")
	if n := count(t, lc, "big"); n != 5 {
		t.Fatalf("%d rows, want 5", n)
	}
}

// TestGuardRefusesStorageChanges: client SQL may not change the settings
// replication relies on, checkpoint, or attach databases (not replicated);
// reading those PRAGMAs and setting harmless ones stays allowed, and the
// node's own checkpoint still runs.
func TestGuardRefusesStorageChanges(t *testing.T) {
	v := newVFS(t)
	c := open(t, v, "db", 4096)
	exec(t, c, "CREATE TABLE t (x)")
	commit(t, v, "db")
	for _, q := range []string{"PRAGMA journal_mode=DELETE", "PRAGMA locking_mode=EXCLUSIVE", "pragma Synchronous = 0",
		"PRAGMA wal_autocheckpoint=1", "PRAGMA wal_checkpoint", "PRAGMA main.wal_checkpoint(RESTART)",
		"PRAGMA recursive_triggers=ON", "PRAGMA writable_schema=1", "ATTACH DATABASE 'other' AS o", "DETACH o",
		"PRAGMA hard_heap_limit=1", "PRAGMA soft_heap_limit=1", "PRAGMA max_page_count=1", "PRAGMA foreign_keys=OFF",
		"CREATE TEMP TABLE t (y)", "CREATE TABLE temp.u (y)", "CREATE TEMP VIEW v AS SELECT 1", "CREATE VIEW temp.w AS SELECT 1",
		"CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END", "VACUUM INTO 'copy'", "PRAGMA main.locking_mode=EXCLUSIVE", "PRAGMA cache_size=-10000000"} {
		err := c.Exec(q)
		var e *Error
		if !errors.As(err, &e) || e.Code != 23 || !strings.Contains(e.Msg, "reserved to the node") {
			t.Errorf("%s: %v", q, err)
		}
	}
	for _, q := range []string{"PRAGMA journal_mode", "PRAGMA user_version=7", "PRAGMA cache_size", "PRAGMA foreign_keys", "PRAGMA table_info(t)",
		"BEGIN; PRAGMA foreign_keys=OFF; COMMIT"} {
		if err := c.Exec(q); err != nil {
			t.Errorf("%s: %v", q, err)
		}
		if v.Pending("db") {
			commit(t, v, "db")
		}
	}
	if rows := query(t, c, "PRAGMA journal_mode"); rows[0][0] != "wal" {
		t.Fatalf("journal mode %v", rows)
	}
	exec(t, c, "INSERT INTO t VALUES (1)")
	commit(t, v, "db")
	if err := c.Checkpoint(); err != nil {
		t.Fatalf("the node's checkpoint: %v", err)
	}
	if v.WALSize("db") != 0 {
		t.Fatalf("WAL of %d bytes after the checkpoint", v.WALSize("db"))
	}
}

// TestWALRestartPendingThenAborted: a write that restarts the WAL (every
// frame checkpointed, none truncated) is captured from offset 0; while it
// is pending another connection still reads the previous state, and after
// it is aborted both connections read and write normally. (The hidden state
// used to be the index from before the restart over an empty WAL: reads
// failed, and after an abort every statement got a disk I/O error.)
func TestWALRestartPendingThenAborted(t *testing.T) {
	v := newVFS(t)
	w, r := open(t, v, "db", 4096), open(t, v, "db", 4096)
	exec(t, w, "CREATE TABLE t (x INTEGER)")
	commit(t, v, "db")
	for i := 0; i < 3; i++ {
		exec(t, w, "INSERT INTO t VALUES (1)")
		commit(t, v, "db")
	}
	w.trust(true)
	exec(t, w, "PRAGMA wal_checkpoint(PASSIVE)")
	w.trust(false)
	exec(t, w, "INSERT INTO t VALUES (2)")
	if !v.Pending("db") {
		t.Fatal("the restarting write was not captured")
	}
	if n := count(t, r, "t"); n != 3 {
		t.Fatalf("read while the restarting write is pending: %d rows, want 3", n)
	}
	if err := v.Abort("db"); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*Conn{"reader": r, "writer": w} {
		if n := count(t, c, "t"); n != 3 {
			t.Fatalf("%s after the abort: %d rows, want 3", name, n)
		}
	}
	exec(t, w, "INSERT INTO t VALUES (3)")
	commit(t, v, "db")
	if n := count(t, r, "t"); n != 4 {
		t.Fatalf("after a write following the abort: %d rows, want 4", n)
	}
}

// TestStaleSnapshotWriteKeepsAppliedFrames: a connection whose read
// snapshot predates replicated frames tries to write and fails
// (BUSY_SNAPSHOT); releasing the write lock must not cut the WAL back to
// the invalidated index's stale frame count (it once dropped the applied
// frames).
func TestStaleSnapshotWriteKeepsAppliedFrames(t *testing.T) {
	lv, fv := newVFS(t), newVFS(t)
	lc, fc := open(t, lv, "db", 4096), open(t, fv, "db", 4096)
	replicateWrite(t, lv, fv, lc, "CREATE TABLE t (x INTEGER)")
	replicateWrite(t, lv, fv, lc, "INSERT INTO t VALUES (1)")
	exec(t, fc, "BEGIN")
	query(t, fc, "SELECT count(*) FROM t")
	replicateWrite(t, lv, fv, lc, "INSERT INTO t VALUES (2)")
	if err := fc.Exec("INSERT INTO t VALUES (3)"); err == nil {
		t.Fatal("a write on a stale snapshot succeeded")
	}
	exec(t, fc, "ROLLBACK")
	if n := count(t, fc, "t"); n != 2 {
		t.Fatalf("follower has %d rows after applying 2", n)
	}
}

// TestCloseReportsUnfinalizedStatements: closing a connection with a
// statement not finalized (SQLite keeps such a connection alive until it is)
// is an error; a statement recycled under a new handle is still counted
// once, and finalized, none is.
func TestCloseReportsUnfinalizedStatements(t *testing.T) {
	v := newVFS(t)
	c, err := v.Open("leak", 4096)
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := c.Prepare("SELECT 1")
	if err != nil {
		t.Fatal(err)
	}
	kept := s.Recycle()
	if kept == nil || c.Statements() != 1 {
		t.Fatalf("recycled: %v, %d statements, want 1", kept, c.Statements())
	}
	if err := c.Close(); err == nil || !strings.Contains(err.Error(), "1 statements not finalized") {
		t.Fatalf("close with a statement left: %v", err)
	}
	kept.Finalize() // the zombie connection goes with it

	c2, err := v.Open("leak", 4096)
	if err != nil {
		t.Fatal(err)
	}
	s2, _, err := c2.Prepare("SELECT 1")
	if err != nil {
		t.Fatal(err)
	}
	if s2.MemUsed() <= 0 {
		t.Fatalf("MemUsed %d", s2.MemUsed())
	}
	s2.Recycle().Finalize()
	if err := c2.Close(); err != nil || c2.Statements() != 0 {
		t.Fatalf("close with every statement finalized: %v (%d left)", err, c2.Statements())
	}
}
