package node

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wal"
	"github.com/dqlite-go/dqlite/wire"
)

// Handover prepares the node to stop: a leader transfers leadership to the
// most up-to-date voter and waits until it no longer leads. A node that
// does not lead has nothing to hand over.
func (n *Node) Handover(ctx context.Context) error {
	if n.Leader() != n.cfg.ID {
		return nil
	}
	n.log.Info("handing leadership over before stopping")
	if err := n.Transfer(ctx, 0); err != nil {
		return fmt.Errorf("node: handover: %w", err)
	}
	return n.WaitFor(ctx, func() bool { return n.loop.Raft().Basic().State != raft.StateLeader })
}

// Ready reports whether the node knows a leader and has applied every
// entry it knows committed (readiness for /readyz).
func (n *Node) Ready() bool {
	var ok bool
	n.do(func() {
		b := n.loop.Raft().Basic()
		ok = b.Lead != raft.None && n.loop.Applied() >= b.Commit && n.loop.Err() == nil
	})
	return ok
}

// metrics are counters updated outside the loop.
type metrics struct {
	fsyncs, fsyncNanos, fsyncMaxNanos atomic.Uint64
	// The longest loop event, and the events over slowEvent.
	eventMaxNanos, eventsSlow atomic.Uint64
	appendEntries             atomic.Uint64 // entries appended (sum of batch sizes)
	appendBytes               atomic.Uint64 // entry payload bytes appended
	peerBytes                 atomic.Uint64 // bytes sent on peer links
	peerLinksRefused          atomic.Uint64 // incoming peer links that failed authentication
	peerMessagesInvalid       atomic.Uint64 // peer messages raft refused (the link was dropped)
	snapshots, snapshotBytes  atomic.Uint64
	restores                  atomic.Uint64
}

// Metrics is a point-in-time view of a node.
type Metrics struct {
	ID, Leader            raft.NodeID
	Term, Commit, Applied uint64
	LastIndex             uint64
	State                 string // leader, follower, candidate...
	Role                  string // voter, standby, spare, or "" when not a member
	Appends               uint64 // log appends (each one write and one fsync)
	AppendedEntries       uint64
	AppendedBytes         uint64  // entry payload bytes appended to the log
	FsyncSeconds          float64 // total time in appends
	FsyncMaxSeconds       float64
	PeerBytesSent         uint64
	PeerLinksRefused      uint64 // incoming peer links that failed authentication
	PeerMessagesInvalid   uint64 // peer messages refused as invalid (each dropped its link)
	Snapshots             uint64
	SnapshotBytes         uint64 // total size of the snapshots taken
	SnapshotsInstalled    uint64
	EventQueue, PeerQueue int // events waiting for the loop; messages waiting for peers
	QueuedWrites          int // writes waiting for the writer slot
	// DatabaseWALBytes is the WAL size of each database entries wrote
	// (the keys are the node's databases).
	DatabaseWALBytes map[string]int64
	// Reads counts how reads were served (lease, round, forwarded to the
	// leader, bounded-staleness from local state; read index requests
	// answered for other nodes).
	Reads          raft.ReadStats
	LogCacheBytes  int64 // entry data cached
	LogMemoryBytes int64 // index and cached data: within Config.LogMemoryBytes
	StorageFailed  bool
	// LoopEventMaxSeconds is the longest one loop event took (a tick, a
	// message, a request); LoopEventsSlow counts events over 100 ms.
	LoopEventMaxSeconds float64
	LoopEventsSlow      uint64
	// PageCacheBytes is the memory SQLite's page caches use (every
	// connection of every database; bounded by the cache settings).
	PageCacheBytes int64
	// WALMemoryBytes is the memory the databases' WALs hold (the
	// frames since the last checkpoint, and the room of the largest recent
	// transaction, kept until the database is idle for a second; then at
	// most 4 MiB once a checkpoint emptied the WAL).
	WALMemoryBytes int64
	// Checkpoints that failed (a full disk, an I/O error: the WAL keeps
	// the pages and they are retried) and the last failure.
	CheckpointFailures  uint64
	LastCheckpointError string
	// DurableIndex is the index every database file reflects (the log
	// is compacted up to it).
	DurableIndex uint64
	// SnapshotViews are the snapshot views opened to stream to other
	// nodes; SnapshotViewsOverrun those closed because writes under them
	// passed the held-WAL bound.
	SnapshotViews, SnapshotViewsOverrun uint64
	// SnapshotReceivedBytes counts the bytes of streamed snapshots this
	// node received.
	SnapshotReceivedBytes uint64
	// ApplyFailed: a committed entry failed to apply here; the node
	// stopped applying (and writing) rather than diverge from the others.
	ApplyFailed bool
}

// Metrics returns the node's metrics.
func (n *Node) Metrics() Metrics {
	m := Metrics{ID: n.cfg.ID}
	n.do(func() {
		st := n.loop.Raft().Status()
		m.Leader, m.Term, m.Commit, m.Applied, m.LastIndex = st.Lead, st.Term, st.Commit, n.loop.Applied(), st.LastIndex
		m.State = st.State.String()
		if s, ok := st.Config.Get(n.cfg.ID); ok {
			m.Role = s.Role.String()
		}
		for _, p := range n.peers {
			m.PeerQueue += len(p.queue)
		}
		m.QueuedWrites = n.loop.QueuedWrites()
		m.Reads = n.loop.Raft().ReadStats()
		m.DatabaseWALBytes = n.db.WALSizes()
		m.PageCacheBytes = n.db.CacheUsed()
		m.WALMemoryBytes = n.db.WALMemory()
		var last error
		m.CheckpointFailures, last = n.db.CheckpointStats()
		if last != nil {
			m.LastCheckpointError = last.Error()
		}
		m.DurableIndex = n.db.DurableIndex()
		m.SnapshotViews, m.SnapshotViewsOverrun = n.db.StreamStats()
		m.SnapshotReceivedBytes = n.db.ReceivedBytes()
		m.LogCacheBytes = n.wal.CachedBytes()
		m.LogMemoryBytes = n.wal.MemoryBytes()
		if err := n.loop.Err(); err != nil {
			m.ApplyFailed = errors.Is(err, loop.ErrApplyFailed)
			m.StorageFailed = !m.ApplyFailed
		}
	})
	m.EventQueue = len(n.events)
	m.Appends = n.metrics.fsyncs.Load()
	m.AppendedEntries = n.metrics.appendEntries.Load()
	m.AppendedBytes = n.metrics.appendBytes.Load()
	m.FsyncSeconds = float64(n.metrics.fsyncNanos.Load()) / 1e9
	m.FsyncMaxSeconds = float64(n.metrics.fsyncMaxNanos.Load()) / 1e9
	m.LoopEventMaxSeconds = float64(n.metrics.eventMaxNanos.Load()) / 1e9
	m.LoopEventsSlow = n.metrics.eventsSlow.Load()
	m.PeerBytesSent = n.metrics.peerBytes.Load()
	m.PeerLinksRefused = n.metrics.peerLinksRefused.Load()
	m.PeerMessagesInvalid = n.metrics.peerMessagesInvalid.Load()
	m.Snapshots = n.metrics.snapshots.Load()
	m.SnapshotBytes = n.metrics.snapshotBytes.Load()
	m.SnapshotsInstalled = n.metrics.restores.Load()
	return m
}

// countingStorage counts snapshots taken and installed.
type countingStorage struct {
	*wal.WAL
	m   *metrics
	log interface{ Info(string, ...any) }
}

func (s countingStorage) CreateSnapshot(meta raft.SnapshotMeta, data []byte) error {
	err := s.WAL.CreateSnapshot(meta, data)
	if err == nil {
		s.m.snapshots.Add(1)
		s.m.snapshotBytes.Add(uint64(len(data)))
		s.log.Info("snapshot taken", "index", meta.Index, "term", meta.Term, "bytes", len(data))
	}
	return err
}

func (s countingStorage) InstallSnapshot(sn raft.Snapshot) error {
	s.log.Info("installing a snapshot from the leader", "index", sn.Meta.Index, "bytes", len(sn.Data))
	err := s.WAL.InstallSnapshot(sn)
	if err == nil {
		s.m.restores.Add(1)
	}
	return err
}

// Roles configures role management: the leader keeps Voters voters and up
// to Standbys standbys among the members that answer, promoting spares and
// standbys (preferring failure domains the voters do not cover yet, then
// lower weight) and demoting members that stopped answering when a
// replacement exists.
type Roles struct {
	Voters, Standbys int
	// Interval between adjustments (default 1s).
	Interval time.Duration
}

// probeTimeout bounds one member's DESCRIBE probe.
const probeTimeout = 500 * time.Millisecond

type memberInfo struct {
	raft.Server
	online         bool
	domain, weight uint64
}

// manageRoles runs on every node; it acts only while the node leads.
func (n *Node) manageRoles() {
	defer n.wg.Done()
	iv := n.cfg.Roles.Interval
	if iv == 0 {
		iv = time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		case <-n.rolesKick:
		}
		if !n.IsLeader() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*iv)
		if err := n.adjustRoles(ctx); err != nil && !n.stopped() {
			n.log.Warn("role adjustment failed", "err", err)
		}
		cancel()
	}
}

// adjustRoles makes at most one membership change towards the targets.
func (n *Node) adjustRoles(ctx context.Context) error {
	members := n.probeMembers(ctx)
	var voters, standbys, spares []memberInfo
	onlineVoters, onlineStandbys := 0, 0
	domains := map[uint64]bool{}
	for _, m := range members {
		switch m.Role {
		case raft.Voter:
			voters = append(voters, m)
			if m.online {
				onlineVoters++
				domains[m.domain] = true
			}
		case raft.Standby:
			standbys = append(standbys, m)
			if m.online {
				onlineStandbys++
			}
		default:
			spares = append(spares, m)
		}
	}
	pick := func(cands []memberInfo) (memberInfo, bool) {
		var ok []memberInfo
		for _, c := range cands {
			if c.online {
				ok = append(ok, c)
			}
		}
		if len(ok) == 0 {
			return memberInfo{}, false
		}
		sort.Slice(ok, func(i, j int) bool {
			di, dj := domains[ok[i].domain], domains[ok[j].domain]
			if di != dj {
				return !di // a new failure domain first
			}
			if ok[i].weight != ok[j].weight {
				return ok[i].weight < ok[j].weight
			}
			return ok[i].ID < ok[j].ID
		})
		return ok[0], true
	}
	target := n.cfg.Roles
	switch {
	case onlineVoters < target.Voters:
		if c, ok := pick(append(standbys, spares...)); ok {
			n.log.Info("promoting to voter", "id", c.ID, "online_voters", onlineVoters)
			return n.Assign(ctx, c.ID, raft.Voter)
		}
	case len(voters) > target.Voters:
		// Too many voters (e.g. a replacement was promoted): demote one
		// that does not answer, else the last one.
		for _, v := range voters {
			if !v.online && v.ID != n.cfg.ID {
				n.log.Info("demoting an unresponsive voter to spare", "id", v.ID)
				return n.Assign(ctx, v.ID, raft.Spare)
			}
		}
	}
	if onlineStandbys < target.Standbys {
		if c, ok := pick(spares); ok {
			n.log.Info("promoting to standby", "id", c.ID)
			return n.Assign(ctx, c.ID, raft.Standby)
		}
	}
	for _, s := range standbys {
		if !s.online && len(standbys) > target.Standbys {
			n.log.Info("demoting an unresponsive standby to spare", "id", s.ID)
			return n.Assign(ctx, s.ID, raft.Spare)
		}
	}
	return nil
}

// probeMembers asks every member (in parallel) for its failure domain and
// weight; a member that answers is online. This node is online.
func (n *Node) probeMembers(ctx context.Context) []memberInfo {
	servers := n.Cluster()
	out := make([]memberInfo, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		out[i].Server = s
		if s.ID == n.cfg.ID {
			out[i].online, out[i].domain, out[i].weight = true, n.cfg.FailureDomain, n.weight.Load()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			c, err := wire.Dial(pctx, s.Address, n.cfg.TLS)
			if err != nil {
				return
			}
			defer c.Close()
			d, w, err := c.Describe(pctx)
			if err == nil {
				out[i].online, out[i].domain, out[i].weight = true, d, w
			}
		}()
	}
	wg.Wait()
	return out
}

// Join asks the cluster reachable at addresses to add this node (as a
// spare; role management promotes it). It retries until ctx ends.
func (n *Node) Join(ctx context.Context, addresses []string) error {
	backoff := 50 * time.Millisecond
	for {
		err := n.tryJoin(ctx, addresses)
		if err == nil {
			n.log.Info("joined the cluster", "via", addresses)
			return nil
		}
		n.log.Info("join attempt failed, retrying", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("node: join: %w (last: %v)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (n *Node) tryJoin(ctx context.Context, addresses []string) error {
	c, err := wire.FindLeader(ctx, addresses, n.cfg.TLS)
	if err != nil {
		return err
	}
	defer c.Close()
	servers, err := c.Cluster(ctx, 1)
	if err != nil {
		return err
	}
	for _, s := range servers {
		if s.ID == uint64(n.cfg.ID) {
			if s.Address != n.cfg.Address {
				return fmt.Errorf("node: id %d is already a member with address %s", n.cfg.ID, s.Address)
			}
			return nil // already a member (a restart)
		}
	}
	err = c.Empty(ctx, &wire.Request{Type: wire.ReqAdd, ID: uint64(n.cfg.ID), Address: n.cfg.Address})
	var we *wire.Error
	if errors.As(err, &we) && we.Code == wire.CodeBusy {
		return fmt.Errorf("membership change in progress: %w", err)
	}
	return err
}
