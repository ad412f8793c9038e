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
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
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
	// continueEvent is the event an Output with Again asks for;
	// handleNanos is the time handle took in the current event (loop
	// goroutine only).
	continueEvent func()
	handleNanos   int64
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
	n.continueEvent = func() {
		n.eventKind = "continue"
		n.handle(n.loop.Continue())
	}
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
	// The databases' files share the log's directory (and its FS), in
	// either mode (statement mode journals each WAL before a checkpoint
	// copies it: fsm/redo.go).
	vfsName := fmt.Sprintf("dqlite-node-%d-%d", n.cfg.ID, vfsSeq.Add(1))
	db, err := fsm.OpenFiles(spawnFS{fs, n.spawnFileWriter}, vfsName, uint64(n.cfg.ID), DefaultDatabase, n.cfg.PageSize, n.cfg.Mode)
	if err != nil {
		return fmt.Errorf("node %d: opening databases: %w", n.cfg.ID, err)
	}
	db.SetCacheBytes(n.cfg.CacheBytes, n.cfg.ReadCacheBytes)
	db.SetClock(monotonicClock()) // what slow loop events spent their time on
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
