package node

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/raft"
)

func freeAddrs(t testing.TB, n int) []string {
	var addrs []string
	var lns []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return addrs
}

func startCluster(t testing.TB, size int) []*Node {
	return startClusterWith(t, size, func(*Config) {})
}

func startClusterWith(t testing.TB, size int, tweak func(*Config)) []*Node {
	addrs := freeAddrs(t, size)
	var servers []raft.Server
	for i, a := range addrs {
		servers = append(servers, raft.Server{ID: raft.NodeID(i + 1), Address: a, Role: raft.Voter})
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var nodes []*Node
	for i := range addrs {
		cfg := Config{ID: raft.NodeID(i + 1), Address: addrs[i], Dir: t.TempDir(), Bootstrap: servers,
			Tick: 50 * time.Millisecond, Logger: quiet}
		tweak(&cfg)
		n, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.Close()
		}
	})
	return nodes
}

func leaderOf(t *testing.T, ctx context.Context, nodes []*Node) *Node {
	t.Helper()
	for {
		id, err := nodes[0].WaitLeader(ctx)
		if err != nil {
			t.Fatalf("no leader: %v", err)
		}
		var l *Node
		for _, n := range nodes {
			if n.cfg.ID == id {
				l = n
			}
		}
		if l == nil { // e.g. a removed leader not yet replaced: wait for news
			n0 := nodes[0]
			if err := n0.WaitFor(ctx, func() bool { return n0.LeaderLocked() != id }); err != nil {
				t.Fatalf("leader %d is not among the nodes given: %v", id, err)
			}
			continue
		}
		if err := l.WaitFor(ctx, l.IsLeaderLocked); err == nil {
			return l
		}
		if ctx.Err() != nil {
			t.Fatalf("node %d did not become a ready leader: %v", id, ctx.Err())
		}
	}
}

// TestConcurrentInsertsOverTCP runs a 3-node cluster over real TCP with its
// own data directories: 32 concurrent clients insert 10,000 rows by
// autocommit with no error, and every node ends with the same database image.
func TestConcurrentInsertsOverTCP(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (id INTEGER PRIMARY KEY, client INTEGER, v TEXT)"); err != nil {
		t.Fatal(err)
	}
	const clients, total = 32, 10000
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := c; i < total; i += clients {
				if _, err := l.Exec(ctx, "INSERT INTO t (id, client, v) VALUES (?, ?, ?)", i, c, fmt.Sprint("row ", i)); err != nil {
					errs <- fmt.Errorf("client %d insert %d: %w", c, i, err)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d inserts by %d clients in %v", total, clients, time.Since(start))
	rows, err := l.Query(ctx, "SELECT count(*), count(DISTINCT id) FROM t")
	if err != nil || rows[0][0] != int64(total) || rows[0][1] != int64(total) {
		t.Fatalf("rows %v %v", rows, err)
	}
	want := l.Applied()
	for _, n := range nodes {
		if err := n.WaitFor(ctx, func() bool { return n.loop.Applied() >= want }); err != nil {
			t.Fatalf("node %d did not catch up: %v", n.cfg.ID, err)
		}
	}
	var hashes []uint64
	for _, n := range nodes {
		h, err := n.ImageHash()
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, h)
	}
	if hashes[0] != hashes[1] || hashes[1] != hashes[2] {
		t.Fatalf("image hashes differ: %x", hashes)
	}
}

// TestRestartFromSnapshotAndLog restarts a follower from its data directory
// after snapshots compacted its log: it rebuilds its database from the
// snapshot and the log and ends with the leader's image.
func TestRestartFromSnapshotAndLog(t *testing.T) {
	nodes := startClusterWith(t, 3, func(c *Config) { c.SnapshotThreshold = 20 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 75; i++ {
		if _, err := l.Exec(ctx, "INSERT INTO t VALUES (?)", i); err != nil {
			t.Fatal(err)
		}
	}
	f := nodes[0]
	if f == l {
		f = nodes[1]
	}
	cfg := f.cfg
	want := l.Applied()
	// The follower compacts once its ticks' checkpoints moved its files
	// past the last snapshot.
	if err := f.WaitFor(ctx, func() bool { return f.loop.Applied() >= want && f.wal.Snapshot().Index > 0 }); err != nil {
		t.Fatalf("follower took no snapshot: %v", err)
	}
	f.Close()
	for i := 75; i < 100; i++ {
		if _, err := l.Exec(ctx, "INSERT INTO t VALUES (?)", i); err != nil {
			t.Fatal(err)
		}
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer r.Close()
	want = l.Applied()
	if err := r.WaitFor(ctx, func() bool { return r.loop.Applied() >= want }); err != nil {
		t.Fatalf("restarted node did not catch up: %v", err)
	}
	hl, err1 := l.ImageHash()
	hr, err2 := r.ImageHash()
	if err1 != nil || err2 != nil || hl != hr {
		t.Fatalf("images differ after restart: %x %x %v %v", hl, hr, err1, err2)
	}
}

// TestMembershipAndTransfer adds a fourth node (it starts empty, without a
// bootstrap), promotes it to voter so it receives the data, transfers
// leadership to it, removes the old leader, and dumps a database image that
// mattn/go-sqlite3 opens as a plain file.
func TestMembershipAndTransfer(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Exec(ctx, "INSERT INTO t VALUES (1), (2), (3)"); err != nil {
		t.Fatal(err)
	}
	addr := freeAddrs(t, 1)[0]
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	n4, err := New(Config{ID: 4, Address: addr, Dir: t.TempDir(), Tick: 50 * time.Millisecond, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer n4.Close()
	if err := l.Add(ctx, 4, addr); err != nil {
		t.Fatalf("add: %v", err)
	}
	if err := l.Add(ctx, 4, addr); err == nil {
		t.Fatal("adding a member twice succeeded")
	}
	if err := l.Assign(ctx, 4, raft.Voter); err != nil {
		t.Fatalf("assign: %v", err)
	}
	if err := l.Transfer(ctx, 4); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	if err := n4.WaitFor(ctx, func() bool { return n4.IsLeaderLocked() }); err != nil {
		t.Fatalf("node 4 did not become a ready leader: %v", err)
	}
	if err := n4.Remove(ctx, l.cfg.ID); err != nil {
		t.Fatalf("remove old leader: %v", err)
	}
	for _, s := range n4.Cluster() {
		if s.ID == l.cfg.ID {
			t.Fatalf("removed node still a member: %v", n4.Cluster())
		}
	}
	rows, err := n4.Query(ctx, "SELECT sum(x) FROM t")
	if err != nil || rows[0][0] != int64(6) {
		t.Fatalf("query on the new leader: %v %v", rows, err)
	}
	img, err := n4.Dump("db")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dump.db")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var sum int64
	if err := db.QueryRow("SELECT sum(x) FROM t").Scan(&sum); err != nil || sum != 6 {
		t.Fatalf("dump opened by sqlite: %d %v", sum, err)
	}
}

// TestRecoverAfterQuorumLoss loses two of three nodes for good, rewrites the
// survivor's membership to itself, and restarts it: it leads alone and keeps
// the data.
func TestRecoverAfterQuorumLoss(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Exec(ctx, "INSERT INTO t VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	want := l.Applied()
	survivor := nodes[0]
	if err := survivor.WaitFor(ctx, func() bool { return survivor.loop.Applied() >= want }); err != nil {
		t.Fatal(err)
	}
	cfg := survivor.cfg
	for _, n := range nodes {
		n.Close()
	}
	self := raft.Server{ID: cfg.ID, Address: cfg.Address, Role: raft.Voter}
	if err := Recover(cfg.Dir, []raft.Server{self}); err != nil {
		t.Fatal(err)
	}
	cfg.Bootstrap = nil
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.WaitFor(ctx, n.IsLeaderLocked); err != nil {
		t.Fatalf("recovered node does not lead: %v", err)
	}
	if _, err := n.Exec(ctx, "INSERT INTO t VALUES (8)"); err != nil {
		t.Fatal(err)
	}
	rows, err := n.Query(ctx, "SELECT sum(x) FROM t")
	if err != nil || rows[0][0] != int64(15) {
		t.Fatalf("after recovery: %v %v", rows, err)
	}
}

// TestLongQueryKeepsLeadership runs a query that steps for about a second
// on the leader: it is served in short batches between the loop's other
// events, so heartbeats continue (no election, same term) and a write from
// another client completes while it runs.
func TestLongQueryKeepsLeadership(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	termOf := func(n *Node) uint64 {
		var term uint64
		n.do(func() { term = n.loop.Raft().Basic().Term })
		return term
	}
	term := termOf(l)
	// Scans 6,000,000 generated rows and returns every thousandth: each
	// step does real work, and the whole query runs for about a second,
	// longer than the election timeout (10 ticks of 50 ms, randomized up to
	// twice that).
	const scanned, rows = 6000000, 6000
	q := fmt.Sprintf("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < %d) "+
		"SELECT x, x * 2 FROM c WHERE x %% 1000 = 0", scanned)
	type result struct {
		n   int
		err error
		d   time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		got, err := l.Query(ctx, q)
		done <- result{len(got), err, time.Since(start)}
	}()
	// A write while the query runs.
	writeDone := make(chan time.Time, 1)
	go func() {
		if _, err := l.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			t.Error(err)
		}
		writeDone <- time.Now()
	}()
	r := <-done
	if r.err != nil || r.n != rows {
		t.Fatalf("query: %d rows, %v", r.n, r.err)
	}
	w := <-writeDone
	t.Logf("query scanning %d rows took %v; the concurrent write finished %v before it", scanned, r.d, time.Since(w))
	for _, n := range nodes {
		if got := termOf(n); got != term {
			t.Fatalf("node %d moved from term %d to %d during the query", n.cfg.ID, term, got)
		}
	}
	if !l.IsLeader() {
		t.Fatal("the leader lost its leadership during the query")
	}
}

// TestLogMemoryBudget writes ten times the log's memory budget through a
// cluster whose snapshots compact the log: on every node the log's index
// and cached entries stay within the budget. A budget too small for the
// index between snapshots is refused at start.
func TestLogMemoryBudget(t *testing.T) {
	const budget = 512 << 10
	const threshold = 50
	if _, err := New(Config{ID: 1, Address: "127.0.0.1:0", Dir: t.TempDir(), SnapshotThreshold: threshold,
		LogMemoryBytes: 64 << 10}); err == nil || !strings.Contains(err.Error(), "log memory budget") {
		t.Fatalf("a 64 KiB budget with snapshots every %d entries: %v", threshold, err)
	}
	nodes := startClusterWith(t, 3, func(c *Config) { c.SnapshotThreshold, c.LogMemoryBytes = threshold, budget })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	var peak int64
	var appended uint64
	for i := 0; i < 800; i++ {
		if _, err := l.Exec(ctx, "INSERT INTO t VALUES (randomblob(2000))"); err != nil {
			t.Fatal(err)
		}
		if i%20 != 0 {
			continue
		}
		for _, n := range nodes {
			m := n.Metrics()
			if m.LogMemoryBytes > budget {
				t.Fatalf("node %d's log holds %d bytes (%d of them data), budget %d", n.cfg.ID, m.LogMemoryBytes, m.LogCacheBytes, budget)
			}
			peak = max(peak, m.LogMemoryBytes)
		}
	}
	appended = l.Metrics().AppendedBytes
	if appended < 10*budget {
		t.Fatalf("only %d bytes appended: the test must write well past the budget", appended)
	}
	t.Logf("%d bytes appended to the leader's log, at most %d held by a log (budget %d)", appended, peak, budget)
}

// TestLeaderRemovesItself removes the leader through its own API: the call
// returns once the change is applied (not at a timeout), and the two
// remaining voters elect a leader that serves writes.
func TestLeaderRemovesItself(t *testing.T) {
	nodes := startClusterWith(t, 3, func(c *Config) {
		if os.Getenv("NODE_TEST_LOG") != "" {
			c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	start := time.Now()
	if err := l.Remove(rctx, l.cfg.ID); err != nil {
		t.Fatalf("leader removing itself: %v after %v", err, time.Since(start))
	}
	took := time.Since(start)
	var rest []*Node
	for _, n := range nodes {
		if n != l {
			rest = append(rest, n)
		}
	}
	l2 := leaderOf(t, ctx, rest)
	if _, err := l2.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatalf("write on the new leader: %v", err)
	}
	for _, s := range l2.Cluster() {
		if s.ID == l.cfg.ID {
			t.Fatalf("removed leader still a member: %v", l2.Cluster())
		}
	}
	t.Logf("removal answered after %v", took)
}

// TestLongStepKeepsLeadership runs, on the leader, a query whose single
// SQLite step lasts several election timeouts (an aggregate cannot yield
// between rows). The loop is blocked meanwhile, but heartbeats sent on its
// behalf keep the followers from electing another leader: the term does
// not change and the leader still leads.
func TestLongStepKeepsLeadership(t *testing.T) {
	nodes, l, term, took := longStep(t, 8000000)
	if _, err := l.Exec(context.Background(), "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatalf("write on the leader after the query: %v", err)
	}
	for _, n := range nodes {
		if m := n.Metrics(); m.Term != term {
			t.Fatalf("node %d is in term %d, was %d: the long step cost the leader its leadership", n.cfg.ID, m.Term, term)
		}
	}
	t.Logf("one step of %v (election timeout 200ms): term %d kept", took, term)
}

// TestLongStepKeepAliveIsBounded lowers the keep-alive limit below the
// step's length: past it the heartbeats stop and the followers elect a
// new term, so a wedged loop cannot hold the cluster.
func TestLongStepKeepAliveIsBounded(t *testing.T) {
	old := keepAliveMax
	t.Cleanup(func() { keepAliveMax = old }) // registered first: runs after the nodes close
	keepAliveMax = 100 * time.Millisecond
	nodes, _, term, took := longStep(t, 16000000)
	if took < keepAliveMax+5*200*time.Millisecond {
		t.Fatalf("the step took %v: too short to pass the limit and an election", took)
	}
	moved := false
	for _, n := range nodes {
		if n.Metrics().Term != term {
			moved = true
		}
	}
	if !moved {
		t.Fatalf("a %v step with heartbeats capped at %v kept term %d: the limit is not enforced", took, keepAliveMax, term)
	}
}

// longStep runs, on the leader of a 3-node cluster with a 200 ms election
// timeout, a query whose single SQLite step counts rows rows, and returns
// the cluster, the leader, the term before the query and the query's time.
func longStep(t *testing.T, rows int) ([]*Node, *Node, uint64, time.Duration) {
	t.Helper()
	nodes := startClusterWith(t, 3, func(c *Config) { c.Tick, c.ElectionTicks = 20*time.Millisecond, 10 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	term := l.Metrics().Term
	start := time.Now()
	res, err := l.Query(ctx, fmt.Sprintf(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < %d)
		SELECT count(*) FROM c`, rows))
	took := time.Since(start)
	if err != nil || len(res) != 1 || res[0][0] != int64(rows) {
		t.Fatalf("query: %v %v", res, err)
	}
	if took < 3*200*time.Millisecond {
		t.Fatalf("the query's step took %v: too short to test anything (election timeout 200ms)", took)
	}
	return nodes, l, term, took
}

// TestAbstractUnixSockets runs a cluster whose nodes listen on abstract
// Unix sockets ("@name", as clients may dial): peers connect and a write
// replicates to every node.
func TestAbstractUnixSockets(t *testing.T) {
	var servers []raft.Server
	for i := 1; i <= 3; i++ {
		servers = append(servers, raft.Server{ID: raft.NodeID(i), Role: raft.Voter,
			Address: fmt.Sprintf("@dqlite-test-%d-%d-%d", os.Getpid(), time.Now().UnixNano(), i)})
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var nodes []*Node
	for _, s := range servers {
		n, err := New(Config{ID: s.ID, Address: s.Address, Dir: t.TempDir(), Bootstrap: servers,
			Tick: 50 * time.Millisecond, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		nodes = append(nodes, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	if _, err := l.Exec(ctx, "CREATE TABLE t (x); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	want := l.Applied()
	for _, n := range nodes {
		if err := n.WaitFor(ctx, func() bool { return n.loop.Applied() >= want }); err != nil {
			t.Fatalf("node %d did not apply the write: %v", n.cfg.ID, err)
		}
	}
}
