package wire_test

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/internal/testcluster"
	"github.com/dqlite-go/dqlite/wire"
)

// TestConformance drives a 3-node cluster through the wire protocol the
// way the Go client of the dqlite project does: handshake, LEADER (and
// following a follower's answer), CLIENT, OPEN, PREPARE, EXEC with both
// parameter schemas, QUERY with multi-batch ROWS, FINALIZE, EXEC_SQL with
// several statements, INTERRUPT mid-stream, CLUSTER formats 0 and 1, and
// DUMP producing a file the sqlite3 command-line tool opens.
func TestConformance(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	li := c.Leader(t, ctx)
	leaderAddr := c.Addrs[li]
	follower := c.Addrs[(li+1)%3]
	fn := c.Nodes[(li+1)%3]
	if err := fn.WaitFor(ctx, func() bool { return int(fn.LeaderLocked()) == li+1 }); err != nil {
		t.Fatalf("the follower never heard from the leader: %v", err)
	}

	// A follower names the leader, as clients dial it.
	fc, err := wire.Dial(ctx, follower, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	if id, addr, err := fc.Leader(ctx); err != nil || addr != leaderAddr || id != uint64(li+1) {
		t.Fatalf("follower's LEADER: %d %q %v (leader %s)", id, addr, err, leaderAddr)
	}
	var we *wire.Error
	if _, err := fc.Open(ctx, "test"); !errors.As(err, &we) || we.Code != wire.CodeNotLeader {
		t.Fatalf("OPEN on a follower: %v", err)
	}

	// FindLeader probes every node, as the client does.
	conn, err := wire.FindLeader(ctx, c.Addrs, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if conn.Address != leaderAddr {
		t.Fatalf("found %s, leader is %s", conn.Address, leaderAddr)
	}
	if _, err := conn.Call(ctx, &wire.Request{Type: wire.ReqClient}, wire.RespWelcome); err != nil {
		t.Fatalf("CLIENT: %v", err)
	}
	db, err := conn.Open(ctx, "test")
	if err != nil || db != 0 {
		t.Fatalf("OPEN: %d %v", db, err)
	}

	// EXEC_SQL with several statements; parameters consumed in order.
	res, err := conn.Exec(ctx, &wire.Request{Type: wire.ReqExecSQL, DB: db,
		SQL: "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, at DATETIME, ok BOOLEAN, data BLOB);" +
			" INSERT INTO t (name) VALUES (?); INSERT INTO t (name, ok) VALUES (?, ?)",
		Params: []wire.Value{{Type: wire.Text, V: "a"}, {Type: wire.Text, V: "b"}, {Type: wire.Boolean, V: int64(1)}}})
	if err != nil || res.LastInsertID != 2 || res.RowsAffected != 1 {
		t.Fatalf("EXEC_SQL: %+v %v", res, err)
	}

	// EXEC_SQL of a blank string runs nothing and answers RESULT (0, 0),
	// as the C server does.
	for _, blank := range []string{"", "  \n\t"} {
		if res, err := conn.Exec(ctx, &wire.Request{Type: wire.ReqExecSQL, DB: db, SQL: blank}); err != nil ||
			res.LastInsertID != 0 || res.RowsAffected != 0 {
			t.Fatalf("EXEC_SQL %q: %+v %v", blank, res, err)
		}
	}

	// PREPARE (schema 0), EXEC with schema 0 and schema 1 parameters.
	st, err := conn.Call(ctx, &wire.Request{Type: wire.ReqPrepare, DB: db, SQL: "INSERT INTO t (name, at, data) VALUES (?, ?, ?)"}, wire.RespStmt)
	if err != nil || st.ParamCount != 3 {
		t.Fatalf("PREPARE: %+v %v", st, err)
	}
	params := []wire.Value{{Type: wire.Text, V: "c"}, {Type: wire.ISO8601, V: "2024-05-06 07:08:09"}, {Type: wire.Blob, V: []byte{1, 2}}}
	for schema := uint8(0); schema <= 1; schema++ {
		res, err = conn.Exec(ctx, &wire.Request{Type: wire.ReqExec, Schema: schema, DB: db, Stmt: st.Stmt, Params: params})
		if err != nil || res.RowsAffected != 1 {
			t.Fatalf("EXEC schema %d: %+v %v", schema, res, err)
		}
	}
	if err := conn.Empty(ctx, &wire.Request{Type: wire.ReqFinalize, DB: db, Stmt: st.Stmt}); err != nil {
		t.Fatalf("FINALIZE: %v", err)
	}
	if _, err := conn.Exec(ctx, &wire.Request{Type: wire.ReqExec, DB: db, Stmt: st.Stmt}); !errors.As(err, &we) || we.Code != wire.CodeNotFound {
		t.Fatalf("EXEC of a finalized statement: %v", err)
	}
	// PREPARE schema 1 returns the tail offset.
	st1, err := conn.Call(ctx, &wire.Request{Type: wire.ReqPrepare, Schema: 1, DB: db, SQL: "SELECT 1; SELECT 2"}, wire.RespStmt)
	if err != nil || st1.Tail != 9 {
		t.Fatalf("PREPARE schema 1: %+v %v", st1, err)
	}

	// Typed columns: DATETIME as ISO-8601 text, BOOLEAN, NULL in both.
	rr, err := conn.Query(ctx, &wire.Request{Type: wire.ReqQuerySQL, DB: db, SQL: "SELECT name, at, ok, data FROM t ORDER BY id"})
	if err != nil {
		t.Fatal(err)
	}
	var got [][]wire.Value
	for {
		row, err := rr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, row)
	}
	if len(got) != 4 || got[1][2].Type != wire.Boolean || got[1][2].V != int64(1) || got[0][2].Type != wire.Null ||
		got[0][1].Type != wire.ISO8601 || got[0][1].V != "" || got[2][1].V != "2024-05-06 07:08:09" ||
		got[2][3].Type != wire.Blob {
		t.Fatalf("typed rows: %v", got)
	}

	// A large result: QUERY of a prepared statement streams several ROWS.
	if _, err := conn.Exec(ctx, &wire.Request{Type: wire.ReqExecSQL, DB: db,
		SQL: "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 5000) " +
			"INSERT INTO t (name) SELECT printf('row %05d', i) FROM n"}); err != nil {
		t.Fatal(err)
	}
	q, err := conn.Call(ctx, &wire.Request{Type: wire.ReqPrepare, DB: db, SQL: "SELECT id, name FROM t WHERE id > ?"}, wire.RespStmt)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Send(ctx, &wire.Request{Type: wire.ReqQuery, DB: db, Stmt: q.Stmt, Params: []wire.Value{{Type: wire.Integer, V: int64(0)}}}); err != nil {
		t.Fatal(err)
	}
	msgs, rows := 0, 0
	for {
		h, body, err := conn.Receive(ctx)
		if err != nil || h.Type != wire.RespRows {
			t.Fatalf("ROWS: type %d %v", h.Type, err)
		}
		r, err := wire.DecodeRows(body)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Columns) != 2 || r.Columns[1] != "name" {
			t.Fatalf("columns of message %d: %v", msgs, r.Columns)
		}
		msgs++
		rows += len(r.Rows)
		if !r.More {
			break
		}
	}
	if rows != 5004 || msgs < 10 {
		t.Fatalf("%d rows in %d ROWS messages", rows, msgs)
	}
	// Parameters past the statement's are ignored, as the C server binds
	// as many as both have (EXEC does the same).
	extra, err := conn.Query(ctx, &wire.Request{Type: wire.ReqQuery, DB: db, Stmt: q.Stmt,
		Params: []wire.Value{{Type: wire.Integer, V: int64(5000)}, {Type: wire.Integer, V: int64(1)}}})
	if err != nil {
		t.Fatalf("QUERY with extra parameters: %v", err)
	}
	n := 0
	for {
		if _, err := extra.Next(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 4 {
		t.Fatalf("QUERY with extra parameters: %d rows, want 4 (id > 5000)", n)
	}
	if _, err := conn.Query(ctx, &wire.Request{Type: wire.ReqQuerySQL, DB: db, SQL: "SELECT 1; SELECT 2"}); !errors.As(err, &we) || we.Code != wire.CodeError {
		t.Fatalf("QUERY_SQL with a tail: %v", err)
	}

	// INTERRUPT mid-stream: exactly one EMPTY, then the next request works.
	rr, err = conn.Query(ctx, &wire.Request{Type: wire.ReqQuerySQL, DB: db, SQL: "SELECT a.id, b.id FROM t a, t b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rr.Next(); err != nil {
		t.Fatal(err)
	}
	if err := rr.Close(); err != nil {
		t.Fatalf("interrupt: %v", err)
	}
	if _, addr, err := conn.Leader(ctx); err != nil || addr != leaderAddr {
		t.Fatalf("request after the interrupt: %q %v", addr, err)
	}

	// CLUSTER, both formats.
	for format := uint64(0); format <= 1; format++ {
		servers, err := conn.Cluster(ctx, format)
		if err != nil || len(servers) != 3 {
			t.Fatalf("CLUSTER %d: %v %v", format, servers, err)
		}
		for i, s := range servers {
			if s.ID != uint64(i+1) || s.Address != c.Addrs[i] || s.Role != wire.RoleVoter {
				t.Fatalf("CLUSTER %d: server %d is %+v", format, i, s)
			}
		}
	}
	// DESCRIBE and WEIGHT.
	if err := conn.Empty(ctx, &wire.Request{Type: wire.ReqWeight, ID: 7}); err != nil {
		t.Fatal(err)
	}
	if _, w, err := conn.Describe(ctx); err != nil || w != 7 {
		t.Fatalf("DESCRIBE: weight %d %v", w, err)
	}

	// DUMP: a database file the sqlite3 tool opens.
	files, err := conn.Dump(ctx, "test")
	if err != nil || len(files) != 2 || files[0].Name != "test" || files[1].Name != "test-wal" || len(files[1].Data) != 0 {
		t.Fatalf("DUMP: %d files %v", len(files), err)
	}
	path := filepath.Join(t.TempDir(), "test")
	if err := os.WriteFile(path, files[0].Data, 0o644); err != nil {
		t.Fatal(err)
	}
	sqlite3, err := exec.LookPath("sqlite3")
	if err != nil {
		t.Fatal("the sqlite3 command-line tool is needed (apt-get install sqlite3; .ci/run installs it)")
	}
	out, err := exec.Command(sqlite3, path, "PRAGMA integrity_check; SELECT count(*) FROM t;").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok\n5004" {
		t.Fatalf("sqlite3 on the dump: %q %v", out, err)
	}
}
