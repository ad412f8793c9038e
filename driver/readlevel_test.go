package driver_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/driver"
	"github.com/dqlite-go/dqlite/internal/testcluster"
	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/raft"
)

// readStats returns each node's read counters (zero for a stopped node).
func readStats(c *testcluster.Cluster) []raft.ReadStats {
	out := make([]raft.ReadStats, len(c.Nodes))
	for i, n := range c.Nodes {
		if n != nil {
			out[i] = n.Metrics().Reads
		}
	}
	return out
}

// followerReads is how many reads the nodes other than leader served
// (asking the leader for a read index, or from local state) between two
// readStats.
func followerReads(before, after []raft.ReadStats, leader int) uint64 {
	var n uint64
	for i := range after {
		if i != leader {
			n += after[i].Forwarded + after[i].Stale - before[i].Forwarded - before[i].Stale
		}
	}
	return n
}

// pinConns returns n connections of db held for the test, each having run
// a first query (so each picked its read node: with as many connections
// as nodes, round-robin puts one on each node).
func pinConns(t *testing.T, ctx context.Context, db *sql.DB, n int) []*sql.Conn {
	t.Helper()
	conns := make([]*sql.Conn, n)
	for i := range conns {
		sc, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sc.Close() })
		var one int
		if err := sc.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("connection %d: first query: %v", i, err)
		}
		conns[i] = sc
	}
	return conns
}

// kvCluster starts 3 nodes with table kv holding the row (1, v), and
// returns the cluster, a context for the test (90 s), the leader's index
// and a database/sql handle at the default level.
func kvCluster(t *testing.T, v int) (*testcluster.Cluster, context.Context, int, *sql.DB) {
	t.Helper()
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	leader := c.Leader(t, ctx)
	writer := openDB(t, c.Addrs)
	if _, err := writer.ExecContext(ctx, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER)"); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.ExecContext(ctx, "INSERT INTO kv VALUES (1, ?)", v); err != nil {
		t.Fatal(err)
	}
	return c, ctx, leader, writer
}

func readerDB(t *testing.T, addrs []string, level driver.ReadLevel, maxStale time.Duration) (*sql.DB, *driver.Connector) {
	cn := driver.NewConnector(addrs, "test")
	cn.Read, cn.MaxStaleness = level, maxStale
	cn.RetryTimeout = 10 * time.Second
	db := sql.OpenDB(cn)
	t.Cleanup(func() { db.Close() })
	return db, cn
}

// TestReadLevelAnyLinearizable: with read=any, connections spread over
// the nodes (two of three on followers) read every write acknowledged
// before the read began (50 times: write i, read back i on each), and the
// followers served their share; at the default level, the followers serve
// none. Queries that may write and queries inside a transaction still go
// to the leader.
func TestReadLevelAnyLinearizable(t *testing.T) {
	c, ctx, leader, writer := kvCluster(t, -1)
	reader, _ := readerDB(t, c.Addrs, driver.ReadAny, 0)
	conns := pinConns(t, ctx, reader, len(c.Nodes))
	before := readStats(c)
	const rounds = 50
	for i := 0; i < rounds; i++ {
		if _, err := writer.ExecContext(ctx, "UPDATE kv SET v = ? WHERE k = 1", i); err != nil {
			t.Fatal(err)
		}
		for j, sc := range conns {
			var v int
			if err := sc.QueryRowContext(ctx, "SELECT v FROM kv WHERE k = 1").Scan(&v); err != nil {
				t.Fatalf("round %d, connection %d: %v", i, j, err)
			}
			if v != i {
				t.Fatalf("round %d, connection %d: read %d after the write of %d was acknowledged", i, j, v, i)
			}
		}
	}
	after := readStats(c)
	if l := c.Leader(t, ctx); l != leader {
		t.Skipf("leadership moved from node %d to %d during the test", leader+1, l+1)
	}
	// Two connections of three read on followers.
	if got := followerReads(before, after, leader); got < 2*rounds {
		t.Fatalf("followers served %d reads of %d, want at least %d (stats before %+v, after %+v)",
			got, len(conns)*rounds, 2*rounds, before, after)
	}

	// Inside a transaction, a query sees the transaction's own writes: it
	// went to the leader, in the transaction's session.
	tx, err := reader.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE kv SET v = 1000 WHERE k = 1"); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := tx.QueryRowContext(ctx, "SELECT v FROM kv WHERE k = 1").Scan(&v); err != nil || v != 1000 {
		t.Fatalf("query inside the transaction: %d %v", v, err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	// A query that writes goes to the leader (and writes once).
	if err := conns[0].QueryRowContext(ctx, "INSERT INTO kv (k, v) VALUES (2, 2) RETURNING v").Scan(&v); err != nil || v != 2 {
		t.Fatalf("INSERT ... RETURNING at read=any: %d %v", v, err)
	}

	// The default level: the followers serve nothing.
	plain := openDB(t, c.Addrs)
	pconns := pinConns(t, ctx, plain, len(c.Nodes))
	before = readStats(c)
	for i := 0; i < 10; i++ {
		for _, sc := range pconns {
			if err := sc.QueryRowContext(ctx, "SELECT v FROM kv WHERE k = 1").Scan(&v); err != nil || v != rounds-1 {
				t.Fatalf("read=leader: %d %v", v, err)
			}
		}
	}
	if got := followerReads(before, readStats(c), leader); got != 0 {
		t.Fatalf("read=leader: followers served %d reads", got)
	}
}

// TestReadLevelStale: read=stale&max_staleness=1s returns the rows from
// followers (from their own state once fresh); with a longer bound, a follower left alone (the
// leader and the other follower stopped: no leader can be elected) still
// serves from its state.
func TestReadLevelStale(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	leader := c.Leader(t, ctx)
	writer := openDB(t, c.Addrs)
	if _, err := writer.ExecContext(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.ExecContext(ctx, "INSERT INTO t VALUES (1), (2), (3)"); err != nil {
		t.Fatal(err)
	}
	// Every node has the rows (a stale read may otherwise miss them).
	target := c.Nodes[leader].Applied()
	for i, n := range c.Nodes {
		if err := n.WaitFor(ctx, func() bool { return n.AppliedLocked() >= target }); err != nil {
			t.Fatalf("node %d catching up: %v", i+1, err)
		}
	}
	reader, err := sql.Open("dqlite", strings.Join(c.Addrs, ",")+"/test?read=stale&max_staleness=1s")
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	conns := pinConns(t, ctx, reader, len(c.Nodes))
	read := func() {
		t.Helper()
		for j, sc := range conns {
			var n int
			if err := sc.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 3 {
				t.Fatalf("connection %d: %d rows, %v", j, n, err)
			}
		}
	}
	before := readStats(c)
	read()
	mid := readStats(c)
	if got := followerReads(before, mid, leader); got < 2 {
		t.Fatalf("followers served %d of %d stale reads, want 2", got, len(conns))
	}
	// A follower that asked the leader less than the bound ago serves
	// from its own state.
	read()
	var local uint64
	for i, s := range readStats(c) {
		if i != leader {
			local += s.Stale - mid[i].Stale
		}
	}
	if local < 2 {
		t.Fatalf("followers served %d of %d stale reads from their own state, want 2", local, len(conns))
	}

	// Leave one follower alone.
	alone := (leader + 1) % len(c.Nodes)
	for i := range c.Nodes {
		if i != alone {
			c.Stop(i)
		}
	}
	hour := driver.WithRead(ctx, driver.ReadStale, time.Hour)
	for j, sc := range conns {
		var n int
		if err := sc.QueryRowContext(hour, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 3 {
			t.Fatalf("connection %d with node %d alone: %d rows, %v", j, alone+1, n, err)
		}
	}
}

// TestReadLevelDSN: the data source name's parameters are checked.
func TestReadLevelDSN(t *testing.T) {
	for _, dsn := range []string{
		"127.0.0.1:1/test?bogus=1",
		"127.0.0.1:1/test?read=stale",
		"127.0.0.1:1/test?read=sometimes",
		"127.0.0.1:1/test?read=stale&max_staleness=0s",
		"127.0.0.1:1/test?read=stale&max_staleness=-1s",
		"127.0.0.1:1/test?read=any&max_staleness=soon",
		"127.0.0.1:1/test?read=%zz",
		"127.0.0.1:1/test?read=any&read_nodes=leader",
	} {
		if db, err := sql.Open("dqlite", dsn); err == nil {
			db.Close()
			t.Errorf("sql.Open(%q) succeeded", dsn)
		}
		if _, err := (&driver.Driver{}).OpenConnector(dsn); err == nil {
			t.Errorf("OpenConnector(%q) succeeded", dsn)
		}
	}
	for dsn, want := range map[string]struct {
		level driver.ReadLevel
		max   time.Duration
	}{
		"127.0.0.1:1/test":                                    {driver.ReadLeader, 0},
		"127.0.0.1:1/test?read=leader":                        {driver.ReadLeader, 0},
		"127.0.0.1:1,127.0.0.1:2/test?read=any":               {driver.ReadAny, 0},
		"127.0.0.1:1/test?read=stale&max_staleness=250ms":     {driver.ReadStale, 250 * time.Millisecond},
		"127.0.0.1:1/test?max_staleness=2s&read=stale":        {driver.ReadStale, 2 * time.Second},
		"127.0.0.1:1/test?read=any&max_staleness=1s&read=any": {driver.ReadAny, time.Second},
	} {
		c, err := (&driver.Driver{}).OpenConnector(dsn)
		if err != nil {
			t.Errorf("OpenConnector(%q): %v", dsn, err)
			continue
		}
		if cn := c.(*driver.Connector); cn.Read != want.level || cn.MaxStaleness != want.max || cn.ReadNodes != driver.ReadFollowers {
			t.Errorf("OpenConnector(%q): read %v, max_staleness %v, read_nodes %v; want %v, %v, followers", dsn, cn.Read, cn.MaxStaleness, cn.ReadNodes, want.level, want.max)
		}
	}
	for dsn, want := range map[string]driver.ReadNodes{
		"127.0.0.1:1/test?read=any&read_nodes=all":       driver.ReadAllNodes,
		"127.0.0.1:1/test?read=any&read_nodes=followers": driver.ReadFollowers,
	} {
		c, err := (&driver.Driver{}).OpenConnector(dsn)
		if err != nil {
			t.Errorf("OpenConnector(%q): %v", dsn, err)
		} else if got := c.(*driver.Connector).ReadNodes; got != want {
			t.Errorf("OpenConnector(%q): read_nodes %v, want %v", dsn, got, want)
		}
	}
}

// TestReadLevelFollowerStopped: with a follower stopped, read=any queries
// of every connection still succeed and stay linearizable: the connection
// whose read node was the follower moves to another node.
func TestReadLevelFollowerStopped(t *testing.T) {
	c, ctx, leader, writer := kvCluster(t, 0)
	reader, cn := readerDB(t, c.Addrs, driver.ReadAny, 0)
	cn.NotIdempotent = true // schema 3 without a session id works too
	conns := pinConns(t, ctx, reader, len(c.Nodes))
	check := func(want int) {
		t.Helper()
		for j, sc := range conns {
			var v int
			if err := sc.QueryRowContext(ctx, "SELECT v FROM kv WHERE k = 1").Scan(&v); err != nil || v != want {
				t.Fatalf("connection %d: %d %v, want %d", j, v, err, want)
			}
		}
	}
	check(0)
	stopped := (leader + 1) % len(c.Nodes)
	c.Stop(stopped)
	for i := 1; i <= 5; i++ {
		if _, err := writer.ExecContext(ctx, "UPDATE kv SET v = ? WHERE k = 1", i); err != nil {
			t.Fatal(err)
		}
		check(i)
	}
	// The remaining follower served reads after the stop.
	other := 3 - leader - stopped
	before := c.Nodes[other].Metrics().Reads
	check(5)
	if after := c.Nodes[other].Metrics().Reads; after.Forwarded <= before.Forwarded {
		t.Fatalf("node %d (follower) served no read: %+v then %+v", other+1, before, after)
	}
}

// TestReadLevelFallbackToLeader: when no known node accepts a read
// connection, a read=any query goes to the leader connection (at its
// level) instead of failing.
func TestReadLevelFallbackToLeader(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leader := c.Leader(t, ctx)
	reader, cn := readerDB(t, c.Addrs, driver.ReadAny, 0)
	cn.RetryTimeout = 3 * time.Second
	sc, err := reader.Conn(ctx) // connected to the leader
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cn.Store.Set(testcluster.FreeAddrs(t, 2)) // nothing listens there
	before := c.Nodes[leader].Metrics().Reads
	var v int
	if err := sc.QueryRowContext(ctx, "SELECT 7").Scan(&v); err != nil || v != 7 {
		t.Fatalf("read=any with no node for a read connection: %d %v", v, err)
	}
	if after := c.Nodes[leader].Metrics().Reads; after.Lease+after.Rounds <= before.Lease+before.Rounds {
		t.Fatalf("the leader served no read: %+v then %+v", before, after)
	}
}

func TestQueryRefusesLoneTxControl(t *testing.T) {
	c := testcluster.Start(t, 1, nil)
	defer c.Close()
	db, err := sql.Open("dqlite", strings.Join(c.Addrs, ",")+"/test?read=any")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// A BEGIN sent through Query would open a transaction the driver does
	// not know of: the read connection would then read outside it.
	if rows, err := db.QueryContext(ctx, "BEGIN"); !errors.Is(err, driver.ErrUseBeginTx) {
		if rows != nil {
			rows.Close()
		}
		t.Fatalf("QueryContext(BEGIN): %v, want ErrUseBeginTx", err)
	}
	if _, err := (&driver.Driver{}).OpenConnector("127.0.0.1:1/db?read=stale&max_staleness=2h"); err == nil {
		t.Fatalf("a staleness bound over 1h accepted")
	}
}

// TestTxReadsKeepTransactionAlive: queries served whole in the event that
// opened them (the prefetching cursor) count as activity of their
// transaction, as the rows stepped later do.
func TestTxReadsKeepTransactionAlive(t *testing.T) {
	c := testcluster.Start(t, 1, func(cfg *node.Config) { cfg.TxIdleTimeout = 300 * time.Millisecond })
	defer c.Close()
	db, err := sql.Open("dqlite", strings.Join(c.Addrs, ",")+"/test")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (1, 'a')"); err != nil {
		t.Fatal(err)
	}
	// The client's think time between reads is below the idle timeout;
	// the whole transaction lasts well past it.
	for i := 0; i < 10; i++ {
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatalf("read %d in the transaction: %v", i, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("commit after reads spanning %v: %v", time.Second, err)
	}
}

// ownReads is how many reads node i served from its own state (not
// counting the read index requests it answered for others).
func ownReads(st raft.ReadStats) uint64 { return st.Lease + st.Rounds + st.Forwarded + st.Stale }

// TestReadNodes: at read=any the read connections go to the followers
// alone by default (the leader serves none of their reads, and answers
// their read index requests), and to every node, the leader too, with
// read_nodes=all. When the read node becomes the leader, the connection's
// reads move to a follower once it reconnects to the new leader.
func TestReadNodes(t *testing.T) {
	c, ctx, leader, _ := kvCluster(t, 1)
	readAll := func(conns []*sql.Conn) {
		t.Helper()
		for i := 0; i < 5; i++ {
			for j, sc := range conns {
				var v int
				if err := sc.QueryRowContext(ctx, "SELECT v FROM kv WHERE k = 1").Scan(&v); err != nil || v != 1 {
					t.Fatalf("connection %d: %d %v", j, v, err)
				}
			}
		}
	}
	for _, nodes := range []driver.ReadNodes{driver.ReadFollowers, driver.ReadAllNodes} {
		reader, cn := readerDB(t, c.Addrs, driver.ReadAny, 0)
		cn.ReadNodes = nodes
		before := readStats(c)
		conns := pinConns(t, ctx, reader, 2*len(c.Nodes))
		readAll(conns)
		after := readStats(c)
		if l := c.Leader(t, ctx); l != leader {
			t.Skipf("leadership moved from node %d to %d during the test", leader+1, l+1)
		}
		onLeader := ownReads(after[leader]) - ownReads(before[leader])
		answered := after[leader].Answered - before[leader].Answered
		switch {
		case nodes == driver.ReadFollowers && (onLeader != 0 || answered == 0):
			t.Fatalf("read_nodes=%v: the leader served %d reads and answered %d read index requests, want 0 and some", nodes, onLeader, answered)
		case nodes == driver.ReadAllNodes && onLeader < 2*5:
			t.Fatalf("read_nodes=%v: the leader served %d reads, want its share (at least %d)", nodes, onLeader, 2*5)
		}
		if got := followerReads(before, after, leader); got < 4*5 {
			t.Fatalf("read_nodes=%v: the followers served %d reads, want at least %d", nodes, got, 4*5)
		}
	}

	// One connection reading on a follower, which then becomes the leader.
	reader, _ := readerDB(t, c.Addrs, driver.ReadAny, 0)
	sc := pinConns(t, ctx, reader, 1)[0]
	before := readStats(c)
	readAll([]*sql.Conn{sc})
	after := readStats(c)
	target := -1
	for i := range c.Nodes {
		if ownReads(after[i]) > ownReads(before[i]) {
			target = i
		}
	}
	if target < 0 || target == leader {
		t.Fatalf("the read node is %d, want a follower (leader %d)", target+1, leader+1)
	}
	if err := c.Nodes[leader].Transfer(ctx, raft.NodeID(target+1)); err != nil {
		t.Fatal(err)
	}
	// A write reconnects the connection to the new leader.
	if _, err := sc.ExecContext(ctx, "UPDATE kv SET v = 1 WHERE k = 1"); err != nil {
		t.Fatal(err)
	}
	before = readStats(c)
	readAll([]*sql.Conn{sc})
	after = readStats(c)
	if got := ownReads(after[target]) - ownReads(before[target]); got != 0 {
		t.Fatalf("node %d, now the leader, still served %d of the connection's reads", target+1, got)
	}
	if got := followerReads(before, after, target); got < 5 {
		t.Fatalf("the followers of the new leader served %d reads, want 5", got)
	}
}
