package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/raft"
)

// TestQueryRowsLimit checks maxQueryRows (lowered to 10): a query returning
// exactly the limit succeeds, one row more fails with ErrTooManyRows, and
// the node goes on serving (the cursor was closed).
func TestQueryRowsLimit(t *testing.T) {
	old := maxQueryRows
	t.Cleanup(func() { maxQueryRows = old }) // registered first: runs after the node closes
	maxQueryRows = 10
	nodes := startCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	rowsOf := func(n int) string {
		return fmt.Sprintf("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < %d) SELECT x FROM c", n)
	}
	if rows, err := l.Query(ctx, rowsOf(maxQueryRows)); err != nil || len(rows) != maxQueryRows {
		t.Fatalf("%d rows (the limit): %d rows, %v", maxQueryRows, len(rows), err)
	}
	if _, err := l.Query(ctx, rowsOf(maxQueryRows+1)); !errors.Is(err, ErrTooManyRows) {
		t.Fatalf("%d rows (limit %d): %v, want ErrTooManyRows", maxQueryRows+1, maxQueryRows, err)
	}
	if _, err := l.Exec(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatalf("a write after the refused query: %v", err)
	}
	if rows, err := l.Query(ctx, "SELECT count(*) FROM t"); err != nil || len(rows) != 1 {
		t.Fatalf("a query after the refused query: %v %v", rows, err)
	}
}

// countingHandler counts the log records with one message, at any level.
type countingHandler struct {
	msg string
	n   *atomic.Int64
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

// silentPeer listens and accepts connections but never answers, so a
// sender dialing it waits in the authentication exchange and its queue does
// not drain while a test fills it.
func silentPeer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// fillPeerQueue sends count messages of data bytes each, from the loop, to
// a peer that never answers, and returns the messages and bytes queued
// (failing if the sends block the loop).
func fillPeerQueue(t *testing.T, n *Node, count, data int) (int, int64) {
	t.Helper()
	const dead = raft.NodeID(99) // not a member: Raft itself sends it nothing
	addr := silentPeer(t)
	type result struct {
		msgs  int
		bytes int64
	}
	queued := make(chan result, 1)
	go n.do(func() {
		n.addrHints[dead] = addr
		for i := 0; i < count; i++ {
			n.send(raft.Message{Type: raft.MsgHeartbeat, From: n.cfg.ID, To: dead, Term: 1, Data: make([]byte, data)})
		}
		p := n.peers[dead]
		queued <- result{len(p.queue), p.queuedBytes.Load()}
	})
	select {
	case r := <-queued:
		return r.msgs, r.bytes
	case <-time.After(10 * time.Second):
		t.Fatalf("sending %d messages to a peer that answers nothing blocked the loop", count)
	}
	return 0, 0
}

// TestPeerQueueLimit checks peerQueueMax: sending, from the loop, 100
// messages more than the limit to a peer that never answers returns at
// once, leaves exactly peerQueueMax queued, and logs each of the 100 drops
// at debug.
func TestPeerQueueLimit(t *testing.T) {
	var drops atomic.Int64
	logger := slog.New(countingHandler{msg: "peer queue full, message dropped", n: &drops})
	nodes := startClusterWith(t, 1, func(c *Config) { c.Logger = logger })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leaderOf(t, ctx, nodes)
	const extra = 100
	if got, _ := fillPeerQueue(t, nodes[0], peerQueueMax+extra, 0); got != peerQueueMax {
		t.Fatalf("%d messages sent: %d queued, want %d", peerQueueMax+extra, got, peerQueueMax)
	}
	if got := drops.Load(); got != extra {
		t.Fatalf("%d drops logged, want %d", got, extra)
	}
}

// TestPeerQueueBytesLimit checks peerQueueBytesMax: large messages to a
// peer that never answers stop being queued once their data reaches the
// limit, long before the message count limit.
func TestPeerQueueBytesLimit(t *testing.T) {
	nodes := startCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leaderOf(t, ctx, nodes)
	const data = 1 << 20
	msgs, bytes := fillPeerQueue(t, nodes[0], 200, data)
	if bytes > peerQueueBytesMax || msgs < peerQueueBytesMax/(2*data) || msgs >= 200 {
		t.Fatalf("%d messages of %d bytes queued, %d bytes (limit %d)", msgs, data, bytes, peerQueueBytesMax)
	}
}
