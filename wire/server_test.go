package wire

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBackend serves the session logic without a node: a query returns
// rows 1..rows (one integer column), stepping 100 per Next. With yield set,
// each Next yields the processor first, so other goroutines (the session's
// reader) run while rows stream, as they would on a busy node.
type fakeBackend struct {
	rows       int64
	yield      bool
	stepped    atomic.Int64
	closed     atomic.Int64
	execs      atomic.Int64
	interrupts atomic.Int64
	notLeader  bool
}

func (f *fakeBackend) Leader() (uint64, string) { return 1, "leader:1" }
func (f *fakeBackend) IsLeader() bool           { return !f.notLeader }
func (f *fakeBackend) Exec(ctx context.Context, w *Write) (int64, int64, error) {
	f.execs.Add(1)
	if w.SQL == "FAIL" {
		return 0, 0, errors.New("boom")
	}
	return 1, int64(len(w.Params)), nil
}
func (f *fakeBackend) EndSession(uint64) {}
func (f *fakeBackend) Interrupt(uint64)  { f.interrupts.Add(1) }

func (f *fakeBackend) Open(ctx context.Context, name string) error { return nil }
func (f *fakeBackend) Prepare(ctx context.Context, session uint64, db, sql string) (int, int, error) {
	return 1, len(sql), nil
}
func (f *fakeBackend) Query(ctx context.Context, q *Write) (Cursor, error) {
	return &fakeCursor{f: f}, nil
}
func (f *fakeBackend) Cluster() []ServerInfo { return []ServerInfo{{1, "leader:1", 0}} }
func (f *fakeBackend) Dump(ctx context.Context, name string) ([]byte, error) {
	return make([]byte, 4096), nil
}
func (f *fakeBackend) Add(ctx context.Context, id uint64, address string) error { return nil }
func (f *fakeBackend) Assign(ctx context.Context, id, role uint64) error        { return nil }
func (f *fakeBackend) Remove(ctx context.Context, id uint64) error              { return nil }
func (f *fakeBackend) Transfer(ctx context.Context, id uint64) error            { return nil }
func (f *fakeBackend) Describe() (uint64, uint64)                               { return 0, 0 }
func (f *fakeBackend) SetWeight(w uint64) error                                 { return nil }
func (f *fakeBackend) ErrorCode(err error) (uint64, string)                     { return CodeLeaderExec, err.Error() }
func (f *fakeBackend) Peer(c net.Conn, r *bufio.Reader, id uint64, a string)    { c.Close() }

type fakeCursor struct {
	f *fakeBackend
	i int64
}

func (c *fakeCursor) Columns() []string { return []string{"n"} }
func (c *fakeCursor) Next(add func([]Value) bool) (bool, error) {
	if c.f.yield {
		runtime.Gosched()
	}
	for k := 0; k < 100; k++ {
		if c.i >= c.f.rows {
			return true, nil
		}
		c.i++
		c.f.stepped.Add(1)
		if !add([]Value{{Integer, c.i}}) {
			return false, nil
		}
	}
	return false, nil
}
func (c *fakeCursor) Close() { c.f.closed.Add(1) }

func startServer(t *testing.T, b Backend) string { return startServerWith(t, b, nil) }

// openedConn starts a server on b and returns a client connection to it
// with the database "db" open, and a context for its requests.
func openedConn(t *testing.T, b Backend) (*Conn, context.Context) {
	t.Helper()
	addr := startServer(t, b)
	ctx := ctx5(t)
	c := dial(t, addr)
	if _, err := c.Open(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	return c, ctx
}

// startServerWith is startServer with the server adjusted by tweak (when
// not nil) before it serves.
func startServerWith(t *testing.T, b Backend, tweak func(*Server)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(b, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if tweak != nil {
		tweak(srv)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			srv.Go(c)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done; srv.Close() })
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) *Conn {
	c, err := Dial(context.Background(), addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestMalformedMessages sends each malformed message on its own
// connection: the server answers FAILURE (or closes cleanly where framing
// is lost), and still serves a healthy connection afterwards.
func TestMalformedMessages(t *testing.T) {
	addr := startServer(t, &fakeBackend{rows: 10})
	ctx := ctx5(t)
	healthy := dial(t, addr)
	msg := func(typ, schema uint8, body []byte) []byte { return AppendMessage(nil, typ, schema, body) }
	u64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	open := msg(ReqOpen, 0, cat([]byte("db\x00\x00\x00\x00\x00\x00"), u64(0), []byte("volatile\x00\x00\x00\x00\x00\x00\x00\x00")))
	oversized := msg(ReqLeader, 0, u64(0))
	binary.LittleEndian.PutUint32(oversized, 0xffffffff)
	cases := []struct {
		name    string
		send    []byte
		failure uint64 // 0: a clean close
	}{
		{"oversized length", oversized, CodeParse},
		{"truncated text", msg(ReqOpen, 0, []byte("abcdefgh")), CodeParse},
		{"missing NUL", cat(open, msg(ReqExecSQL, 0, cat(u64(0), []byte("SELECT 1")))), CodeParse},
		{"unknown type", msg(99, 0, u64(0)), CodeParse},
		{"unknown schema", cat(open, msg(ReqExecSQL, 7, cat(u64(0), []byte("X\x00\x00\x00\x00\x00\x00\x00")))), CodeError},
		{"unknown params schema byte count", cat(open, msg(ReqExecSQL, 0, cat(u64(0), []byte("X\x00\x00\x00\x00\x00\x00\x00"), []byte{9, 1, 0, 0, 0, 0, 0, 0}))), CodeParse},
		{"too many params", cat(open, msg(ReqExecSQL, 1, cat(u64(0), []byte("X\x00\x00\x00\x00\x00\x00\x00"), []byte{0xff, 0xff, 0, 0, 0, 0, 0, 0}))), CodeParse},
		{"unknown value type", cat(open, msg(ReqExecSQL, 0, cat(u64(0), []byte("X\x00\x00\x00\x00\x00\x00\x00"), []byte{1, 42, 0, 0, 0, 0, 0, 0}, u64(1)))), CodeParse},
		{"body shorter than its fields", msg(ReqCluster, 0, nil), CodeParse},
		{"zero-word EXEC", cat(open, msg(ReqExec, 0, nil)), CodeParse},
		{"bad cluster format", msg(ReqCluster, 0, u64(9)), CodeParse},
		{"bad describe format", msg(ReqDescribe, 0, u64(3)), CodeDescribeFormat},
		{"unknown role", msg(ReqAssign, 0, cat(u64(2), u64(7))), CodeError},
		{"no database open", msg(ReqExecSQL, 0, cat(u64(0), []byte("X\x00\x00\x00\x00\x00\x00\x00"))), CodeNotFound},
		{"no such statement", cat(open, msg(ReqExec, 0, cat(u64(5)))), CodeNotFound},
		{"second OPEN", cat(open, open), CodeBusy},
		{"CONNECT late", cat(open, msg(ReqConnect, 0, cat(u64(2), []byte("x\x00\x00\x00\x00\x00\x00\x00")))), CodeParse},
		{"truncated header", []byte{1, 0, 0}, 0},
		{"truncated body", msg(ReqLeader, 0, u64(0))[:12], 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(5 * time.Second))
			nc.Write(u64(ProtocolVersion))
			nc.Write(c.send)
			if c.failure == 0 {
				nc.(*net.TCPConn).CloseWrite()
			}
			r := bufio.NewReader(nc)
			var last *Response
			for {
				h, body, err := ReadMessage(r, MaxMessageBytes)
				if err != nil {
					if errors.Is(err, io.EOF) {
						break
					}
					t.Fatalf("reading: %v", err)
				}
				resp, err := DecodeResponse(h, body, 0)
				if err != nil {
					t.Fatalf("bad response: %v", err)
				}
				last = resp
				if resp.Type == RespFailure {
					break
				}
			}
			if c.failure == 0 {
				if last != nil {
					t.Fatalf("want a clean close, got %+v", last)
				}
				return
			}
			if last == nil || last.Type != RespFailure || last.Code != c.failure {
				t.Fatalf("want FAILURE %d, got %+v", c.failure, last)
			}
			if last.Message == "" {
				t.Fatal("FAILURE without a message")
			}
		})
		// The server keeps serving other connections.
		if _, _, err := healthy.Leader(ctx); err != nil {
			t.Fatalf("after %s: healthy connection: %v", c.name, err)
		}
	}
}

// TestInterruptMidStream checks an INTERRUPT sent while ROWS stream stops
// the query (far fewer rows stepped than the result has), that the query
// and the interrupt produce exactly one EMPTY, and that the connection
// serves the next request.
func TestInterruptMidStream(t *testing.T) {
	f := &fakeBackend{rows: 10_000_000}
	c, ctx := openedConn(t, f)
	rr, err := c.Query(ctx, &Request{Type: ReqQuerySQL, SQL: "SELECT n"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rr.Next(); err != nil || !rr.more {
		t.Fatalf("first row: %v (more %v)", err, rr.more)
	}
	if err := rr.Close(); err != nil {
		t.Fatal(err)
	}
	// The next request gets its own reply: no stray EMPTY is left.
	if id, _, err := c.Leader(ctx); err != nil || id != 1 {
		t.Fatalf("request after interrupt: %d %v", id, err)
	}
	if n := f.stepped.Load(); n >= f.rows/10 {
		t.Fatalf("%d of %d rows stepped: the interrupt did not stop the query", n, f.rows)
	}
	if f.closed.Load() != 1 {
		t.Fatalf("cursor closed %d times", f.closed.Load())
	}
	// An INTERRUPT with nothing running gets its EMPTY.
	if err := c.Empty(ctx, &Request{Type: ReqInterrupt}); err != nil {
		t.Fatal(err)
	}
}

// TestMultiBatchRows checks a large result arrives in several ROWS
// messages of about RowsBatchBytes, every row in order.
func TestMultiBatchRows(t *testing.T) {
	f := &fakeBackend{rows: 5000}
	addr := startServer(t, f)
	ctx := ctx5(t)
	c := dial(t, addr)
	c.Open(ctx, "db")
	if err := c.Send(ctx, &Request{Type: ReqQuerySQL, SQL: "SELECT n"}); err != nil {
		t.Fatal(err)
	}
	var msgs, n int64
	for {
		h, body, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if h.Type != RespRows || len(body) > RowsBatchBytes+64 {
			t.Fatalf("message type %d of %d bytes", h.Type, len(body))
		}
		r, err := DecodeRows(body)
		if err != nil {
			t.Fatal(err)
		}
		msgs++
		for _, row := range r.Rows {
			n++
			if row[0].V != n {
				t.Fatalf("row %d is %v", n, row[0].V)
			}
		}
		if !r.More {
			break
		}
	}
	if n != f.rows || msgs < 5 {
		t.Fatalf("%d rows in %d messages", n, msgs)
	}
}

// TestNotLeader checks requests that need the leader get 10250 from a
// follower, and LEADER/CLUSTER are answered.
func TestNotLeader(t *testing.T) {
	addr := startServer(t, &fakeBackend{notLeader: true})
	ctx := ctx5(t)
	c := dial(t, addr)
	_, err := c.Open(ctx, "db")
	var we *Error
	if !errors.As(err, &we) || we.Code != CodeNotLeader {
		t.Fatalf("OPEN on a follower: %v", err)
	}
	if _, a, err := c.Leader(ctx); err != nil || a != "leader:1" {
		t.Fatalf("LEADER: %q %v", a, err)
	}
	if s, err := c.Cluster(ctx, 1); err != nil || len(s) != 1 {
		t.Fatalf("CLUSTER: %v %v", s, err)
	}
	if err := c.Empty(ctx, &Request{Type: ReqHeartbeat, ID: 1}); err != nil {
		t.Fatalf("HEARTBEAT: %v", err)
	}
}

// FuzzRequest feeds arbitrary bodies of every request type and schema to
// the request decoder: errors, never a panic.
func FuzzRequest(f *testing.F) {
	for _, r := range []Request{
		{Type: ReqOpen, Name: "db", VFS: "v"},
		{Type: ReqExecSQL, Schema: 1, SQL: "SELECT ?", Params: []Value{{Integer, int64(1)}}},
		{Type: ReqExec, Schema: SchemaDedup, Stmt: 1, Client: 1, Seq: 2, Params: []Value{{Blob, []byte{1}}}},
		{Type: ReqAssign, ID: 1, Role: 2},
	} {
		msg, _ := EncodeRequest(&r)
		f.Add(msg[4], msg[5], msg[8:])
	}
	f.Fuzz(func(t *testing.T, typ, schema uint8, body []byte) {
		DecodeRequest(Header{Type: typ, Schema: schema}, body)
	})
}

// FuzzResponse feeds arbitrary bodies to the response and ROWS decoders.
func FuzzResponse(f *testing.F) {
	w := &RowsEncoder{Columns: []string{"a", "b"}}
	w.Add([]Value{{Integer, int64(1)}, {Text, "x"}})
	f.Add(uint8(RespRows), w.Finish(RowsDone)[8:])
	f.Add(uint8(RespServers), EncodeResponse(&Response{Type: RespServers, Servers: []ServerInfo{{1, "a", 0}}})[8:])
	f.Add(uint8(RespFiles), EncodeResponse(&Response{Type: RespFiles, Files: []File{{"a", make([]byte, 8)}}})[8:])
	f.Fuzz(func(t *testing.T, typ uint8, body []byte) {
		if typ == RespRows {
			DecodeRows(body)
			return
		}
		DecodeResponse(Header{Type: typ}, body, uint64(typ&1))
	})
}

// TestBufferRows: Buffer frees the connection for the next request while a
// query's rows are read later; past its limit the rest of the result is
// interrupted and the rows end with ErrBufferLimit after those read.
func TestBufferRows(t *testing.T) {
	f := &fakeBackend{rows: 5000}
	addr := startServer(t, f)
	ctx := ctx5(t)
	c := dial(t, addr)
	c.Open(ctx, "db")
	for _, limit := range []int{1 << 20, 3 * RowsBatchBytes} {
		rr, err := c.Query(ctx, &Request{Type: ReqQuerySQL, SQL: "SELECT n"})
		if err != nil {
			t.Fatal(err)
		}
		if err := rr.Buffer(limit); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, &Request{Type: ReqExecSQL, SQL: "INSERT"}); err != nil {
			t.Fatalf("request after Buffer: %v", err)
		}
		var n int64
		for {
			row, err := rr.Next()
			if err != nil {
				if limit == 1<<20 && err != io.EOF || limit < 1<<20 && !errors.Is(err, ErrBufferLimit) {
					t.Fatalf("limit %d: end of rows: %v", limit, err)
				}
				break
			}
			if n++; row[0].V != n {
				t.Fatalf("row %d is %v", n, row[0].V)
			}
		}
		if limit == 1<<20 && n != f.rows || limit < 1<<20 && (n == 0 || n >= f.rows) {
			t.Fatalf("limit %d: %d rows read", limit, n)
		}
	}
}
