package sim

import (
	"container/heap"
	"fmt"
	"hash"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/dqlite-go/dqlite/internal/assert"
	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wal"
)

// Options configures one simulated run.
type Options struct {
	Seed uint64
	// Nodes is the number of initial voters.
	Nodes int
	// Joiners is the number of extra nodes that may join during the run.
	Joiners int
	// FaultPhase is the simulated time during which faults are injected;
	// HealPhase bounds the time allowed afterwards for a leader to commit a
	// write and for all replicas to converge.
	FaultPhase time.Duration
	HealPhase  time.Duration
	// Tick is the nominal interval of a node's ticks (each node is skewed).
	Tick time.Duration
	// Network latency bounds and per-message fault rates (fault phase).
	LatencyMin, LatencyMax time.Duration
	DropRate, DupRate      float64
	// ReorderRate is the chance that a message gets a long extra delay.
	ReorderRate float64
	// DiskLatency bounds the time of one append + sync.
	DiskLatencyMin, DiskLatencyMax time.Duration
	// FaultInterval is the mean time between injected faults.
	FaultInterval time.Duration
	// Clients issuing operations over Keys keys.
	Clients, Keys int
	// SnapshotThreshold is how many applied entries trigger a snapshot;
	// TrailingEntries how many the log keeps behind one (fewer send more
	// snapshots to followers, some with a conflicting log).
	SnapshotThreshold, TrailingEntries uint64
	// MaxMsgBytes and MaxInflight are raft's per-message size and
	// in-flight append limits (0: 4 KiB and 8; SQLite mode: 1 MiB). Small
	// values send one entry per message, so entries of an older term get
	// acknowledged on their own.
	MaxMsgBytes uint64
	MaxInflight int
	// HealMode is what the heal phase leaves broken while it requires a
	// leader to commit: HealAll (nothing), HealOneDown (a voter stays
	// crashed) or HealOneIsolated (a voter stays cut off; its term must
	// not grow, which is pre-vote's promise). The voter is brought back for
	// the convergence check.
	HealMode HealMode
	// Mutant is the catalogued bug active during the run (to show the
	// oracles catch it; see internal/mutant). Runs in one process may share
	// a mutant but not run different ones at once.
	Mutant mutant.Bug
	// Trace, when set, receives one line per event.
	Trace io.Writer
	// CheckTimeout bounds the linearizability check.
	CheckTimeout time.Duration
	// SQLite runs the replicated SQLite state machine on every node (the
	// key-value workload over SQL, plus a bank workload whose total must
	// never change) instead of the in-memory key-value map.
	SQLite bool
	// Statements (with SQLite) replicates statements instead of frames
	// (the comparison mode: its databases' files with redo journals).
	Statements bool
	// NoFaults turns off every injected fault (for benchmarks).
	NoFaults bool
	// NoTraceHash skips hashing the event trace (benchmarks); TraceHash is
	// then zero.
	NoTraceHash bool
	// ClockDrift is the drift rate bound the nodes assume
	// (raft.Config.MaxClockDrift); every node's clock runs within 25% of
	// true time, so a smaller bound is a planted drift beyond it.
	ClockDrift float64
	// NoLease turns the leader lease off (every linearizable read takes a
	// heartbeat round).
	NoLease bool
	// OutDir receives porcupine's visualization of a non-linearizable
	// history (the system temporary directory if empty).
	OutDir string
}

// SimClockDrift is the drift bound that covers the simulator's clocks: a
// node's ticks, and so its clock, run at 0.8 to 1.2 times the nominal
// interval, so its clock rate is within [1/1.2, 1/0.8] = [0.83, 1.25] of
// true time.
const SimClockDrift = 0.25

// HealMode is what the heal phase leaves broken (see Options.HealMode).
type HealMode uint8

const (
	HealAll HealMode = iota
	HealOneDown
	HealOneIsolated
)

func (m HealMode) String() string {
	return [...]string{"all", "one-down", "one-isolated"}[m]
}

// DefaultOptions returns the CI-sized options for a seed. The seed also
// picks the cluster's shape: 3, 4 or 5 voters, raft's message size and
// in-flight limits (down to about one entry per message), the snapshot
// threshold, and what the heal phase leaves broken. Callers may override
// any of them; the replay command names the non-default ones.
func DefaultOptions(seed uint64) Options {
	o := Options{Seed: seed, Nodes: 3, Joiners: 2, FaultPhase: 6 * time.Second, HealPhase: 10 * time.Second,
		Tick: 10 * time.Millisecond, LatencyMin: time.Millisecond, LatencyMax: 8 * time.Millisecond,
		DropRate: 0.05, DupRate: 0.02, ReorderRate: 0.03,
		DiskLatencyMin: 200 * time.Microsecond, DiskLatencyMax: 3 * time.Millisecond,
		FaultInterval: 250 * time.Millisecond, Clients: 5, Keys: 3, SnapshotThreshold: 40, TrailingEntries: 8,
		CheckTimeout: 10 * time.Second, ClockDrift: SimClockDrift}
	shape := rand.New(rand.NewPCG(seed, 0x5ba9e))
	o.Nodes = []int{3, 3, 4, 5, 5}[shape.IntN(5)]
	o.MaxMsgBytes = []uint64{128, 512, 0}[shape.IntN(3)]
	o.MaxInflight = []int{1, 2, 8}[shape.IntN(3)]
	o.SnapshotThreshold = []uint64{12, 40, 100}[shape.IntN(3)]
	o.HealMode = HealMode(shape.IntN(3))
	o.TrailingEntries = []uint64{0, 2, 8}[shape.IntN(3)]
	o.NoLease = shape.IntN(4) == 0
	return o
}

// Result is the outcome of one run.
type Result struct {
	Seed       uint64
	Violations []string
	// Oracles names the oracle that reported each violation.
	Oracles []string
	// Faults counts each fault kind actually injected.
	Faults    map[string]int
	Simulated time.Duration
	TraceHash uint64
	// Ops is the number of client operations in the history; Unknown of
	// them are writes whose outcome the client never learned.
	Ops, Unknown int
	// Linearizable is "ok", "illegal" or "unknown" (checker timed out).
	Linearizable string
	// Visualization is the porcupine HTML written for an illegal history.
	Visualization string
}

type eventKind uint8

const (
	evTick eventKind = iota + 1
	evDeliver
	evAppend
	evWriteDone
	evClient
	evFault
	evContinue // an Output asked for another event (Again)
)

type event struct {
	at   time.Duration
	seq  uint64
	kind eventKind
	node raft.NodeID
	inc  int // the node incarnation a tick or write belongs to
	msg  raft.Message
	job  *loop.WriteJob
	fn   func() // evFault and evClient
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// Sim is one simulated cluster run. It is single-threaded.
type Sim struct {
	opts   Options
	rng    *rand.Rand
	now    time.Duration
	seq    uint64
	queue  eventQueue
	nodes  map[raft.NodeID]*node
	ids    []raft.NodeID // sorted
	nextID raft.NodeID
	net    network
	faults map[string]int
	trace  hash.Hash64

	bootstrap raft.Entry // the initial voters' first entry
	// healVictim is the voter the heal phase leaves down or cut off until
	// the liveness probe committed; isolatedTerm is its term once cut off.
	healVictim   *node
	isolatedTerm uint64
	faultsOn     bool
	clientsOn    bool
	schemaDone   bool // SQLite mode: the tables exist
	clients      []*client
	reqOwner     map[uint64]*client
	nextReq      uint64
	// nextSession numbers the bank clients' transaction sessions.
	nextSession uint64
	history     []op
	// The stale-read oracle's memory: writes acknowledged per key, and the
	// index of the entry that wrote each value (values are unique).
	acked      map[string][]ackedWrite
	valueIndex map[string]uint64
	violations []string
	oracles    []string // the oracle of each violation

	// Oracles' memory.
	leaders      map[uint64]raft.NodeID  // term -> leader
	applied      map[uint64]appliedEntry // index -> entry applied somewhere
	entries      map[[2]uint64]uint64    // (index, term) -> data hash, over every durable append
	leaderCheck  map[[2]uint64]uint64    // (node, term) -> index verified up to
	commits      map[raft.NodeID]uint64  // commit index per node incarnation
	leaderTerm   map[raft.NodeID]uint64  // the term a node led in at the last check
	commitInfo   map[uint64]commitInfo
	maxCommitted uint64

	linearizable porcupine.CheckResult
	linInfo      porcupine.LinearizationInfo
}

type appliedEntry struct {
	term uint64
	hash uint64
}

// New prepares a run.
func New(opts Options) *Sim {
	s := &Sim{opts: opts, rng: rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15)),
		nodes: map[raft.NodeID]*node{}, faults: map[string]int{}, trace: fnv.New64a(),
		reqOwner: map[uint64]*client{}, leaders: map[uint64]raft.NodeID{},
		applied: map[uint64]appliedEntry{}, entries: map[[2]uint64]uint64{},
		leaderCheck: map[[2]uint64]uint64{}, commits: map[raft.NodeID]uint64{}, leaderTerm: map[raft.NodeID]uint64{},
		commitInfo: map[uint64]commitInfo{}, acked: map[string][]ackedWrite{}, valueIndex: map[string]uint64{}}
	s.net = network{cut: map[[2]raft.NodeID]bool{}}
	return s
}

func (s *Sim) schedule(e *event) {
	s.seq++
	e.seq = s.seq
	heap.Push(&s.queue, e)
}

func (s *Sim) after(d time.Duration, e *event) {
	e.at = s.now + d
	s.schedule(e)
}

func (s *Sim) randDuration(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)))
}

func (s *Sim) chance(p float64) bool { return p > 0 && s.rng.Float64() < p }

// violate records a violation found by the named oracle (see doc.go for
// what each checks).
func (s *Sim) violate(oracle, format string, args ...any) {
	msg := fmt.Sprintf("t=%v: [%s] ", s.now, oracle) + fmt.Sprintf(format, args...)
	s.violations = append(s.violations, msg)
	s.oracles = append(s.oracles, oracle)
	s.tracef("VIOLATION %s", msg)
}

func (s *Sim) count(kind string) { s.faults[kind]++ }

func (s *Sim) tracef(format string, args ...any) {
	if s.opts.NoTraceHash && s.opts.Trace == nil {
		return
	}
	line := fmt.Sprintf("%v ", s.now) + fmt.Sprintf(format, args...)
	s.trace.Write([]byte(line))
	s.trace.Write([]byte{'\n'})
	if s.opts.Trace != nil {
		fmt.Fprintln(s.opts.Trace, line)
	}
}

// Run executes the whole run and returns its result. Panics inside the
// system under test (assertion failures) are reported as violations.
func Run(opts Options) (res Result) {
	release, err := mutant.Activate(opts.Mutant)
	if err != nil {
		return Result{Seed: opts.Seed, Violations: []string{err.Error()}, Oracles: []string{"setup"}}
	}
	defer release()
	s := New(opts)
	defer s.release()
	defer func() {
		if r := recover(); r != nil {
			s.violate("panic", "panic: %v", r)
			res = s.result()
		}
	}()
	s.start()
	s.runUntil(opts.FaultPhase)
	s.endFaults()
	s.heal()
	if opts.SQLite {
		s.checkCounter()
	}
	s.check()
	return s.result()
}

func (s *Sim) result() Result {
	ops, unknown := 0, 0
	for _, o := range s.history {
		ops++
		if o.output.unknown {
			unknown++
		}
	}
	for _, n := range s.nodes {
		s.faults["disk-torn-write"] += n.fs.TornWrites
		s.faults["disk-lost-unsynced-file"] += n.fs.LostFiles
		s.faults["disk-eio"] += n.fs.EIOs
		s.faults["disk-read-eio"] += n.fs.ReadEIOs
		s.faults["disk-corrupt-read"] += n.fs.CorruptReads
		s.faults["disk-enospc"] += n.fs.NoSpace
	}
	res := Result{Seed: s.opts.Seed, Violations: s.violations, Oracles: s.oracles, Faults: s.faults, Simulated: s.now,
		TraceHash: s.trace.Sum64(), Ops: ops, Unknown: unknown}
	switch s.linearizable {
	case porcupine.Ok:
		res.Linearizable = "ok"
	case porcupine.Illegal:
		res.Linearizable = "illegal"
		if path, err := writeVisualization(s.opts.OutDir, s.opts.Seed, s.linInfo); err == nil {
			res.Visualization = path
		} else {
			res.Violations = append(res.Violations, "writing visualization: "+err.Error())
			res.Oracles = append(res.Oracles, "linearizability")
		}
	default:
		res.Linearizable = "unknown"
	}
	return res
}

// start bootstraps the initial voters and the clients, and schedules the
// fault phase.
func (s *Sim) start() {
	var m raft.Membership
	for i := 1; i <= s.opts.Nodes; i++ {
		m.Servers = append(m.Servers, raft.Server{ID: raft.NodeID(i), Role: raft.Voter, Address: fmt.Sprintf("n%d", i)})
	}
	s.bootstrap = raft.BootstrapEntry(m)
	for i := 1; i <= s.opts.Nodes; i++ {
		n := s.addNode(raft.NodeID(i))
		w, _, err := wal.Open(n.fs, s.walOptions())
		assert.NoError(err, "opening a new log")
		assert.NoError(w.Append([]raft.Entry{s.bootstrap}), "bootstrap")
		assert.NoError(w.SetHardState(raft.HardState{Term: 1}), "bootstrap")
		w.Close()
		s.startNode(n)
	}
	s.nextID = raft.NodeID(s.opts.Nodes + 1)
	s.faultsOn, s.clientsOn = !s.opts.NoFaults, true
	if s.opts.SQLite {
		// The bank client also creates the schema before anything else.
		c := &client{id: s.opts.Clients, bank: true}
		s.clients = append(s.clients, c)
		s.after(0, &event{kind: evClient, fn: func() { s.bankStep(c) }})
		k := &client{id: s.opts.Clients + 1, counter: &counterState{}}
		s.clients = append(s.clients, k)
		s.after(0, &event{kind: evClient, fn: func() { s.counterStep(k) }})
	}
	for i := 0; i < s.opts.Clients; i++ {
		c := &client{id: i}
		s.clients = append(s.clients, c)
		s.after(s.randDuration(0, 50*time.Millisecond), &event{kind: evClient, fn: func() { s.clientStep(c) }})
	}
	if s.faultsOn {
		s.scheduleFault()
	}
}

// runUntil processes events up to virtual time t.
func (s *Sim) runUntil(t time.Duration) {
	for len(s.queue) > 0 && s.queue[0].at <= t {
		e := heap.Pop(&s.queue).(*event)
		s.now = e.at
		s.handle(e)
		s.checkDisks()
		s.checkStep()
	}
	if s.now < t {
		s.now = t
	}
}

func (s *Sim) handle(e *event) {
	switch e.kind {
	case evTick:
		n := s.nodes[e.node]
		if n == nil || !n.up || n.inc != e.inc {
			return
		}
		s.after(n.tickEvery, &event{kind: evTick, node: n.id, inc: n.inc})
		if n.paused || n.stalled {
			return
		}
		s.take(n, n.loop.Tick())
	case evDeliver:
		s.deliver(e.msg)
	case evAppend:
		n := s.nodes[e.node]
		if n == nil || !n.up || n.inc != e.inc {
			return // the write was lost with the crash
		}
		n.appended, n.appendedErr = e.job, n.disk.Append(e.job.Entries)
		s.tracef("disk %d wrote %d..%d", n.id, e.job.Entries[0].Index, e.job.Entries[len(e.job.Entries)-1].Index)
	case evWriteDone:
		n := s.nodes[e.node]
		if n == nil || !n.up || n.inc != e.inc {
			return // the write was lost with the crash
		}
		assert.That(n.appended == e.job, "node %d: write done before its append", n.id)
		err := n.appendedErr
		n.appended, n.appendedErr = nil, nil
		s.take(n, n.loop.WriteDone(e.job, err))
		if n.up && n.inc == e.inc && n.disk != nil {
			// As the node's disk goroutine does after a write: the
			// segments a compaction dropped go now (a failure fails
			// the log, and the next append stops the node).
			_ = n.disk.RemoveCompacted()
		}
	case evContinue:
		n := s.nodes[e.node]
		if n == nil || !n.up || n.inc != e.inc || n.paused || n.stalled {
			return // a later event (a tick, a message) carries on
		}
		s.count("event-continued")
		s.take(n, n.loop.Continue())
	case evClient, evFault:
		e.fn()
	}
}

func (s *Sim) sortedIDs() []raft.NodeID {
	s.ids = s.ids[:0]
	for id := range s.nodes {
		s.ids = append(s.ids, id)
	}
	sort.Slice(s.ids, func(i, j int) bool { return s.ids[i] < s.ids[j] })
	return s.ids
}

// leader returns the up, unpaused node that believes it leads in the
// highest term.
func (s *Sim) leader() *node {
	var best *node
	var term uint64
	for _, id := range s.sortedIDs() {
		n := s.nodes[id]
		if !n.up || n.paused {
			continue
		}
		b := n.loop.Raft().Basic()
		if b.State == raft.StateLeader && b.Term >= term {
			best, term = n, b.Term
		}
	}
	return best
}

// endFaults stops injecting faults and client operations, and repairs the
// cluster: heal the network, resume paused nodes, restart crashed ones;
// except the voter the heal mode leaves down or cut off (s.healVictim).
func (s *Sim) endFaults() {
	s.faultsOn, s.clientsOn = false, false
	s.net.cut = map[[2]raft.NodeID]bool{}
	s.tracef("faults end")
	victim := s.pickHealVictim()
	partial := victim != nil && s.opts.HealMode == HealOneDown && s.rng.IntN(2) == 0
	if partial {
		victim = nil // the leader of partialChange is the one left down
	}
	for _, id := range s.sortedIDs() {
		n := s.nodes[id]
		n.fs.ClearFaults()
		n.stalled, n.slowUntil = false, 0
		if n.removed {
			continue
		}
		if n == victim && s.opts.HealMode == HealOneDown {
			if n.up {
				s.crash(n)
			}
			continue
		}
		if !n.up {
			s.startNode(n)
			s.count("restart")
		}
		if n.paused {
			s.resume(n)
		}
	}
	if victim != nil && s.opts.HealMode == HealOneIsolated {
		s.net.isolated = victim.id
		// Messages already on the wire may still raise its term; what
		// it does on its own after they landed may not.
		s.after(200*time.Millisecond, &event{kind: evFault, fn: func() {
			if victim.up {
				s.isolatedTerm = victim.loop.Raft().Basic().Term
			}
		}})
	}
	if partial {
		if s.rng.IntN(2) == 0 {
			victim = s.partialChange()
		} else {
			victim = s.partialJoin()
		}
	}
	if victim != nil {
		s.count("heal-" + s.opts.HealMode.String())
		s.tracef("heal leaves %d %s", victim.id, s.opts.HealMode)
	}
	s.healVictim = victim
}

// partialChange starts the heal phase with a leader lost in the middle of
// a reconfiguration: once a leader is elected, it removes or demotes
// another voter while cut off from all but that voter, then crashes and
// stays down (the heal phase's victim). The others' logs then differ in
// the configuration they act on, and a leader must still be elected.
func (s *Sim) partialChange() *node {
	deadline := s.now + 5*s.electionTimeout()
	for s.now < deadline {
		s.runUntil(s.now + s.electionTimeout()/2)
		l := s.leader()
		if l == nil {
			continue
		}
		st := l.loop.Raft().Status()
		voters := st.Config.Voters()
		if len(voters) <= minVoters || st.ConfigIndex > st.Commit {
			return nil
		}
		var target raft.NodeID
		for _, id := range voters {
			if id != l.id && (target == raft.None || s.rng.IntN(2) == 0) {
				target = id
			}
		}
		cc := raft.ConfigChange{Type: raft.ConfigRemove, ID: target}
		if s.rng.IntN(2) == 0 {
			cc = raft.ConfigChange{Type: raft.ConfigAssign, ID: target, Role: raft.Standby}
		}
		for _, id := range s.sortedIDs() {
			if id != l.id && id != target {
				s.cutBoth(l.id, id)
			}
		}
		id := s.adminRequest()
		out := l.loop.RequestMembership(id, cc)
		if refusal(out, id) != nil {
			s.net.cut = map[[2]raft.NodeID]bool{}
			return nil
		}
		s.take(l, out)
		s.tracef("heal: leader %d %s %d reaching only %d, then crashes", l.id, cc.Type, target, target)
		s.runUntil(s.now + s.opts.LatencyMax + s.opts.DiskLatencyMax)
		s.crash(l)
		s.net.cut = map[[2]raft.NodeID]bool{}
		s.count("heal-partial-change")
		if cc.Type == raft.ConfigRemove {
			if n := s.nodes[target]; n != nil {
				s.after(s.electionTimeout()*5, &event{kind: evFault, fn: func() { s.retire(n) }})
			}
		}
		return l
	}
	return nil
}

// partialJoin starts the heal phase with a leader lost after a node
// joined behind a partition: with one voter cut off, the leader adds a new
// node and promotes it to voter, then its next entry reaches only the
// newcomer, and it crashes and stays down (the victim). The cut-off voter
// never saw the newcomer in any membership, yet the newcomer holds the
// longest log and cannot win without that voter's vote.
func (s *Sim) partialJoin() *node {
	abort := func() *node { s.net.cut = map[[2]raft.NodeID]bool{}; return nil }
	s.runUntil(s.now + 2*s.electionTimeout())
	l := s.leader()
	if l == nil || int(s.nextID) > s.opts.Nodes+s.opts.Joiners*4 {
		return nil
	}
	st := l.loop.Raft().Status()
	voters := st.Config.Voters()
	if len(voters) < 3 || st.ConfigIndex > st.Commit {
		return nil
	}
	var away raft.NodeID // the voter that never hears of the newcomer
	for _, id := range voters {
		if id != l.id && (away == raft.None || s.rng.IntN(2) == 0) {
			away = id
		}
	}
	for _, id := range s.sortedIDs() {
		if id != away {
			s.cutBoth(away, id)
		}
	}
	newID := s.nextID
	s.nextID++
	n := s.addNode(newID)
	s.startNode(n)
	for _, cc := range []raft.ConfigChange{{Type: raft.ConfigAdd, ID: newID},
		{Type: raft.ConfigAssign, ID: newID, Role: raft.Voter}} {
		id := s.adminRequest()
		out := l.loop.RequestMembership(id, cc)
		if refusal(out, id) != nil {
			return abort()
		}
		s.take(l, out)
		done := func() bool { // the change is in force and committed
			cst := l.loop.Raft().Status()
			sv, ok := cst.Config.Get(newID)
			return ok && (cc.Type == raft.ConfigAdd || sv.Role == raft.Voter) && cst.ConfigIndex <= cst.Commit
		}
		// A promotion first lets the newcomer catch up (a snapshot in
		// small chunks, in SQLite mode).
		for i := 0; i < 50 && l.up && l.loop.Raft().Basic().State == raft.StateLeader && !done(); i++ {
			s.runUntil(s.now + s.electionTimeout())
		}
		if !l.up || l.loop.Raft().Basic().State != raft.StateLeader || !done() {
			return abort()
		}
	}
	// The leader's next entry reaches only the newcomer.
	for _, id := range s.sortedIDs() {
		if id != l.id && id != newID {
			s.cutBoth(l.id, id)
		}
	}
	probe := uint64(math.MaxUint64 / 2)
	s.reqOwner[probe] = nil
	if s.opts.SQLite {
		s.sqlWrite(l, probe, "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", "join", "probe")
	} else {
		s.take(l, l.loop.Propose(probe, []byte("join=probe")))
	}
	s.runUntil(s.now + s.opts.LatencyMax + s.opts.DiskLatencyMax)
	s.crash(l)
	s.net.cut = map[[2]raft.NodeID]bool{}
	s.count("heal-partial-join")
	s.tracef("heal: leader %d added %d with %d cut off, then crashed", l.id, newID, away)
	return l
}

// pickHealVictim chooses the voter the heal phase leaves down or cut off:
// one of the voters of the last known configuration, if the others are
// enough for a quorum of it.
func (s *Sim) pickHealVictim() *node {
	if s.opts.HealMode == HealAll {
		return nil
	}
	var cfg raft.Membership // the newest configuration a running node acts on
	var cfgIndex uint64
	for _, id := range s.sortedIDs() {
		n := s.nodes[id]
		if n.up && !n.removed && n.loop.Raft().ConfigIndex() > 0 {
			if st := n.loop.Raft().Status(); cfg.Servers == nil || st.ConfigIndex > cfgIndex {
				cfg, cfgIndex = st.Config, st.ConfigIndex
			}
		}
	}
	var voters []*node
	for _, id := range cfg.Voters() {
		if n := s.nodes[id]; n != nil && !n.removed {
			voters = append(voters, n)
		}
	}
	if len(voters) < 3 || len(voters)-1 < cfg.Quorum() {
		return nil
	}
	if s.opts.HealMode == HealOneDown && s.rng.IntN(2) == 0 {
		// Leave down a voter that is down already: the leader a fault
		// just crashed may hold entries only some others have.
		for _, v := range voters {
			if !v.up {
				return v
			}
		}
	}
	return voters[s.rng.IntN(len(voters))]
}

// restoreHealVictim brings the heal phase's victim back, checking that a
// voter cut off all along never raised its term (pre-vote: a node that
// cannot win an election does not disrupt the cluster when it returns).
func (s *Sim) restoreHealVictim() {
	v := s.healVictim
	if v == nil || v.removed {
		return
	}
	s.healVictim = nil
	switch s.opts.HealMode {
	case HealOneDown:
		if !v.up {
			s.startNode(v)
			s.count("restart")
		}
	case HealOneIsolated:
		if v.up && s.isolatedTerm > 0 {
			if t := v.loop.Raft().Basic().Term; t > s.isolatedTerm {
				s.violate("prevote", "node %d, cut off from every other node, raised its term from %d to %d",
					v.id, s.isolatedTerm, t)
			}
		}
		s.net.isolated = raft.None
	}
	s.tracef("heal restores %d", v.id)
}

// release frees the nodes' SQLite instances.
func (s *Sim) release() {
	for _, n := range s.nodes {
		s.closeSQL(n)
	}
}
