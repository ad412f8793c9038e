package fsm_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"reflect"
	"strings"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
)

// solo is one fsm.DB without Raft: writes are executed and applied at once.
type solo struct {
	t     testing.TB
	db    *fsm.DB
	index uint64
}

func newSolo(t testing.TB, mode fsm.Mode) *solo {
	t.Helper()
	db, err := openMode(fmt.Sprintf("solo-%d", vfsSeq.Add(1)), 1, mode)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &solo{t: t, db: db}
}

// batch executes items as one batch and applies its command; it returns
// each item's result or error.
func (s *solo) batch(items ...*fsm.BatchItem) ([]any, []error) {
	s.t.Helper()
	its := make([]any, len(items))
	for i, it := range items {
		its[i] = it
	}
	cmd, results, errs := s.db.ExecuteBatch(its)
	if cmd != nil {
		s.apply(cmd, true)
	}
	return results, errs
}

// apply applies cmd as the next entry (proposed here when own).
func (s *solo) apply(cmd []byte, own bool) any {
	s.t.Helper()
	s.index++
	if own {
		s.db.Proposed(s.index, 1)
	}
	res, err := s.db.Apply(raft.Entry{Index: s.index, Term: 1, Type: raft.EntryNormal, Data: cmd})
	if err != nil {
		s.t.Fatalf("apply %d: %v", s.index, err)
	}
	return res
}

func (s *solo) exec(db, sql string) fsm.Result {
	s.t.Helper()
	results, errs := s.batch(&fsm.BatchItem{Database: db, SQL: sql})
	if errs[0] != nil {
		s.t.Fatalf("%s on %q: %v", sql, db, errs[0])
	}
	res, _ := results[0].(fsm.Result)
	return res
}

// queryDB runs a read on database db through a cursor.
func queryDB(t *testing.T, d *fsm.DB, db, sql string) ([][]any, error) {
	t.Helper()
	cur, err := d.OpenCursor(db, sql)
	if err != nil {
		return nil, err
	}
	defer d.CloseCursor(cur)
	var rows [][]any
	for {
		more, err := cur.Step()
		if err != nil {
			return nil, err
		}
		if !more {
			return rows, nil
		}
		row := make([]any, cur.ColumnCount())
		for i := range row {
			row[i] = cur.Column(i)
		}
		rows = append(rows, row)
	}
}

func mustQueryDB(t *testing.T, d *fsm.DB, db, sql string) string {
	t.Helper()
	rows, err := queryDB(t, d, db, sql)
	if err != nil {
		t.Fatalf("%s on %q: %v", sql, db, err)
	}
	return fmt.Sprint(rows)
}

// TestDatabasesSeparate: each database has its own tables; an entry names
// its database, and a node without it creates it when applying.
func TestDatabasesSeparate(t *testing.T) {
	s := newSolo(t, fsm.ModeFrames)
	s.exec("a", "CREATE TABLE t (x); INSERT INTO t VALUES (1)")
	s.exec("b", "CREATE TABLE u (y); INSERT INTO u VALUES (2)")
	s.exec("", "CREATE TABLE v (z)")
	if got := mustQueryDB(t, s.db, "a", "SELECT name FROM sqlite_master ORDER BY name"); got != "[[t]]" {
		t.Fatalf("database a holds %s", got)
	}
	if got := mustQueryDB(t, s.db, "b", "SELECT y FROM u"); got != "[[2]]" {
		t.Fatalf("database b holds %s", got)
	}
	if _, err := queryDB(t, s.db, "b", "SELECT x FROM t"); err == nil || !strings.Contains(err.Error(), "no such table") {
		t.Fatalf("table of a seen in b: %v", err)
	}
	if got := mustQueryDB(t, s.db, "db", "SELECT name FROM sqlite_master"); got != "[[v]]" {
		t.Fatalf("the default database holds %s", got)
	}
	if got := s.db.Names(); !reflect.DeepEqual(got, []string{"a", "b", "db"}) {
		t.Fatalf("names %v", got)
	}

	// Another node applies the same entries: it creates a and b itself.
	f := newSolo(t, fsm.ModeFrames)
	src := newSolo(t, fsm.ModeFrames)
	for _, w := range []struct{ db, sql string }{{"a", "CREATE TABLE t (x)"}, {"b", "CREATE TABLE u (y)"}, {"a", "INSERT INTO t VALUES (7)"}} {
		cmd, _, errs := src.db.ExecuteBatch([]any{&fsm.BatchItem{Database: w.db, SQL: w.sql}})
		if errs[0] != nil {
			t.Fatal(errs[0])
		}
		src.apply(cmd, true)
		f.apply(cmd, false)
	}
	if got := mustQueryDB(t, f.db, "a", "SELECT x FROM t"); got != "[[7]]" {
		t.Fatalf("follower's a holds %s", got)
	}
	if got := mustQueryDB(t, f.db, "b", "SELECT count(*) FROM u"); got != "[[0]]" {
		t.Fatalf("follower's b holds %s", got)
	}
}

// TestSnapshotCarriesDatabases: a snapshot restores every database; one
// the snapshot lacks is forgotten; the old one-image format still restores
// as the default database; a damaged snapshot is refused.
func TestSnapshotCarriesDatabases(t *testing.T) {
	s := newSolo(t, fsm.ModeFrames)
	s.exec("a", "CREATE TABLE t (x); INSERT INTO t VALUES (1)")
	s.exec("b", "CREATE TABLE u (y); INSERT INTO u VALUES (2)")
	if err := s.db.Create("empty"); err != nil {
		t.Fatal(err)
	}
	snap, err := s.db.Snapshot()
	if err != nil {
		t.Fatal(err)
	}

	r := newSolo(t, fsm.ModeFrames)
	r.exec("c", "CREATE TABLE w (z)") // not in the snapshot: forgotten
	if err := r.db.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if got := r.db.Names(); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("restored names %v (databases never written are no state)", got)
	}
	if got := mustQueryDB(t, r.db, "a", "SELECT x FROM t") + mustQueryDB(t, r.db, "b", "SELECT y FROM u"); got != "[[1]][[2]]" {
		t.Fatalf("restored contents %s", got)
	}
	if _, err := r.db.Image("c"); !errors.Is(err, fsm.ErrNoDatabase) {
		t.Fatalf("image of a database the snapshot lacks: %v", err)
	}
	// Opened again, c is empty: its old pages are gone.
	if got := mustQueryDB(t, r.db, "c", "SELECT count(*) FROM sqlite_master"); got != "[[0]]" {
		t.Fatalf("c after the restore holds %s", got)
	}

	// The format of one image (before several databases): the default
	// database.
	img, err := s.db.Image("a")
	if err != nil {
		t.Fatal(err)
	}
	v1 := append([]byte("DQSQLv01"), binary.LittleEndian.AppendUint32(nil, 4096)...)
	v1 = binary.LittleEndian.AppendUint32(v1, crc32.Checksum(img, crc32.MakeTable(crc32.Castagnoli)))
	v1 = append(v1, img...)
	o := newSolo(t, fsm.ModeFrames)
	if err := o.db.Restore(v1); err != nil {
		t.Fatal(err)
	}
	if got := mustQueryDB(t, o.db, "", "SELECT x FROM t"); got != "[[1]]" {
		t.Fatalf("version 1 snapshot restored %s", got)
	}

	// Damage: a flipped byte in an image, a truncation, a repeated name.
	bad := append([]byte(nil), snap...)
	bad[len(bad)-100] ^= 1
	for name, b := range map[string][]byte{"flip": bad, "truncated": snap[:len(snap)-1], "extra": append(append([]byte(nil), snap...), 0)} {
		if err := newSolo(t, fsm.ModeFrames).db.Restore(b); !errors.Is(err, fsm.ErrCorrupt) {
			t.Fatalf("%s snapshot: %v", name, err)
		}
	}
}

// TestDatabaseLimits: names are checked, a node creates at most
// MaxDatabases, and an entry naming one more still applies.
func TestDatabaseLimits(t *testing.T) {
	for _, name := range []string{"", ":memory:", ":x", "file:a.db", "FILE::memory:?cache=shared", "a/b", "x\x00", "main.db-wal", "j-journal", "s-shm", strings.Repeat("n", fsm.MaxDatabaseNameBytes+1), "\xff"} {
		if err := fsm.CheckDatabaseName(name); !errors.Is(err, fsm.ErrDatabaseName) {
			t.Fatalf("name %q: %v", name, err)
		}
	}
	for _, name := range []string{"app.db", "k8s", "ünï", strings.Repeat("n", fsm.MaxDatabaseNameBytes)} {
		if err := fsm.CheckDatabaseName(name); err != nil {
			t.Fatalf("name %q: %v", name, err)
		}
	}
	// Databases only opened (no state) make room for a new one.
	u := newSolo(t, fsm.ModeFrames)
	for i := 1; i < fsm.MaxDatabases; i++ {
		if err := u.db.Create(fmt.Sprintf("junk%d", i)); err != nil {
			t.Fatalf("database %d: %v", i+1, err)
		}
	}
	u.exec("real", "CREATE TABLE t (x)")
	if got := u.db.Names(); !reflect.DeepEqual(got, []string{"real"}) {
		t.Fatalf("names %v", got)
	}

	// Written ones do not.
	s := newSolo(t, fsm.ModeFrames)
	s.exec("", "CREATE TABLE t (x)")
	for i := 1; i < fsm.MaxDatabases; i++ {
		s.exec(fmt.Sprintf("d%d", i), "CREATE TABLE t (x)")
	}
	if err := s.db.Create("one-more"); !errors.Is(err, fsm.ErrTooManyDatabases) {
		t.Fatalf("database %d: %v", fsm.MaxDatabases+1, err)
	}
	_, errs := s.batch(&fsm.BatchItem{Database: "one-more", SQL: "CREATE TABLE t (x)"})
	if !errors.Is(errs[0], fsm.ErrTooManyDatabases) {
		t.Fatalf("write creating database %d: %v", fsm.MaxDatabases+1, errs[0])
	}
	src := newSolo(t, fsm.ModeFrames)
	cmd, _, errs := src.db.ExecuteBatch([]any{&fsm.BatchItem{Database: "one-more", SQL: "CREATE TABLE t (x)"}})
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	s.apply(cmd, false)
	if got := len(s.db.Names()); got != fsm.MaxDatabases+1 {
		t.Fatalf("%d written databases after applying an entry naming a new one", got)
	}
}

// TestWriteRows: a write sent as a query returns its rows; deduplicated,
// a retry returns the same rows and writes nothing; the rows are bounded;
// statement mode refuses a write's rows but runs one returning none.
func TestWriteRows(t *testing.T) {
	s := newSolo(t, fsm.ModeFrames)
	s.exec("a", "CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)")
	item := func() *fsm.BatchItem {
		return &fsm.BatchItem{Database: "a", SQL: "INSERT INTO t (x) VALUES (?) RETURNING id, x",
			Params: []fsm.Value{{Type: fsm.TypeText, Text: "hello"}}, Client: 42, Seq: 1, Rows: true}
	}
	results, errs := s.batch(item())
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	res := results[0].(fsm.Result)
	if res.Rows == nil || fmt.Sprint(res.Rows.Columns, res.Rows.Values) != "[id x] [[1 hello]]" || res.LastInsertID != 1 {
		t.Fatalf("returned %+v %+v", res, res.Rows)
	}
	results, errs = s.batch(item()) // the retry of an unknown outcome
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	if again := results[0].(fsm.Result); fmt.Sprint(again.Rows.Columns, again.Rows.Values) != "[id x] [[1 hello]]" {
		t.Fatalf("retry returned %+v", again.Rows)
	}
	if got := mustQueryDB(t, s.db, "a", "SELECT count(*) FROM t"); got != "[[1]]" {
		t.Fatalf("after the retry: %s rows", got)
	}
	// Alongside other writes in one batch.
	results, errs = s.batch(&fsm.BatchItem{Database: "a", SQL: "INSERT INTO t (x) VALUES ('b')"},
		&fsm.BatchItem{Database: "a", SQL: "UPDATE t SET x = 'c' WHERE id = 2 RETURNING x", Rows: true},
		&fsm.BatchItem{Database: "a", SQL: "DELETE FROM t RETURNING nosuchcolumn", Rows: true})
	if errs[0] != nil || errs[1] != nil || errs[2] == nil {
		t.Fatalf("batch errors %v", errs)
	}
	if r := results[1].(fsm.Result); fmt.Sprint(r.Rows.Values) != "[[c]]" || r.RowsAffected != 1 {
		t.Fatalf("update returned %+v %+v", r, r.Rows)
	}
	// Bounded.
	_, errs = s.batch(&fsm.BatchItem{Database: "a", SQL: "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 40) " +
		"INSERT INTO t (x) SELECT randomblob(1 << 20) FROM n RETURNING x", Rows: true})
	if !errors.Is(errs[0], fsm.ErrWriteRowsTooLarge) {
		t.Fatalf("40 MiB of returned rows: %v", errs[0])
	}
	if got := mustQueryDB(t, s.db, "a", "SELECT count(*) FROM t"); got != "[[2]]" {
		t.Fatalf("the refused write left %s rows", got)
	}

	// The recorded rows are the first attempt's, whatever the table
	// became since.
	retry := func() *fsm.BatchItem {
		return &fsm.BatchItem{Database: "a", SQL: "INSERT INTO t (x) VALUES ('r') RETURNING *", Client: 43, Seq: 1, Rows: true}
	}
	first, errs := s.batch(retry())
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	s.exec("a", "ALTER TABLE t ADD COLUMN z")
	again, errs := s.batch(retry())
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	f, g := first[0].(fsm.Result).Rows, again[0].(fsm.Result).Rows
	if fmt.Sprint(f.Columns, f.Values) != fmt.Sprint(g.Columns, g.Values) || len(g.Columns) != 2 {
		t.Fatalf("retry after a schema change returned %v %v, first %v %v", g.Columns, g.Values, f.Columns, f.Values)
	}

	// The rows table is writable by clients: a damaged record fails the
	// retry, without asking for memory its bytes do not hold.
	s.exec("a", "UPDATE dqlite_dedup_rows SET rows = x'01000000ffffffff0f' WHERE client = 43")
	if _, errs := s.batch(retry()); !errors.Is(errs[0], fsm.ErrCorrupt) {
		t.Fatalf("retry with a damaged record: %v", errs[0])
	}

	// Transaction statements are not reads (SQLite calls them read-only):
	// on the read connection a BEGIN would freeze later reads.
	for _, q := range []string{"BEGIN", " commit", "SAVEPOINT x", "RELEASE x", "END"} {
		if _, err := s.db.OpenCursor("a", q); !errors.Is(err, fsm.ErrWrites) {
			t.Fatalf("cursor for %q: %v", q, err)
		}
	}

	// Inside a transaction spanning requests, a refused RETURNING leaves
	// nothing behind.
	before := mustQueryDB(t, s.db, "a", "SELECT count(*) FROM t")
	if _, _, open, err := s.db.ExecuteTx("a", "BEGIN", nil, false); err != nil || !open {
		t.Fatalf("BEGIN: %v %v", open, err)
	}
	if _, _, open, err := s.db.ExecuteTx("a", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 40) "+
		"INSERT INTO t (x) SELECT randomblob(1 << 20) FROM n RETURNING x", nil, true); !errors.Is(err, fsm.ErrWriteRowsTooLarge) || !open {
		t.Fatalf("40 MiB of rows inside a transaction: %v (open %v)", err, open)
	}
	cmd, _, open, err := s.db.ExecuteTx("a", "COMMIT", nil, false)
	if err != nil || open {
		t.Fatalf("COMMIT: %v %v", open, err)
	}
	if cmd != nil {
		s.apply(cmd, true)
	}
	if after := mustQueryDB(t, s.db, "a", "SELECT count(*) FROM t"); after != before {
		t.Fatalf("%s rows before, %s after the refused write's transaction committed", before, after)
	}

	st := newSolo(t, fsm.ModeStatements)
	_, errs = st.batch(&fsm.BatchItem{Database: "a", SQL: "CREATE TABLE t (x)", Rows: true})
	if errs[0] != nil {
		t.Fatalf("statement mode, a write returning no rows: %v", errs[0])
	}
	_, errs = st.batch(&fsm.BatchItem{Database: "a", SQL: "INSERT INTO t VALUES (1) RETURNING x", Rows: true})
	if !errors.Is(errs[0], fsm.ErrRowsStatementMode) {
		t.Fatalf("statement mode, RETURNING: %v", errs[0])
	}
}

// TestBatchesStayInOneDatabase: the loop merges queued writes of one
// database only, so every entry names one database.
func TestBatchesStayInOneDatabase(t *testing.T) {
	c := newCluster(t, 3, fsm.ModeFrames, 0)
	l := c.elect()
	for _, db := range []string{"a", "b"} {
		c.nextID++
		c.take(l, l.l.SubmitWrite(loop.WriteRequest{ID: c.nextID, Group: db, Batch: &fsm.BatchItem{Database: db, SQL: "CREATE TABLE t (x)"}}))
		c.run()
	}
	// Queue writes of both databases behind one in flight, interleaved.
	var ids []uint64
	for i := 0; i < 10; i++ {
		db := []string{"a", "b"}[i%2]
		c.nextID++
		ids = append(ids, c.nextID)
		c.take(l, l.l.SubmitWrite(loop.WriteRequest{ID: c.nextID, Group: db, Batch: &fsm.BatchItem{Database: db,
			SQL: fmt.Sprintf("INSERT INTO t VALUES (%d)", i)}}))
	}
	c.run()
	for _, id := range ids {
		if r := c.replies[id]; r.Err != nil || r.ID == 0 {
			t.Fatalf("write %d: %+v", id, r)
		}
	}
	for _, n := range c.nodes {
		got := mustQueryDB(t, n.db, "a", "SELECT group_concat(x) FROM t") + mustQueryDB(t, n.db, "b", "SELECT group_concat(x) FROM t")
		if got != "[[0,2,4,6,8]][[1,3,5,7,9]]" {
			t.Fatalf("node %d holds %s", n.id, got)
		}
	}
}

// FuzzRestore: no snapshot bytes make Restore panic, and one it accepts
// leaves every database it names readable.
func FuzzRestore(f *testing.F) {
	src, err := openMode(fmt.Sprintf("fuzz-src-%d", vfsSeq.Add(1)), 1, fsm.ModeFrames)
	if err != nil {
		f.Fatal(err)
	}
	s := &solo{db: src}
	for _, w := range [][2]string{{"a", "CREATE TABLE t (x)"}, {"b", "CREATE TABLE u (y)"}} {
		cmd, _, errs := src.ExecuteBatch([]any{&fsm.BatchItem{Database: w[0], SQL: w[1]}})
		if errs[0] != nil {
			f.Fatal(errs[0])
		}
		s.index++
		src.Proposed(s.index, 1)
		if _, err := src.Apply(raft.Entry{Index: s.index, Term: 1, Data: cmd}); err != nil {
			f.Fatal(err)
		}
	}
	snap, err := src.Snapshot()
	if err != nil {
		f.Fatal(err)
	}
	src.Close()
	f.Add(snap)
	f.Add(snap[:40])
	f.Add([]byte("DQSQLv02\xff\xff\xff\xff"))
	f.Add([]byte("DQSQLv01\x00\x10\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d := newSolo(t, fsm.ModeFrames).db
		if err := d.Restore(data); err != nil {
			return
		}
		for _, name := range d.Names() {
			if _, err := queryDB(t, d, name, "SELECT count(*) FROM sqlite_master"); err != nil {
				t.Fatalf("restored database %q unreadable: %v", name, err)
			}
		}
	})
}
