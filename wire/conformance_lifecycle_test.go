package wire_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/internal/testcluster"
	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/wire"
)

// openOn dials addr and opens database name.
func openOn(t *testing.T, ctx context.Context, addr, name string) (*wire.Conn, uint32) {
	t.Helper()
	c, err := wire.Dial(ctx, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	db, err := c.Open(ctx, name)
	if err != nil {
		t.Fatalf("OPEN %s on %s: %v", name, addr, err)
	}
	return c, db
}

func execSQL(t *testing.T, ctx context.Context, c *wire.Conn, db uint32, sql string) wire.Result {
	t.Helper()
	res, err := c.Exec(ctx, &wire.Request{Type: wire.ReqExecSQL, DB: db, SQL: sql})
	if err != nil {
		t.Fatalf("EXEC_SQL %q: %v", sql, err)
	}
	return res
}

// TestConformanceQueuedWriteDropped: a write queued behind an open
// transaction never applies when its connection closes, or when its
// client interrupts it, before it ran (issue 16, item 6).
func TestConformanceQueuedWriteDropped(t *testing.T) {
	// The transaction never idles out here: only the client's going away
	// may drop the queued writes.
	c := testcluster.Start(t, 3, func(cfg *node.Config) { cfg.TxIdleTimeout = time.Hour })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	li := c.Leader(t, ctx)
	leader := c.Nodes[li]
	queued := func(want int) {
		t.Helper()
		if err := leader.WaitFor(ctx, func() bool { return leader.QueuedWritesLocked() == want }); err != nil {
			t.Fatalf("waiting for %d queued writes: %v", want, err)
		}
	}

	a, adb := openOn(t, ctx, c.Addrs[li], "app")
	execSQL(t, ctx, a, adb, "CREATE TABLE q (x INTEGER)")
	execSQL(t, ctx, a, adb, "BEGIN")
	execSQL(t, ctx, a, adb, "INSERT INTO q VALUES (0)")

	// A write queued behind the transaction, then its connection closes.
	b, bdb := openOn(t, ctx, c.Addrs[li], "app")
	if err := b.Send(ctx, &wire.Request{Type: wire.ReqExecSQL, DB: bdb, SQL: "INSERT INTO q VALUES (1)"}); err != nil {
		t.Fatal(err)
	}
	queued(1)
	b.Close()
	queued(0)

	// A write queued behind the transaction, then INTERRUPT: it fails
	// (code 9, it never ran) and the INTERRUPT gets its own EMPTY.
	d, ddb := openOn(t, ctx, c.Addrs[li], "app")
	if err := d.Send(ctx, &wire.Request{Type: wire.ReqExecSQL, DB: ddb, SQL: "INSERT INTO q VALUES (2)"}); err != nil {
		t.Fatal(err)
	}
	queued(1)
	if err := d.Send(ctx, &wire.Request{Type: wire.ReqInterrupt, DB: ddb}); err != nil {
		t.Fatal(err)
	}
	var we *wire.Error
	if _, err := d.ReceiveAs(ctx, wire.RespResult); !errors.As(err, &we) || we.Code != wire.CodeInterrupt {
		t.Fatalf("interrupted queued write: %v, want failure code %d", err, wire.CodeInterrupt)
	}
	if _, err := d.ReceiveAs(ctx, wire.RespEmpty); err != nil {
		t.Fatalf("the INTERRUPT's own answer: %v", err)
	}
	queued(0)

	execSQL(t, ctx, a, adb, "COMMIT")
	// A later write on the interrupted connection runs as usual.
	execSQL(t, ctx, d, ddb, "INSERT INTO q VALUES (3)")
	for i, rows := range c.Contents(t, ctx, li, "app", "SELECT x FROM q ORDER BY x") {
		if fmt.Sprint(rows) != "[[0] [3]]" {
			t.Fatalf("node %d holds %v, want [[0] [3]]: a dropped write applied", i+1, rows)
		}
	}
}
