package node

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/raft"
)

// TestAddedSparePromotedAtOnce: a member added as a spare (as a joining
// node is) is placed by role management right after the add, not at its
// next interval: a spare is sent nothing, so a joining node would wait up to
// an interval (1 s by default) before receiving the data.
func TestAddedSparePromotedAtOnce(t *testing.T) {
	roles := Roles{Voters: 3, Standbys: 3, Interval: time.Hour}
	nodes := startClusterWith(t, 3, func(c *Config) { c.Roles = roles })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := leaderOf(t, ctx, nodes)
	addr := freeAddrs(t, 1)[0]
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	n4, err := New(Config{ID: 4, Address: addr, Dir: t.TempDir(), Tick: 50 * time.Millisecond, Logger: quiet, Roles: roles})
	if err != nil {
		t.Fatal(err)
	}
	defer n4.Close()
	if err := l.Add(ctx, 4, addr); err != nil {
		t.Fatalf("add: %v", err)
	}
	standby := func() bool {
		for _, s := range l.Cluster() {
			if s.ID == 4 {
				return s.Role == raft.Standby
			}
		}
		return false
	}
	if err := l.WaitFor(ctx, standby); err != nil {
		t.Fatalf("node 4 not promoted to standby with the role interval at an hour: %v (members %v)", err, l.Cluster())
	}
}
