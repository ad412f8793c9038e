package node

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wal"
)

// Membership: adding, assigning, removing and transferring leadership (on
// the leader), the members as this node knows them, and recovering a
// cluster that lost its quorum.

// Add adds a node (as a spare) with the address it listens on; the reply
// comes once the change is committed. Call it on the leader.
func (n *Node) Add(ctx context.Context, id raft.NodeID, address string) error {
	_, err := n.request(ctx, func(rid uint64) loop.Output {
		return n.loop.RequestMembership(rid, raft.ConfigChange{Type: raft.ConfigAdd, ID: id, Address: address})
	})
	if err == nil {
		// Role management places the new member now, not at its next
		// interval: a spare receives nothing until it is promoted.
		select {
		case n.rolesKick <- struct{}{}:
		default:
		}
	}
	return err
}

// Assign gives a member a role (a promotion to voter first lets it catch up).
func (n *Node) Assign(ctx context.Context, id raft.NodeID, role raft.Role) error {
	_, err := n.request(ctx, func(rid uint64) loop.Output {
		return n.loop.RequestMembership(rid, raft.ConfigChange{Type: raft.ConfigAssign, ID: id, Role: role})
	})
	return err
}

// Remove removes a member (the leader too: it hands over once committed).
func (n *Node) Remove(ctx context.Context, id raft.NodeID) error {
	_, err := n.request(ctx, func(rid uint64) loop.Output {
		return n.loop.RequestMembership(rid, raft.ConfigChange{Type: raft.ConfigRemove, ID: id})
	})
	return err
}

// Transfer hands leadership to the voter to (0: the most up-to-date one)
// and returns once this node knows the target leads, or with an error when
// it did not win within about two election timeouts (see
// loop.RequestTransfer).
func (n *Node) Transfer(ctx context.Context, to raft.NodeID) error {
	_, err := n.request(ctx, func(rid uint64) loop.Output { return n.loop.RequestTransfer(rid, to) })
	return err
}

// Cluster returns the membership this node knows.
func (n *Node) Cluster() []raft.Server {
	m, _ := n.members.Load().(raft.Membership)
	return m.Clone().Servers
}

// Recover rewrites the membership of a stopped node's data directory, for a
// cluster that lost its quorum for good: it appends a configuration entry
// naming servers (which must include the node) to the local log. Start the
// node afterwards (and the other listed servers, with copies of this data
// directory or empty ones added back later). Entries the lost majority
// committed beyond this node's log are gone: recover from the node with the
// longest log.
func Recover(dir string, servers []raft.Server) error {
	m := raft.Membership{Servers: append([]raft.Server(nil), servers...)}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("node: recover: %w", err)
	}
	fs, err := wal.NewOSFS(dir)
	if err != nil {
		return err
	}
	w, _, err := wal.Open(fs, wal.Options{Logger: slog.Default()})
	if err != nil {
		return fmt.Errorf("node: recover: %w", err)
	}
	defer w.Close()
	hs, _ := w.InitialState()
	last := w.LastIndex()
	term, err := w.Term(last)
	if err != nil {
		return fmt.Errorf("node: recover: term of the last entry %d: %w", last, err)
	}
	term = max(term, hs.Term)
	if err := w.Append([]raft.Entry{{Index: last + 1, Term: term, Type: raft.EntryConfig,
		Data: raft.EncodeMembership(m)}}); err != nil {
		return fmt.Errorf("node: recover: %w", err)
	}
	return nil
}
