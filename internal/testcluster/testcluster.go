// Package testcluster starts in-process node clusters on loopback for tests
// and benchmarks of the packages above node (driver, wire conformance,
// bench).
package testcluster

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3" // reads the nodes' dumps

	"github.com/dqlite-go/dqlite/internal/buildtest"
	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/raft"
)

// Cluster is a running cluster.
type Cluster struct {
	Nodes   []*node.Node
	Addrs   []string
	Configs []node.Config
}

// FreeAddrs returns n loopback addresses free at the time of the call.
func FreeAddrs(t testing.TB, n int) []string {
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

// Start starts size voters with their own data directories; tweak may
// change each node's config. The cluster is closed at the test's end.
func Start(t testing.TB, size int, tweak func(*node.Config)) *Cluster {
	addrs := FreeAddrs(t, size)
	var servers []raft.Server
	for i, a := range addrs {
		servers = append(servers, raft.Server{ID: raft.NodeID(i + 1), Address: a, Role: raft.Voter})
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("DQLITE_TEST_LOG") != "" {
		quiet = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	c := &Cluster{Addrs: addrs}
	for i := range addrs {
		cfg := node.Config{ID: raft.NodeID(i + 1), Address: addrs[i], Dir: t.TempDir(), Bootstrap: servers,
			Tick: 50 * time.Millisecond, Logger: quiet}
		if tweak != nil {
			tweak(&cfg)
		}
		n, err := node.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.Nodes = append(c.Nodes, n)
		c.Configs = append(c.Configs, cfg)
	}
	t.Cleanup(c.Close)
	return c
}

// Stop stops node i (Nodes[i] becomes nil): its sockets close as when its
// process dies.
func (c *Cluster) Stop(i int) {
	if c.Nodes[i] != nil {
		c.Nodes[i].Close()
		c.Nodes[i] = nil
	}
}

// Restart starts node i again on its address and data directory.
func (c *Cluster) Restart(t testing.TB, i int) {
	t.Helper()
	c.Stop(i)
	n, err := node.New(c.Configs[i])
	if err != nil {
		t.Fatalf("restarting node %d: %v", i+1, err)
	}
	c.Nodes[i] = n
}

// Close stops every node.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		if n != nil {
			n.Close()
		}
	}
}

// Leader waits for a leader ready to serve writes and returns its index in
// Nodes.
func (c *Cluster) Leader(t testing.TB, ctx context.Context) int {
	t.Helper()
	for {
		var live *node.Node
		for _, n := range c.Nodes {
			if n != nil {
				live = n
				break
			}
		}
		id, err := live.WaitLeader(ctx)
		if err != nil {
			t.Fatalf("no leader: %v", err)
		}
		l := c.Nodes[id-1]
		if l == nil {
			// A stopped node is still named leader by a peer that has not
			// noticed yet: wait until it does.
			if err := live.WaitFor(ctx, func() bool { return live.LeaderLocked() != id }); err != nil {
				t.Fatalf("no leader: %v", err)
			}
			continue
		}
		// Until it serves, or it learns it no longer leads.
		if err := l.WaitFor(ctx, func() bool { return l.IsLeaderLocked() || l.LeaderLocked() != id }); err != nil {
			t.Fatalf("no leader: node %d named leader: %v", id, err)
		}
		if l.IsLeader() {
			return int(id - 1)
		}
	}
}

// BuildDqlited builds the dqlited binary into dir and returns its path
// (for tests and benchmarks that run real processes). Called from a test,
// it also reads dqlited's sources (buildtest.Build), so go test reruns the
// test after a change to any of them instead of reporting it cached.
func BuildDqlited(dir string) (string, error) {
	return buildtest.Build(dir, "dqlited", "github.com/dqlite-go/dqlite/cmd/dqlited")
}

// Contents waits until every running node has applied everything the
// leader (Nodes[leader]) has, then returns, per node (nil for a stopped
// one), the rows query gives on a copy of the node's database name (its
// dump, opened with plain SQLite).
func (c *Cluster) Contents(t testing.TB, ctx context.Context, leader int, name, query string) [][][]any {
	t.Helper()
	target := c.Nodes[leader].Applied()
	out := make([][][]any, len(c.Nodes))
	for i, n := range c.Nodes {
		if n == nil {
			continue
		}
		if err := n.WaitFor(ctx, func() bool { return n.AppliedLocked() >= target }); err != nil {
			t.Fatalf("node %d catching up to %d: %v", i+1, target, err)
		}
		img, err := n.Dump(name)
		if err != nil {
			t.Fatalf("node %d: dump of %s: %v", i+1, name, err)
		}
		rows, err := QueryImage(t, img, query)
		if err != nil {
			t.Fatalf("node %d: %s: %v", i+1, query, err)
		}
		out[i] = rows
	}
	return out
}

// QueryImage runs query on a database image with plain SQLite.
func QueryImage(t testing.TB, img []byte, query string) ([][]any, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image.db")
	if err := os.WriteFile(path, img, 0o600); err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.Query(query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var out [][]any
	for rows.Next() {
		row := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range row {
			ptrs[i] = &row[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading rows: %w", err)
	}
	return out, nil
}
