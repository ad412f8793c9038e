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

	// A write queued behind the transaction, two more pipelined behind
	// it, then the connection closes: none of them runs.
	b, bdb := openOn(t, ctx, c.Addrs[li], "app")
	for i := 0; i < 3; i++ {
		if err := b.Send(ctx, &wire.Request{Type: wire.ReqExecSQL, DB: bdb, SQL: "INSERT INTO q VALUES (1)"}); err != nil {
			t.Fatal(err)
		}
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

// goClient behaves as an application on the Go client of the dqlite
// project does (its connector and driver under database/sql): a write gets
// three attempts with no delay between them (database/sql's retries on
// driver.ErrBadConn, which that driver returns for "not leader" answers
// and broken connections); an attempt without a connection first finds
// the leader (asking each known node LEADER, following the answer, and
// backing off until one names itself) and OPENs the database. Any other
// failure is the application's error.
type goClient struct {
	t        *testing.T
	addrs    []string
	conn     *wire.Conn
	db       uint32
	attempts int // failed attempts that a later one made good
}

// badConn reports errors that driver turns into driver.ErrBadConn.
func badConn(err error) bool {
	var we *wire.Error
	if errors.As(err, &we) {
		return we.Code == wire.CodeNotLeader || we.Code == wire.CodeNotLeaderLegacy
	}
	return true // the connection broke
}

func (g *goClient) drop() {
	if g.conn != nil {
		g.conn.Close()
		g.conn = nil
	}
}

// findLeader is the connector: bounded by ctx, backing off between rounds.
func (g *goClient) findLeader(ctx context.Context) (*wire.Conn, error) {
	backoff := time.Millisecond
	for {
		for _, a := range g.addrs {
			if c := g.probe(ctx, a, true); c != nil {
				return c, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff): // the connector's backoff, not a wait for a condition
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// probe dials a, asks LEADER and returns the connection if a names itself;
// if it names another node, follows once.
func (g *goClient) probe(ctx context.Context, a string, follow bool) *wire.Conn {
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := wire.Dial(pctx, a, nil)
	if err != nil {
		return nil
	}
	_, lead, err := c.Leader(pctx)
	switch {
	case err == nil && lead == a:
		return c
	case err == nil && lead != "" && follow:
		c.Close()
		return g.probe(ctx, lead, false)
	}
	c.Close()
	return nil
}

func (g *goClient) attempt(ctx context.Context, sql string, params []wire.Value) error {
	if g.conn == nil {
		c, err := g.findLeader(ctx)
		if err != nil {
			return fmt.Errorf("finding the leader: %w", err)
		}
		db, err := c.Open(ctx, "app")
		if err != nil {
			c.Close()
			return err
		}
		g.conn, g.db = c, db
	}
	_, err := g.conn.Exec(ctx, &wire.Request{Type: wire.ReqExecSQL, DB: g.db, SQL: sql, Params: params})
	if err != nil && badConn(err) {
		g.drop()
	}
	return err
}

// exec is one write as the application sees it.
func (g *goClient) exec(ctx context.Context, sql string, params ...wire.Value) error {
	var err error
	for try := 0; try < 3; try++ {
		if err = g.attempt(ctx, sql, params); err == nil {
			g.attempts += try
			return nil
		}
		if !badConn(err) {
			return err
		}
	}
	return fmt.Errorf("driver: bad connection after 3 attempts: %w", err)
}

// TestConformanceLeaderChanges: 200 writes in a loop around 20 leadership
// transfers and 5 leader kills, through a client that retries as the Go
// dqlite client does, all succeed: a new leader names itself only once it
// serves, TRANSFER answers once the target leads, and requests reaching a
// new leader wait behind its barrier (issue 16, item 3).
func TestConformanceLeaderChanges(t *testing.T) {
	c := testcluster.Start(t, 3, func(cfg *node.Config) { cfg.Tick = 20 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	li := c.Leader(t, ctx)
	g := &goClient{t: t, addrs: c.Addrs}
	defer g.drop()
	if err := g.exec(ctx, "CREATE TABLE w (i INTEGER)"); err != nil {
		t.Fatal(err)
	}
	transfers, kills, restart := 0, 0, -1
	for i := 0; i < 200; i++ {
		switch {
		case i%40 == 20:
			li = c.Leader(t, ctx)
			c.Stop(li)
			kills++
			restart = li
		case i%10 == 5:
			li = c.Leader(t, ctx)
			to := (li + 1) % 3
			if c.Nodes[to] == nil {
				to = (li + 2) % 3
			}
			admin, err := wire.Dial(ctx, c.Addrs[li], nil)
			if err != nil {
				t.Fatal(err)
			}
			err = admin.Empty(ctx, &wire.Request{Type: wire.ReqTransfer, ID: uint64(to + 1)})
			admin.Close()
			if err != nil {
				t.Fatalf("transfer %d: TRANSFER from %d to %d: %v", transfers, li+1, to+1, err)
			}
			transfers++
		}
		if err := g.exec(ctx, "INSERT INTO w (i) VALUES (?)", wire.Value{Type: wire.Integer, V: int64(i)}); err != nil {
			t.Fatalf("write %d (after %d transfers, %d kills): %v", i, transfers, kills, err)
		}
		if restart >= 0 {
			c.Restart(t, restart)
			restart = -1
		}
	}
	t.Logf("200 writes, %d transfers, %d leader kills: %d failed attempts retried", transfers, kills, g.attempts)
	li = c.Leader(t, ctx)
	for n, rows := range c.Contents(t, ctx, li, "app", "SELECT count(*), count(DISTINCT i), min(i), max(i) FROM w") {
		if fmt.Sprint(rows) != "[[200 200 0 199]]" {
			t.Fatalf("node %d holds %v, want 200 distinct writes", n+1, rows)
		}
	}
}

// TestConformanceRestartThenTransfer: a voter down for a while (its peers'
// redials backed off) is restarted, and TRANSFER to it is sent at once: it
// leads within one election timeout, ten times in a row (issue 16, item 4).
func TestConformanceRestartThenTransfer(t *testing.T) {
	const tick, electionTicks = 20 * time.Millisecond, 10
	election := tick * electionTicks
	c := testcluster.Start(t, 3, func(cfg *node.Config) { cfg.Tick, cfg.ElectionTicks = tick, electionTicks })
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	li := c.Leader(t, ctx)
	a, adb := openOn(t, ctx, c.Addrs[li], "app")
	execSQL(t, ctx, a, adb, "CREATE TABLE r (i INTEGER)")
	a.Close()
	var took []time.Duration
	for round := 0; round < 10; round++ {
		li = c.Leader(t, ctx)
		target := (li + 1 + round%2) % 3
		c.Stop(target)
		// Writes while it is down, and long enough down that the others'
		// redials to it back off to about a second (the scenario, not a
		// wait for a state).
		w, wdb := openOn(t, ctx, c.Addrs[li], "app")
		for i := 0; i < 5; i++ {
			execSQL(t, ctx, w, wdb, fmt.Sprintf("INSERT INTO r VALUES (%d)", round*10+i))
		}
		w.Close()
		<-time.After(1300 * time.Millisecond)
		c.Restart(t, target)
		admin, err := wire.Dial(ctx, c.Addrs[li], nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		err = admin.Empty(ctx, &wire.Request{Type: wire.ReqTransfer, ID: uint64(target + 1)})
		admin.Close()
		n := c.Nodes[target]
		if err == nil {
			wctx, wcancel := context.WithTimeout(ctx, election)
			err = n.WaitFor(wctx, n.IsLeaderLocked)
			wcancel()
		}
		d := time.Since(start)
		if err != nil || d > election {
			t.Fatalf("round %d: node %d restarted, then TRANSFER to it: %v after %v (election timeout %v)", round, target+1, err, d, election)
		}
		took = append(took, d.Round(time.Millisecond))
	}
	t.Logf("restart then transfer, 10 rounds: led after %v (election timeout %v)", took, election)
}
