// Package node is the embedding API of dqlite-go: one replicated SQLite
// node with its data directory, its peers over TCP and its event loop.
//
// # Goroutines
//
// Each node owns: the loop goroutine (the only one touching Raft, the log's
// state and SQLite), a disk goroutine (appends and fsyncs, reported back as
// events), the busy-loop watchdog (heartbeats while one event runs long), a
// listener goroutine accepting connections (the wire server runs two per
// client connection, its session and its reader; an incoming peer link is
// read by its connection's goroutine), one sender goroutine per peer (with
// a watcher reading its link while it is up), the role manager when
// Config.Roles is on, and, while a request asks for the members' state,
// one probe per member (joined before it answers), and one writer per open
// database file (package vfs's behindFile: it writes and syncs what a
// checkpoint queued for the file, and stops when the file is closed).
// Close stops them all and waits for them. The database files (see package
// fsm) are otherwise read and written on the loop goroutine only.
package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/vfs"
	"github.com/dqlite-go/dqlite/wal"
	"github.com/dqlite-go/dqlite/wire"
)

// Config configures a node.
type Config struct {
	ID      raft.NodeID
	Address string // host:port to listen on for peers (or @name: an abstract Unix socket)
	Dir     string // data directory
	// Bootstrap is the initial membership of a new cluster; every initial
	// member passes the same list. Empty for a node joining later.
	Bootstrap []raft.Server
	// Tick is the Raft tick interval (default 50ms); the election timeout
	// is ElectionTicks ticks (default 10).
	Tick          time.Duration
	ElectionTicks int
	Mode          fsm.Mode // default ModeFrames
	PageSize      int      // default 4096
	// SnapshotThreshold is the number of applied entries between snapshots
	// (default: the loop's).
	SnapshotThreshold uint64
	// LogMemoryBytes bounds the memory the Raft log holds: its index (a
	// fixed size per retained entry) and the cached data of recent entries
	// (default 64 MiB). Snapshots bound the retained entries, so New
	// refuses a budget smaller than the index those entries can need.
	LogMemoryBytes int64
	// CacheBytes and ReadCacheBytes bound SQLite's page cache of each
	// database's write connection and of each of its read connections
	// (one per open query); defaults fsm.DefaultCacheBytes (16 MiB) and
	// fsm.DefaultReadCacheBytes (2 MiB). The pages themselves live in the
	// database files.
	CacheBytes, ReadCacheBytes int64
	// TxIdleTimeout bounds how long a transaction spanning requests may
	// hold the writer slot without a request before the node rolls it back
	// (default DefaultTxIdleTimeout).
	TxIdleTimeout time.Duration
	Logger        *slog.Logger
	// FailureDomain is reported by DESCRIBE (role management prefers
	// voters in distinct domains).
	FailureDomain uint64
	// ListenAddress is where the node listens (default: Address, which is
	// how clients and peers reach it, and may be a proxy or NAT in front).
	ListenAddress string
	// MaxClockDrift bounds how far any member's monotonic clock may run
	// fast or slow against true time (default raft.DefaultMaxClockDrift,
	// 10%): the leader's read lease is shortened to stay safe within it
	// (see docs/CONSISTENCY.md). NoLeaderLease turns the lease off:
	// every linearizable read then takes a heartbeat round, assuming
	// nothing about clocks.
	MaxClockDrift float64
	NoLeaderLease bool
	// Roles, when Voters > 0, turns on role management (see Roles).
	Roles Roles
	// TLS, when set, secures the listening port (clients and peers) and the
	// peer links this node dials: one config with the node's certificate,
	// RootCAs and ClientCAs of the cluster's CA, and ClientAuth set to
	// tls.RequireAndVerifyClientCert for mutual TLS. Off by default.
	TLS *tls.Config
	// Peer links (see docs/OPERATIONS.md, "Peer authentication"): a
	// connection that sends CONNECT becomes a peer link only once it proved
	// it belongs to the cluster, before any Raft message is read.
	//
	// ClusterKey, when set (at least wire.ClusterKeyBytesMin bytes, the
	// same on every member), is proved by both sides of every peer link in
	// a challenge-response; it never crosses the wire.
	ClusterKey []byte
	// PeerCAs, with TLS, is the pool of the CA (or CAs) that issue the
	// nodes' own certificates, distinct from the clients' CA: a dialing
	// peer's certificate must verify against it, so a client certificate
	// cannot open a peer link. TLS.ClientCAs must also trust it.
	PeerCAs *x509.CertPool
	// OpenPeerLinks accepts peer links that prove nothing. Without a key
	// or PeerCAs, New refuses to listen on anything but a loopback address
	// unless this is set: anyone who reaches an open port can then act as
	// a member of the cluster.
	OpenPeerLinks bool
}

// trailingEntries are kept in the log behind a snapshot, so a follower a
// little behind needs no snapshot.
const trailingEntries = 1024

// trailingBytes bounds the entry data kept behind a snapshot: a replica
// further behind than that gets the database files streamed.
const trailingBytes = 64 << 20

// logIndexBytes is the most memory the log's index may take: the log keeps
// entries since the older of its two snapshots, minus trailingEntries
// before it, plus the entries not yet applied (bounded by the pending
// requests on a leader and by the leader's flow control on a follower,
// about the same number), with the slack of a growing slice (2x).
func logIndexBytes(threshold uint64) int64 {
	if threshold == 0 {
		threshold = loop.DefaultSnapshotThreshold
	}
	entries := 2*threshold + trailingEntries + 2*loop.DefaultMaxPendingRequests
	return 2 * int64(entries) * wal.EntryIndexBytes
}

// Limits.
const (
	// peerQueueMax bounds the messages waiting to be sent to one peer;
	// past it messages are dropped (Raft retransmits).
	peerQueueMax = 4096
	// eventQueueMax bounds the events waiting for the loop.
	eventQueueMax = 4096
	dialTimeout   = time.Second
	// maxMsgBytes bounds the entries of one append message: one entry of
	// the largest size (one transaction's frames) fits alone.
	maxMsgBytes = raft.MaxMessageBytes
	// snapshotChunkBytes is the database bytes of one snapshot message: a
	// chunk is one loop event on each side (read from the leader's file,
	// written to the receiver's), with raft.DefaultSnapshotChunksInFlight
	// in flight.
	snapshotChunkBytes = 1 << 20
)

// ErrClosed is returned by requests on a closed node.
var ErrClosed = errors.New("node: closed")

// Node is a running dqlite-go node.
type Node struct {
	cfg    Config
	log    *slog.Logger
	wal    *wal.WAL
	vfs    *vfs.VFS
	db     *fsm.DB
	loop   *loop.Loop
	events chan func()
	disk   chan *loop.WriteJob
	ln     net.Listener
	peers  map[raft.NodeID]*peer // owned by the loop goroutine
	// addrHints are peers' addresses learnt from their hellos, for nodes
	// not (yet) in the membership this node knows. Loop goroutine only.
	addrHints map[raft.NodeID]string

	srv     *wire.Server // serves clients and peer links
	weight  atomic.Uint64
	metrics metrics

	// changed is closed (and replaced) whenever an event was handled, so
	// waiters can re-check a condition without polling.
	changedMu sync.Mutex
	changed   chan struct{}
	// rolesKick asks role management to run now (a member was added).
	rolesKick chan struct{}

	waiters map[uint64]chan loop.Reply // owned by the loop goroutine
	// eventKind names the loop event being handled, for the slow-event
	// log (owned by the loop goroutine).
	eventKind string
	// progressFrom and progressLogged track a long catch-up (loop
	// goroutine only).
	progressFrom, progressLogged uint64
	stopLogged                   bool // logStop reported loop.Err
	seenTerm                     uint64
	seenState                    raft.StateType
	seenLead                     raft.NodeID
	seenConfigIndex              uint64
	seenConfigTerm               uint64
	seenMembers                  string
	// leading caches IsLeaderLocked after every event, for the wire
	// server's per-request check without a trip through the loop;
	// raftLeading whether Raft leads (maybe not ready yet: see
	// waitServing).
	leading     atomic.Bool
	raftLeading atomic.Bool
	nextReq     atomic.Uint64
	nextSession atomic.Uint64
	// busySince is when the loop started its current event (unix nanos, 0
	// when idle), and keepAlive the heartbeats to send for it while it is
	// busy for long (see keepAliveWhileBusy).
	busySince atomic.Int64
	keepAlive atomic.Pointer[keepAlive]

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
	// fileWriters are the database files' writer goroutines (waited
	// for after the databases are closed, which stops them).
	fileWriters sync.WaitGroup
	members     atomic.Value // raft.Membership
}

var vfsSeq atomic.Uint64

// loopConfigHook lets tests adjust the loop's configuration (nil
// otherwise).
var loopConfigHook func(*loop.Config)

// DefaultTxIdleTimeout is Config.TxIdleTimeout's default.
const DefaultTxIdleTimeout = 10 * time.Second

// New opens the data directory, recovers the log and starts the node.
func New(cfg Config) (*Node, error) {
	if cfg.Tick == 0 {
		cfg.Tick = 50 * time.Millisecond
	}
	if cfg.ElectionTicks == 0 {
		cfg.ElectionTicks = 10
	}
	if cfg.TxIdleTimeout == 0 {
		cfg.TxIdleTimeout = DefaultTxIdleTimeout
	}
	if cfg.Mode == 0 {
		cfg.Mode = fsm.ModeFrames
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = 4096
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.LogMemoryBytes == 0 {
		cfg.LogMemoryBytes = wal.DefaultCacheBytes
	}
	if err := checkPeerAuth(&cfg); err != nil {
		return nil, err
	}
	if need := logIndexBytes(cfg.SnapshotThreshold); cfg.LogMemoryBytes < need {
		return nil, fmt.Errorf("node %d: log memory budget of %d bytes is below the %d bytes the log's index may need between snapshots (raise LogMemoryBytes or lower SnapshotThreshold)",
			cfg.ID, cfg.LogMemoryBytes, need)
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.ID), events: make(chan func(), eventQueueMax),
		disk: make(chan *loop.WriteJob, 1), peers: map[raft.NodeID]*peer{}, waiters: map[uint64]chan loop.Reply{},
		stop: make(chan struct{}), changed: make(chan struct{}), rolesKick: make(chan struct{}, 1),
		addrHints: map[raft.NodeID]string{}}
	if cfg.ClusterKey == nil && cfg.PeerCAs == nil {
		n.log.Warn("peer links are open: anything that reaches the port can act as a member "+
			"(set a cluster key or peer certificates; see docs/OPERATIONS.md)", "address", cfg.Address)
	}
	if err := n.open(); err != nil {
		n.closeResources()
		return nil, err
	}
	if err := n.loadWeight(); err != nil {
		n.closeResources()
		return nil, err
	}
	listen := cfg.ListenAddress
	if listen == "" {
		listen = cfg.Address
	}
	network := "tcp"
	if strings.HasPrefix(listen, "@") {
		network = "unix" // an abstract Unix socket, as the client dials "@name"
	}
	ln, err := net.Listen(network, listen)
	if err != nil {
		n.closeResources()
		return nil, fmt.Errorf("node %d: listen on %s: %w", cfg.ID, listen, err)
	}
	if cfg.TLS != nil {
		ln = tls.NewListener(ln, cfg.TLS)
	}
	n.ln = ln
	n.srv = wire.NewServer(backend{n}, n.log)
	n.members.Store(n.loop.Raft().Status().Config)
	n.wg.Add(4)
	go n.run()
	go n.diskWriter()
	go n.accept()
	go n.keepAliveWhileBusy()
	n.post(n.linkMembers)
	if cfg.Roles.Voters > 0 {
		n.wg.Add(1)
		go n.manageRoles()
	}
	return n, nil
}

// spawnFS is the data directory for the databases' files: the VFS has the
// node run each file's writer goroutine (see vfs.Spawner), which exits
// when the VFS closes the file.
type spawnFS struct {
	*wal.OSFS
	spawn func(run func())
}

func (fs spawnFS) Spawn(run func()) { fs.spawn(run) }

// spawnFileWriter runs a database file's writer goroutine; closeResources
// waits for them.
func (n *Node) spawnFileWriter(run func()) {
	n.fileWriters.Add(1)
	go func() {
		defer n.fileWriters.Done()
		run()
	}()
}

func (n *Node) open() error {
	fs, err := wal.NewOSFS(n.cfg.Dir)
	if err != nil {
		return err
	}
	w, rep, err := wal.Open(fs, wal.Options{Logger: n.log, TrailingEntries: trailingEntries, TrailingBytes: trailingBytes, CacheBytes: n.cfg.LogMemoryBytes})
	if err != nil {
		return fmt.Errorf("node %d: opening log: %w", n.cfg.ID, err)
	}
	n.wal = w
	if rep.TruncatedFile != "" {
		n.log.Warn("recovered a torn log tail", "file", rep.TruncatedFile, "bytes", rep.TruncatedBytes)
	}
	if w.LastIndex() == 0 && len(n.cfg.Bootstrap) > 0 {
		m := raft.Membership{Servers: append([]raft.Server(nil), n.cfg.Bootstrap...)}
		if err := m.Validate(); err != nil {
			return fmt.Errorf("node %d: bootstrap membership: %w", n.cfg.ID, err)
		}
		if err := w.Append([]raft.Entry{raft.BootstrapEntry(m)}); err != nil {
			return err
		}
		if err := w.SetHardState(raft.HardState{Term: 1}); err != nil {
			return err
		}
	}
	// The databases' files share the log's directory (and its FS). The
	// statement-replication comparison mode keeps them in memory, with
	// whole snapshots in the log (fsm.OpenFiles says why).
	vfsName := fmt.Sprintf("dqlite-node-%d-%d", n.cfg.ID, vfsSeq.Add(1))
	var db *fsm.DB
	if n.cfg.Mode == fsm.ModeStatements {
		v, verr := vfs.New(vfsName, uint64(n.cfg.ID), false)
		if verr != nil {
			return verr
		}
		if db, err = fsm.Open(v, DefaultDatabase, n.cfg.PageSize, n.cfg.Mode); err != nil {
			v.Close()
			return err
		}
		db.OwnVFS()
	} else if db, err = fsm.OpenFiles(spawnFS{fs, n.spawnFileWriter}, vfsName, uint64(n.cfg.ID), DefaultDatabase, n.cfg.PageSize, n.cfg.Mode); err != nil {
		return fmt.Errorf("node %d: opening databases: %w", n.cfg.ID, err)
	}
	db.SetCacheBytes(n.cfg.CacheBytes, n.cfg.ReadCacheBytes)
	n.db, n.vfs = db, db.VFS()
	n.vfs.SetTime(time.Now().UnixMilli())
	lc := loop.Config{
		Raft: raft.Config{ID: n.cfg.ID, ElectionTicks: n.cfg.ElectionTicks, HeartbeatTicks: 1, MaxMsgBytes: maxMsgBytes,
			MaxSnapshotChunkBytes: snapshotChunkBytes,
			Clock:                 monotonicClock(), TickNanos: int64(n.cfg.Tick), MaxClockDrift: n.cfg.MaxClockDrift, NoLease: n.cfg.NoLeaderLease},
		Storage: countingStorage{WAL: w, m: &n.metrics, log: n.log}, FSM: db, Rand: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(n.cfg.ID))),
		RequestTimeoutTicks: int(30 * time.Second / n.cfg.Tick),
		TxIdleTicks:         max(1, int(n.cfg.TxIdleTimeout/n.cfg.Tick)),
		SnapshotThreshold:   n.cfg.SnapshotThreshold,
		Batcher:             db,
	}
	if loopConfigHook != nil {
		loopConfigHook(&lc)
	}
	l, err := loop.New(lc)
	if err != nil {
		return fmt.Errorf("node %d: starting: %w", n.cfg.ID, err)
	}
	n.loop = l
	return nil
}

// monotonicClock is the node's clock for leases: nanoseconds on the
// monotonic clock since the node started (Go's time.Since reads
// CLOCK_MONOTONIC, which wall-clock changes do not move).
func monotonicClock() func() int64 {
	start := time.Now()
	return func() int64 { return int64(time.Since(start)) + 1 }
}

// run is the loop goroutine.
func (n *Node) run() {
	defer n.wg.Done()
	ticker := time.NewTicker(n.cfg.Tick)
	defer ticker.Stop()
	for {
		select {
		case <-n.stop:
			n.failWaiters(ErrClosed)
			return
		case <-ticker.C:
			start := time.Now()
			n.busySince.Store(start.UnixNano())
			n.vfs.SetTime(start.UnixMilli())
			n.eventKind = "tick"
			n.handle(n.loop.Tick())
			n.prepareKeepAlive()
			n.busySince.Store(0)
			n.noteEvent(start)
		case fn := <-n.events:
			start := time.Now()
			n.busySince.Store(start.UnixNano())
			fn()
			n.busySince.Store(0)
			n.noteEvent(start)
		}
	}
}

// slowEvent is the loop event duration counted as slow (a client or peer
// waits that long for anything the loop does).
const slowEvent = 100 * time.Millisecond

// noteEvent records how long the loop event that began at start took.
func (n *Node) noteEvent(start time.Time) {
	d := time.Since(start)
	if uint64(d) > n.metrics.eventMaxNanos.Load() {
		n.metrics.eventMaxNanos.Store(uint64(d)) // one writer: the loop
	}
	kind := n.eventKind
	n.eventKind = ""
	if d > slowEvent {
		n.metrics.eventsSlow.Add(1)
		if kind == "" {
			kind = "other"
		}
		n.log.Warn("slow loop event", "duration", d, "event", kind)
	}
}

// handle carries out a loop output.
func (n *Node) handle(out loop.Output) {
	for _, m := range out.Messages {
		n.send(m)
	}
	if out.Write != nil {
		select { // capacity 1: the loop has at most one write in flight
		case n.disk <- out.Write:
		case <-n.stop:
		}
	}
	for _, r := range out.Replies {
		if ch, ok := n.waiters[r.ID]; ok {
			delete(n.waiters, r.ID)
			ch <- r
		}
	}
	// The membership changes with its entry's index (or, when an entry is
	// overwritten at the same index, with the term).
	if ci, t := n.loop.Raft().ConfigIndex(), n.loop.Raft().Basic().Term; ci != n.seenConfigIndex || t != n.seenConfigTerm || n.members.Load() == nil {
		n.seenConfigIndex, n.seenConfigTerm = ci, t
		m := n.loop.Raft().Status().Config
		n.members.Store(m)
		if str := m.String(); str != n.seenMembers {
			n.seenMembers = str
			n.log.Info("membership", "index", ci, "servers", str)
		}
	}
	n.leading.Store(n.IsLeaderLocked())
	n.raftLeading.Store(n.loop.Raft().Basic().State == raft.StateLeader)
	if b := n.loop.Raft().Basic(); b.State != raft.StateLeader {
		if n.keepAlive.Load() != nil {
			n.keepAlive.Store(nil)
		}
	} else if ka := n.keepAlive.Load(); ka == nil || ka.term != b.Term {
		n.prepareKeepAlive() // a new leader: do not wait for the next tick
	}
	n.logRaftChanges()
	n.logProgress()
	n.logStop()
	n.changedMu.Lock()
	close(n.changed)
	n.changed = make(chan struct{})
	n.changedMu.Unlock()
}

// logStop logs, once, why the loop stopped the node (a storage failure or
// an entry it could not apply).
func (n *Node) logStop() {
	err := n.loop.Err()
	if err == nil || n.stopLogged {
		return
	}
	n.stopLogged = true
	if errors.Is(err, loop.ErrApplyFailed) {
		n.log.Error("a committed entry failed to apply: the node stopped applying and writing "+
			"(it would diverge from the others); restart it, or replace it with a fresh node", "applied", n.loop.Applied(), "err", err)
		return
	}
	n.log.Error("storage failed: the node stopped writing", "err", err)
}

// logRaftChanges logs changes of term, state and known leader.
func (n *Node) logRaftChanges() {
	b := n.loop.Raft().Basic()
	if b.Term == n.seenTerm && b.State == n.seenState && b.Lead == n.seenLead {
		return
	}
	n.seenTerm, n.seenState, n.seenLead = b.Term, b.State, b.Lead
	n.log.Info("raft state", "term", b.Term, "state", b.State.String(), "leader", b.Lead)
}

// progressEvery is how many applied entries pass between progress lines
// while the node catches up (start-up replay, a follower far behind).
const progressEvery = 10000

// logProgress logs catching up with a long backlog of committed entries.
func (n *Node) logProgress() {
	b := n.loop.Raft().Basic()
	applied := n.loop.Applied()
	if n.progressFrom == 0 && (applied >= b.Commit || b.Commit-applied < progressEvery) {
		return
	}
	switch {
	case n.progressFrom == 0:
		n.progressFrom, n.progressLogged = applied, applied
		n.log.Info("catching up with committed entries", "applied", applied, "commit", b.Commit)
	case applied >= b.Commit:
		n.log.Info("caught up", "applied", applied, "entries", applied-n.progressFrom)
		n.progressFrom = 0
	case applied-n.progressLogged >= progressEvery:
		n.progressLogged = applied
		n.log.Info("catching up", "applied", applied, "commit", b.Commit)
	}
}

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

// QueuedWritesLocked is the number of writes waiting for the writer slot,
// for use inside WaitFor conditions.
func (n *Node) QueuedWritesLocked() int { return n.loop.QueuedWrites() }

// LeaderLocked is the leader this node knows, for use inside WaitFor
// conditions.
func (n *Node) LeaderLocked() raft.NodeID { return n.loop.Raft().Basic().Lead }

// diskWriter performs appends outside the loop.
func (n *Node) diskWriter() {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case job := <-n.disk:
			start := time.Now()
			err := n.wal.Append(job.Entries)
			d := uint64(time.Since(start))
			n.metrics.fsyncs.Add(1)
			n.metrics.fsyncNanos.Add(d)
			n.metrics.appendEntries.Add(uint64(len(job.Entries)))
			for _, e := range job.Entries {
				n.metrics.appendBytes.Add(uint64(len(e.Data)))
			}
			if d > n.metrics.fsyncMaxNanos.Load() {
				n.metrics.fsyncMaxNanos.Store(d) // one writer: this goroutine
			}
			if err != nil {
				n.log.Error("log append failed: the node stops writing", "err", err)
			}
			if !n.post(func() {
				n.eventKind = "log written"
				n.handle(n.loop.WriteDone(job, err))
			}) {
				return
			}
			// Segments a compaction dropped from the log: removed here,
			// after the write's result is on its way, not on the loop.
			if err := n.wal.RemoveCompacted(); err != nil {
				n.log.Error("removing compacted log segments failed: the node stops writing", "err", err)
			}
		}
	}
}

// post queues fn for the loop goroutine; false once the node is closing.
func (n *Node) post(fn func()) bool {
	select {
	case n.events <- fn:
		return true
	case <-n.stop:
		return false
	}
}

func (n *Node) failWaiters(err error) {
	for id, ch := range n.waiters {
		delete(n.waiters, id)
		ch <- loop.Reply{ID: id, Err: err}
	}
}

// Leader returns the id of the leader this node knows (0 if none).
func (n *Node) Leader() raft.NodeID {
	var lead raft.NodeID
	if !n.do(func() { lead = n.loop.Raft().Basic().Lead }) {
		return raft.None
	}
	return lead
}

// do runs fn in the loop goroutine and waits for it.
func (n *Node) do(fn func()) bool {
	done := make(chan struct{})
	if !n.post(func() { fn(); close(done) }) {
		return false
	}
	select {
	case <-done:
		return true
	case <-n.stop:
		return false
	}
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

// Close stops the node and waits for its goroutines.
func (n *Node) Close() error {
	n.stopOnce.Do(func() {
		close(n.stop)
		n.ln.Close()
	})
	n.srv.Close()
	n.wg.Wait()
	n.closeResources()
	return nil
}

func (n *Node) closeResources() {
	if n.db != nil {
		n.db.Close() // and its VFS
		n.db, n.vfs = nil, nil
	}
	n.fileWriters.Wait() // each stopped when the VFS closed its file
	if n.wal != nil {
		n.wal.Close()
		n.wal = nil
	}
}

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
