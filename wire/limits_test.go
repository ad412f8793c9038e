package wire

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// TestMaxConnections checks Server.MaxConnections: with 3 connections open
// the 4th is closed by the server at once (its read ends, not times out),
// the 3 keep being served, and closing one frees a slot for a new one.
func TestMaxConnections(t *testing.T) {
	const limit = 3
	addr := startServerWith(t, &fakeBackend{rows: 10}, func(s *Server) { s.MaxConnections = limit })
	ctx := ctx5(t)

	var open []*Conn
	for i := 0; i < limit; i++ {
		c := dial(t, addr)
		if _, _, err := c.Leader(ctx); err != nil {
			t.Fatalf("connection %d of %d: %v", i+1, limit, err)
		}
		open = append(open, c)
	}
	// One past the limit: closed without a word.
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ne net.Error
	if _, err := extra.Read(make([]byte, 1)); err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("connection %d: read %v, want it closed by the server", limit+1, err)
	}
	for i, c := range open {
		if _, _, err := c.Leader(ctx); err != nil {
			t.Fatalf("connection %d after the refusal: %v", i+1, err)
		}
	}
	// Closing one frees its slot (once the server sees it end).
	open[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := Dial(ctx, addr, nil)
		if err == nil {
			_, _, err = c.Leader(ctx)
			c.Close()
			if err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot freed after closing a connection: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMaxPreparedStatements checks MaxStatements per connection: MaxStatements
// PREPAREs succeed, the next fails with a clear FAILURE (and the connection
// stays usable), and a FINALIZE frees a slot.
func TestMaxPreparedStatements(t *testing.T) {
	addr := startServer(t, &fakeBackend{rows: 10})
	ctx := ctx5(t)
	c := dial(t, addr)
	db, err := c.Open(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	prepare := func() (*Response, error) {
		return c.Call(ctx, &Request{Type: ReqPrepare, DB: db, SQL: "SELECT 1"}, RespStmt)
	}
	var first uint32
	for i := 0; i < MaxStatements; i++ {
		r, err := prepare()
		if err != nil {
			t.Fatalf("statement %d of %d: %v", i+1, MaxStatements, err)
		}
		if i == 0 {
			first = r.Stmt
		}
	}
	_, err = prepare()
	var we *Error
	if !errors.As(err, &we) || !strings.Contains(we.Message, "too many prepared statements") {
		t.Fatalf("statement %d: %v, want the limit's FAILURE", MaxStatements+1, err)
	}
	if _, err := c.Call(ctx, &Request{Type: ReqFinalize, DB: db, Stmt: first}, RespEmpty); err != nil {
		t.Fatalf("finalize: %v", err)
	}
	if _, err := prepare(); err != nil {
		t.Fatalf("after a finalize: %v", err)
	}
	if _, err := prepare(); err == nil {
		t.Fatal("the freed slot was counted twice")
	}
}
