package wire_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/driver"
	"github.com/dqlite-go/dqlite/internal/testcluster"
	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/wire"
)

// queryRows runs QUERY_SQL (schema 2 with client and seq when client is
// not 0) and returns the rows.
func queryRows(ctx context.Context, c *wire.Conn, db uint32, sql string, client, seq uint64, params ...wire.Value) ([][]wire.Value, error) {
	req := &wire.Request{Type: wire.ReqQuerySQL, DB: db, SQL: sql, Params: params}
	if client != 0 {
		req.Schema, req.Client, req.Seq = wire.SchemaDedup, client, seq
	}
	rr, err := c.Query(ctx, req)
	if err != nil {
		return nil, err
	}
	var rows [][]wire.Value
	for {
		row, err := rr.Next()
		if err == io.EOF {
			return rows, nil
		}
		if err != nil {
			return nil, err
		}
		rows = append(rows, row)
	}
}

func values(rows [][]wire.Value) string {
	var b strings.Builder
	for _, r := range rows {
		for i, v := range r {
			if i > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprint(&b, v.V)
		}
		b.WriteByte(';')
	}
	return b.String()
}

// sqlite3Check opens a dump with the sqlite3 command-line tool.
func sqlite3Check(t *testing.T, img []byte, query string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dump.db")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	tool, err := exec.LookPath("sqlite3")
	if err != nil {
		t.Fatal("the sqlite3 command-line tool is needed (apt-get install sqlite3; .ci/run installs it)")
	}
	out, err := exec.Command(tool, path, "PRAGMA integrity_check; "+query).CombinedOutput()
	if err != nil {
		t.Fatalf("sqlite3 on the dump: %q %v", out, err)
	}
	return strings.TrimSpace(string(out))
}

// TestConformanceDatabases: two databases through the wire protocol and
// through the driver have separate tables, both replicate, snapshots and a
// restarted node keep both, DUMP of each opens in sqlite3, and DUMP of an
// unknown name answers 1002 (issue 16, item 1).
func TestConformanceDatabases(t *testing.T) {
	c := testcluster.Start(t, 3, func(cfg *node.Config) { cfg.SnapshotThreshold = 16 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	li := c.Leader(t, ctx)
	a, adb := openOn(t, ctx, c.Addrs[li], "a.db")
	b, bdb := openOn(t, ctx, c.Addrs[li], "b.db")
	execSQL(t, ctx, a, adb, "CREATE TABLE ta (x INTEGER); INSERT INTO ta VALUES (1)")
	execSQL(t, ctx, b, bdb, "CREATE TABLE tb (y INTEGER); INSERT INTO tb VALUES (2)")
	var we *wire.Error
	if _, err := queryRows(ctx, a, adb, "SELECT y FROM tb", 0, 0); !errors.As(err, &we) || !strings.Contains(we.Message, "no such table") {
		t.Fatalf("a.db sees b.db's table: %v", err)
	}
	if rows, err := queryRows(ctx, b, bdb, "SELECT name FROM sqlite_master", 0, 0); err != nil || values(rows) != "tb;" {
		t.Fatalf("b.db's tables: %q %v", values(rows), err)
	}

	// Through the driver, one sql.DB per database.
	addrs := strings.Join(c.Addrs, ",")
	da, err := sql.Open("dqlite", addrs+"/a.db")
	if err != nil {
		t.Fatal(err)
	}
	defer da.Close()
	dbb, err := sql.Open("dqlite", addrs+"/b.db")
	if err != nil {
		t.Fatal(err)
	}
	defer dbb.Close()
	for i := 0; i < 20; i++ { // past the snapshot threshold, twice
		if _, err := da.ExecContext(ctx, "INSERT INTO ta VALUES (?)", 10+i); err != nil {
			t.Fatal(err)
		}
		if _, err := dbb.ExecContext(ctx, "INSERT INTO tb VALUES (?)", 100+i); err != nil {
			t.Fatal(err)
		}
	}
	var na, nb int
	if err := da.QueryRowContext(ctx, "SELECT count(*) FROM ta").Scan(&na); err != nil || na != 21 {
		t.Fatalf("driver on a.db: %d rows %v", na, err)
	}
	if err := dbb.QueryRowContext(ctx, "SELECT count(*) FROM tb").Scan(&nb); err != nil || nb != 21 {
		t.Fatalf("driver on b.db: %d rows %v", nb, err)
	}
	if _, err := dbb.QueryContext(ctx, "SELECT x FROM ta"); err == nil {
		t.Fatal("the driver on b.db reads a.db's table")
	}

	// Snapshots were taken (each node's, once its ticks' checkpoints
	// moved its files past the threshold); a restarted follower
	// (snapshot, then log) holds both databases.
	for i, n := range c.Nodes {
		if err := n.WaitFor(ctx, func() bool { return n.SnapshotsTaken() > 0 }); err != nil {
			t.Fatalf("node %d took no snapshot: %v", i+1, err)
		}
	}
	f := (li + 1) % 3
	c.Restart(t, f)
	want := map[string]string{"a.db": "[[21 1 29]]", "b.db": "[[21 2 119]]"}
	for name, q := range map[string]string{"a.db": "SELECT count(*), min(x), max(x) FROM ta", "b.db": "SELECT count(*), min(y), max(y) FROM tb"} {
		for i, rows := range c.Contents(t, ctx, li, name, q) {
			if fmt.Sprint(rows) != want[name] {
				t.Fatalf("node %d, %s: %v, want %s", i+1, name, rows, want[name])
			}
		}
	}
	if got := c.Nodes[f].Databases(); fmt.Sprint(got) != "[a.db b.db]" {
		t.Fatalf("restarted node holds %v", got)
	}

	// DUMP of each opens in sqlite3; DUMP of an unknown name is 1002.
	for name, q := range map[string]string{"a.db": "SELECT count(*) FROM ta", "b.db": "SELECT count(*) FROM tb"} {
		files, err := a.Dump(ctx, name)
		if err != nil || len(files) != 2 || files[0].Name != name {
			t.Fatalf("DUMP %s: %v", name, err)
		}
		if out := sqlite3Check(t, files[0].Data, q); out != "ok\n21" {
			t.Fatalf("sqlite3 on the dump of %s: %q", name, out)
		}
	}
	if _, err := a.Dump(ctx, "nope.db"); !errors.As(err, &we) || we.Code != wire.CodeNoDatabase {
		t.Fatalf("DUMP of an unknown database: %v, want code %d", err, wire.CodeNoDatabase)
	}
}

// TestConformanceWritesAsQueries: INSERT ... RETURNING through QUERY_SQL
// and through the driver's QueryRow returns the id and replicates; a retry
// with the same client and sequence number (an unknown outcome) applies
// once and returns the first rows; CREATE TABLE through a query runs
// (issue 16, item 2).
func TestConformanceWritesAsQueries(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	li := c.Leader(t, ctx)
	a, adb := openOn(t, ctx, c.Addrs[li], "app")
	if rows, err := queryRows(ctx, a, adb, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", 0, 0); err != nil || len(rows) != 0 {
		t.Fatalf("CREATE TABLE through QUERY_SQL: %v %v", rows, err)
	}
	rows, err := queryRows(ctx, a, adb, "INSERT INTO t (v) VALUES (?) RETURNING id, v", 0, 0, wire.Value{Type: wire.Text, V: "one"})
	if err != nil || values(rows) != "1 one;" {
		t.Fatalf("INSERT ... RETURNING: %q %v", values(rows), err)
	}
	// The same write twice with one client and sequence number: applied
	// once, the second answer is the first's.
	for try := 0; try < 2; try++ {
		rows, err := queryRows(ctx, a, adb, "INSERT INTO t (v) VALUES ('two') RETURNING id", 77, 5)
		if err != nil || values(rows) != "2;" {
			t.Fatalf("attempt %d of a deduplicated INSERT ... RETURNING: %q %v", try+1, values(rows), err)
		}
	}
	// A prepared QUERY that writes.
	st, err := a.Call(ctx, &wire.Request{Type: wire.ReqPrepare, DB: adb, SQL: "UPDATE t SET v = ? WHERE id = 1 RETURNING v"}, wire.RespStmt)
	if err != nil {
		t.Fatal(err)
	}
	rr, err := a.Query(ctx, &wire.Request{Type: wire.ReqQuery, DB: adb, Stmt: st.Stmt, Params: []wire.Value{{Type: wire.Text, V: "uno"}}})
	if err != nil {
		t.Fatal(err)
	}
	if row, err := rr.Next(); err != nil || row[0].V != "uno" {
		t.Fatalf("prepared UPDATE ... RETURNING: %v %v", row, err)
	}
	if _, err := rr.Next(); err != io.EOF {
		t.Fatalf("after the one row: %v", err)
	}

	db, err := sql.Open("dqlite", strings.Join(c.Addrs, ",")+"/app")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var id int64
	if err := db.QueryRowContext(ctx, "INSERT INTO t (v) VALUES (?) RETURNING id", "three").Scan(&id); err != nil || id != 3 {
		t.Fatalf("driver QueryRow INSERT ... RETURNING: %d %v", id, err)
	}

	// The reply to the next deduplicated query is lost with its
	// connection, after the write committed: the driver sends it again
	// with the same sequence number and gets the first attempt's id.
	var lost atomic.Int32
	wire.LoseReply(func(r *wire.Request) bool {
		return r.Type == wire.ReqQuerySQL && r.Schema == wire.SchemaDedup && lost.Add(1) == 1
	})
	defer wire.LoseReply(nil)
	if err := db.QueryRowContext(ctx, "INSERT INTO t (v) VALUES (?) RETURNING id", "four").Scan(&id); err != nil || id != 4 {
		t.Fatalf("driver QueryRow INSERT ... RETURNING whose first reply was lost: %d %v", id, err)
	}
	if n := lost.Load(); n < 2 {
		t.Fatalf("the driver sent the write %d times, want a retry", n)
	}
	// Without deduplication (a client of the C server), a query that may
	// write is not sent again once its reply is lost: the outcome is
	// unknown. A read is sent again.
	cn := driver.NewConnector(c.Addrs, "app")
	cn.NotIdempotent = true
	plain := sql.OpenDB(cn)
	defer plain.Close()
	lost.Store(0)
	wire.LoseReply(func(r *wire.Request) bool { return r.Type == wire.ReqQuerySQL && lost.Add(1) == 1 })
	if err := plain.QueryRowContext(ctx, "INSERT INTO t (v) VALUES ('five') RETURNING id").Scan(&id); !errors.Is(err, driver.ErrUnknownOutcome) {
		t.Fatalf("a not deduplicated INSERT ... RETURNING whose reply was lost: %v, want ErrUnknownOutcome", err)
	}
	lost.Store(0)
	var n int
	if err := plain.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 5 || lost.Load() < 2 {
		t.Fatalf("a read whose reply was lost: %d rows %v (sent %d times)", n, err, lost.Load())
	}
	for i, rows := range c.Contents(t, ctx, li, "app", "SELECT id, v FROM t ORDER BY id") {
		if fmt.Sprint(rows) != "[[1 uno] [2 two] [3 three] [4 four] [5 five]]" {
			t.Fatalf("node %d holds %v", i+1, rows)
		}
	}
}
