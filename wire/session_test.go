package wire

import (
	"context"
	"testing"
	"time"
)

// pipeline writes reqs to c in one write, so the server reads them back to
// back without waiting for any response.
func pipeline(t *testing.T, c *Conn, reqs ...*Request) {
	t.Helper()
	var buf []byte
	for _, r := range reqs {
		msg, err := EncodeRequest(r)
		if err != nil {
			t.Fatal(err)
		}
		buf = append(buf, msg...)
	}
	c.NetConn().SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.NetConn().Write(buf); err != nil {
		t.Fatal(err)
	}
}

// execWithParams is an EXEC_SQL the fake backend answers with n rows
// affected (one per parameter), so each response names its request.
func execWithParams(n int) *Request {
	params := make([]Value, n)
	for i := range params {
		params[i] = Value{Integer, int64(i)}
	}
	return &Request{Type: ReqExecSQL, SQL: "INSERT", Params: params}
}

// readRows reads one query's ROWS messages to the end, checks they hold rows
// 1..rows in order, and returns how many messages there were.
func readRows(t *testing.T, ctx context.Context, c *Conn, rows int64) int {
	t.Helper()
	var msgs int
	var n int64
	for more := true; more; msgs++ {
		h, body, err := c.Receive(ctx)
		if err != nil {
			t.Fatalf("after %d rows: %v", n, err)
		}
		if h.Type != RespRows {
			t.Fatalf("after %d rows: response type %d, want ROWS", n, h.Type)
		}
		r, err := DecodeRows(body)
		if err != nil {
			t.Fatal(err)
		}
		for _, row := range r.Rows {
			if n++; row[0].V != n {
				t.Fatalf("row %d is %v", n, row[0].V)
			}
		}
		more = r.More
	}
	if n != rows {
		t.Fatalf("%d rows, want %d", n, rows)
	}
	return msgs
}

// readResult reads a RESULT and checks its rows affected (see
// execWithParams).
func readResult(t *testing.T, ctx context.Context, c *Conn, rowsAffected uint64) {
	t.Helper()
	r, err := c.receiveAs(ctx, RespResult, 0)
	if err != nil {
		t.Fatalf("want RESULT with %d rows affected: %v", rowsAffected, err)
	}
	if r.RowsAffected != rowsAffected {
		t.Fatalf("RESULT with %d rows affected, want %d: a response is missing or out of order",
			r.RowsAffected, rowsAffected)
	}
}

// TestPipelinedDuringRows sends, in one write, a query whose result spans
// several ROWS messages and two EXEC_SQL behind it: the session reads both
// while the rows stream, and each gets its own RESULT after the rows, in the
// order sent.
func TestPipelinedDuringRows(t *testing.T) {
	f := &fakeBackend{rows: 5000}
	c, ctx := openedConn(t, f)
	pipeline(t, c, &Request{Type: ReqQuerySQL, SQL: "SELECT n"}, execWithParams(1), execWithParams(2))
	if msgs := readRows(t, ctx, c, f.rows); msgs < 2 {
		t.Fatalf("the result came in %d ROWS message: the requests were not read during streaming", msgs)
	}
	readResult(t, ctx, c, 1)
	readResult(t, ctx, c, 2)
	if n := f.execs.Load(); n != 2 {
		t.Fatalf("%d EXEC_SQL ran, want 2", n)
	}
}

// TestPipelinedPastLimit pipelines three times MaxPipelinedRequests requests
// behind a streaming query, some of them queries that stream in turn while
// the rest wait: the session stops reading at the limit rather than dropping
// anything, and every request is answered, in order, with its own response.
// The fake cursor yields, so the reader runs while rows stream and the
// limit is reached (TestPollStreamingLimits checks the limits themselves).
func TestPipelinedPastLimit(t *testing.T) {
	f := &fakeBackend{rows: 20_000, yield: true}
	c, ctx := openedConn(t, f)
	n := 3 * MaxPipelinedRequests
	isQuery := func(i int) bool { return i%10 == 0 }
	reqs := []*Request{{Type: ReqQuerySQL, SQL: "SELECT n"}}
	for i := 1; i <= n; i++ {
		if isQuery(i) {
			reqs = append(reqs, &Request{Type: ReqQuerySQL, SQL: "SELECT n"})
		} else {
			reqs = append(reqs, execWithParams(i))
		}
	}
	pipeline(t, c, reqs...)
	readRows(t, ctx, c, f.rows)
	queries := 0
	for i := 1; i <= n; i++ {
		if isQuery(i) {
			readRows(t, ctx, c, f.rows)
			queries++
			continue
		}
		readResult(t, ctx, c, uint64(i))
	}
	if got, want := f.execs.Load(), int64(n-queries); got != want {
		t.Fatalf("%d EXEC_SQL ran, want %d", got, want)
	}
	if got := f.closed.Load(); got != int64(queries+1) {
		t.Fatalf("%d cursors closed, want %d", got, queries+1)
	}
}

// TestPendingLimits fills a session's pending the way its reader does,
// with more requests ready than pending takes: pending stops at
// MaxPipelinedRequests, or at MaxPipelinedBytes of bodies (the reader then
// waits: backpressure) and gives back what it took in order; a streaming
// query's poll takes the first INTERRUPT out of it, whatever came before.
func TestPendingLimits(t *testing.T) {
	newSession := func() *session {
		return &session{s: &Server{ctx: context.Background()}, queued: make(chan struct{}, 1),
			room: make(chan struct{}, 1), stop: make(chan struct{})}
	}
	msg := func(typ uint8, tag uint32, bodyBytes int) message {
		return message{h: Header{Words: tag, Type: typ}, body: make([]byte, bodyBytes)}
	}
	drain := func(t *testing.T, ss *session, want []uint32) {
		t.Helper()
		for i, w := range want {
			m, ok := ss.nextMessage()
			if !ok || m.h.Words != w {
				t.Fatalf("pending message %d: %+v (ok %v), want tag %d", i, m.h, ok, w)
			}
		}
		if _, ok := ss.pending.pop(); ok || ss.pending.bodyBytes != 0 {
			t.Fatalf("pending not empty after %d messages (%d bytes)", len(want), ss.pending.bodyBytes)
		}
	}
	cases := []struct {
		name      string
		ready     int // requests the client sent
		bodyBytes int
		want      int // taken into pending before the reader must wait
	}{
		{"count limit", 2 * MaxPipelinedRequests, 8, MaxPipelinedRequests},
		{"byte limit", MaxPipelinedRequests, MaxPipelinedBytes / 4, 4},
		{"one request past the byte limit", 2, MaxPipelinedBytes + 8, 1},
		{"under the limits", MaxPipelinedRequests - 1, 8, MaxPipelinedRequests - 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ss := newSession()
			taken := 0
			for i := 0; i < c.ready && !ss.pending.full(); i++ {
				if !ss.enqueue(msg(ReqExecSQL, uint32(i), c.bodyBytes)) {
					t.Fatal("enqueue refused")
				}
				taken++
			}
			if taken != c.want || ss.pending.count != c.want {
				t.Fatalf("%d taken, %d pending, want %d", taken, ss.pending.count, c.want)
			}
			if r := ss.pollStreaming(); r != pollContinue {
				t.Fatalf("poll: %v", r)
			}
			// A full pending makes the reader wait until the session takes
			// one, or the session ends.
			if taken < c.ready {
				close(ss.stop)
				if ss.enqueue(msg(ReqExecSQL, uint32(taken), c.bodyBytes)) {
					t.Fatal("enqueue into a full pending did not wait")
				}
			}
			var want []uint32
			for i := 0; i < c.want; i++ {
				want = append(want, uint32(i))
			}
			drain(t, ss, want)
		})
	}
	t.Run("interrupt", func(t *testing.T) {
		ss := newSession()
		for i, typ := range []uint8{ReqExecSQL, ReqQuerySQL, ReqInterrupt, ReqExecSQL, ReqInterrupt} {
			ss.enqueue(msg(typ, uint32(i), 8))
		}
		if r := ss.pollStreaming(); r != pollInterrupted {
			t.Fatalf("poll: %v, want pollInterrupted", r)
		}
		drain(t, ss, []uint32{0, 1, 3, 4})
	})
}

// TestInterruptWithPipelined sends a long query with an EXEC_SQL behind it,
// then an INTERRUPT once rows arrive: the query stops and ends with the one
// EMPTY, and the EXEC_SQL, read before the INTERRUPT, is answered after it,
// exactly once.
func TestInterruptWithPipelined(t *testing.T) {
	f := &fakeBackend{rows: 10_000_000}
	c, ctx := openedConn(t, f)
	pipeline(t, c, &Request{Type: ReqQuerySQL, SQL: "SELECT n"}, execWithParams(3))
	if h, _, err := c.Receive(ctx); err != nil || h.Type != RespRows {
		t.Fatalf("first response: type %d, %v", h.Type, err)
	}
	pipeline(t, c, &Request{Type: ReqInterrupt})
	for {
		h, _, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if h.Type == RespEmpty {
			break
		}
		if h.Type != RespRows {
			t.Fatalf("response type %d before the query's EMPTY", h.Type)
		}
	}
	readResult(t, ctx, c, 3)
	if id, _, err := c.Leader(ctx); err != nil || id != 1 {
		t.Fatalf("request after the interrupt: %d %v", id, err)
	}
	if n := f.stepped.Load(); n >= f.rows/10 {
		t.Fatalf("%d of %d rows stepped: the interrupt did not stop the query", n, f.rows)
	}
	if n := f.execs.Load(); n != 1 {
		t.Fatalf("%d EXEC_SQL ran, want 1", n)
	}
}

// TestInterruptFloodIdle: INTERRUPTs while nothing is served are each
// answered EMPTY and never reach the node (a flood of them costs it
// nothing).
func TestInterruptFloodIdle(t *testing.T) {
	f := &fakeBackend{}
	c, ctx := openedConn(t, f)
	for i := 0; i < 100; i++ {
		if err := c.Empty(ctx, &Request{Type: ReqInterrupt}); err != nil {
			t.Fatalf("INTERRUPT %d: %v", i, err)
		}
	}
	if n := f.interrupts.Load(); n != 0 {
		t.Fatalf("%d INTERRUPTs reached the backend with nothing being served", n)
	}
}
