package node

import (
	"context"
	"errors"
	"hash/fnv"
	"time"

	"github.com/dqlite-go/dqlite/raft"
)

// What the node knows, for its callers: waiting for a condition or a
// leader, whether it leads and serves, its applied index, and the
// databases' contents (hash, dump, names).

// WaitFor waits until cond, evaluated in the loop goroutine after events,
// holds, or ctx ends.
func (n *Node) WaitFor(ctx context.Context, cond func() bool) error {
	for {
		n.changedMu.Lock()
		ch := n.changed
		n.changedMu.Unlock()
		var ok bool
		if !n.do(func() { ok = cond() }) {
			return ErrClosed
		}
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.stop:
			return ErrClosed
		}
	}
}

// WaitLeader waits until this node knows a leader and returns it.
func (n *Node) WaitLeader(ctx context.Context) (raft.NodeID, error) {
	var lead raft.NodeID
	err := n.WaitFor(ctx, func() bool {
		lead = n.loop.Raft().Basic().Lead
		return lead != raft.None
	})
	return lead, err
}

// IsLeader reports whether this node leads and has applied everything
// committed (ready to serve writes).
func (n *Node) IsLeader() bool {
	var ok bool
	n.do(func() { ok = n.IsLeaderLocked() })
	return ok
}

// waitServing reports whether this node leads and serves. A node that
// Raft just made leader serves only once its first entry committed and
// everything before it applied (its barrier): requests arriving in between
// wait for it, for at most one election timeout, instead of being refused
// (a client that just followed a transfer or a failover here would retry
// at once and give up).
func (n *Node) waitServing() bool {
	if n.leading.Load() {
		return true
	}
	if !n.raftLeading.Load() {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.Tick*time.Duration(n.cfg.ElectionTicks))
	defer cancel()
	ok := false
	n.WaitFor(ctx, func() bool {
		ok = n.IsLeaderLocked()
		return ok || n.loop.Raft().Basic().State != raft.StateLeader
	})
	return ok
}

// IsLeaderLocked is IsLeader for use inside WaitFor conditions (which run
// in the loop goroutine).
func (n *Node) IsLeaderLocked() bool {
	b := n.loop.Raft().Basic()
	t, _ := n.loop.Raft().Term(b.Commit)
	return b.State == raft.StateLeader && t == b.Term && n.loop.Applied() >= b.Commit
}

// AppliedLocked is Applied for use inside WaitFor conditions.
func (n *Node) AppliedLocked() uint64 { return n.loop.Applied() }

// SnapshotsTaken counts the snapshots the node took (Metrics.Snapshots);
// it may be called inside WaitFor conditions.
func (n *Node) SnapshotsTaken() uint64 { return n.metrics.snapshots.Load() }

// QueuedWritesLocked is the number of writes waiting for the writer slot,
// for use inside WaitFor conditions.
func (n *Node) QueuedWritesLocked() int { return n.loop.QueuedWrites() }

// LeaderLocked is the leader this node knows, for use inside WaitFor
// conditions.
func (n *Node) LeaderLocked() raft.NodeID { return n.loop.Raft().Basic().Lead }

// Leader returns the id of the leader this node knows (0 if none).
func (n *Node) Leader() raft.NodeID {
	var lead raft.NodeID
	if !n.do(func() { lead = n.loop.Raft().Basic().Lead }) {
		return raft.None
	}
	return lead
}

// Applied returns the index of the last entry applied on this node.
func (n *Node) Applied() uint64 {
	var a uint64
	n.do(func() { a = n.loop.Applied() })
	return a
}

// ImageHash checkpoints the database and returns a hash of its image (for
// comparing replicas).
func (n *Node) ImageHash() (uint64, error) {
	var h uint64
	var err error
	if !n.do(func() {
		// The image is the committed state whatever the WAL holds: no
		// checkpoint (one under an open cursor would leave the WAL fully
		// copied but not truncated).
		if n.db.Pending() {
			err = errors.New("node: a write is pending")
			return
		}
		f := fnv.New64a()
		for _, name := range n.db.Names() {
			img, ierr := n.db.Image(name)
			if ierr != nil {
				err = ierr
				return
			}
			if len(img) > 0 { // a database never written is no state
				f.Write([]byte(name))
				f.Write(img)
			}
		}
		h = f.Sum64()
	}) {
		return 0, ErrClosed
	}
	return h, err
}

// Dump returns an image of database name (a file the sqlite3 tool opens),
// as of this node's applied state: empty when it has no pages yet,
// fsm.ErrNoDatabase when this node has no database of that name.
func (n *Node) Dump(name string) ([]byte, error) {
	var img []byte
	var err error
	if !n.do(func() { img, err = n.db.Image(name) }) {
		return nil, ErrClosed
	}
	return img, err
}

// Databases are the names of the databases this node holds.
func (n *Node) Databases() []string {
	var names []string
	n.do(func() { names = n.db.Names() })
	return names
}
