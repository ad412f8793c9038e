// Package testcluster starts in-process node clusters on loopback for tests
// and benchmarks of the packages above node (driver, wire conformance,
// bench).
package testcluster

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/internal/buildtest"
	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/raft"
)

// Cluster is a running cluster.
type Cluster struct {
	Nodes []*node.Node
	Addrs []string
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
	}
	t.Cleanup(c.Close)
	return c
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
		if err := l.WaitFor(ctx, l.IsLeaderLocked); err == nil {
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
