package raft

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"

	"github.com/dqlite-go/dqlite/internal/assert"
	"github.com/dqlite-go/dqlite/internal/mutant"
)

// Default limits, used when the Config leaves a field at zero.
const (
	DefaultElectionTicks          = 10
	DefaultHeartbeatTicks         = 1
	DefaultMaxMsgBytes            = 1 << 20
	DefaultMaxInflightMsgs        = 64
	DefaultMaxSnapshotChunkBytes  = 256 << 10
	DefaultSnapshotChunksInFlight = 4
	// DefaultMaxSnapshotBytes: the state machine restores an image whose
	// size SQLite's C API takes as an int.
	DefaultMaxSnapshotBytes    = 1<<31 - 1
	DefaultMaxUncommittedBytes = 64 << 20
	DefaultMaxApplyBytes       = 16 << 20
	DefaultCatchUpRounds       = 10
	DefaultMaxPendingReads     = 4096
)

// Config configures a Raft. Zero values take the defaults above.
type Config struct {
	// ID of this node; must not be zero.
	ID NodeID
	// Storage is the durable state read at start and afterwards.
	Storage Storage
	// Rand supplies the randomness of election timeouts. Required.
	Rand *rand.Rand
	// ElectionTicks is the minimum election timeout; a follower waits a
	// random number of ticks in [ElectionTicks, 2*ElectionTicks) without
	// hearing from a leader before it starts a (pre-)election. It is also
	// the check-quorum interval and the lease during which votes are
	// refused while a leader is known.
	ElectionTicks int
	// HeartbeatTicks is the interval between a leader's heartbeats.
	HeartbeatTicks int
	// MaxMsgBytes bounds the entry bytes in one append message, and so the
	// size of one proposal.
	MaxMsgBytes uint64
	// MaxInflightMsgs bounds the appends sent to one follower and not yet
	// acknowledged (pipelining window).
	MaxInflightMsgs int
	// MaxSnapshotChunkBytes bounds the data in one snapshot message (at
	// most MaxEntryBytes).
	MaxSnapshotChunkBytes int
	// SnapshotChunksInFlight bounds the snapshot chunks sent to one
	// replica and not yet acknowledged (default
	// DefaultSnapshotChunksInFlight): more than one lets the leader read
	// the next chunks while the replica writes the last.
	SnapshotChunksInFlight int
	// MaxSnapshotBytes bounds a snapshot this node receives, which it
	// assembles in memory unless SnapshotSink is set: a chunk past it is
	// refused as an invalid message (default DefaultMaxSnapshotBytes;
	// with a sink, set it to the largest snapshot the sink may take).
	MaxSnapshotBytes uint64
	// MaxUncommittedBytes bounds the proposed-but-uncommitted bytes on a
	// leader; proposals past it fail with ErrTooManyPending.
	MaxUncommittedBytes uint64
	// MaxApplyBytes bounds the committed entries handed out in one Update.
	MaxApplyBytes uint64
	// CatchUpRounds bounds the replication rounds a node being promoted to
	// voter gets to catch up before the change is abandoned.
	CatchUpRounds int
	// MaxPendingReads bounds the ReadIndex requests waiting on a leader.
	MaxPendingReads int
	// Applied is the index the state machine already reflects when the node
	// restarts (at least the storage snapshot's index).
	Applied uint64

	// SnapshotSource, when set, opens and reads the snapshots this node
	// sends as leader, instead of Storage: Storage.SnapshotChunk is then
	// never called, and Storage.Snapshot only by New (for the membership).
	// A replica that needs compacted entries waits while OpenSnapshot says
	// later (or fails): it is retried on its next heartbeat response. An
	// opened snapshot that is gone (ErrSnapshotChanged) is opened anew.
	// Nil: the newest snapshot in Storage is sent.
	SnapshotSource SnapshotSource
	// SnapshotSink, when set, is given the chunks of the snapshots this
	// node receives as they arrive, in order, instead of raft assembling
	// them in memory; a sink error makes the leader start over, and
	// Update.Snapshot carries no Data. Nil: raft buffers the whole
	// snapshot (at most MaxSnapshotBytes) and hands out its Data.
	SnapshotSink SnapshotSink

	// Clock, when set, is this node's monotonic clock in nanoseconds
	// (see lease.go): it makes the vote lease a matter of time instead
	// of ticks, and enables leader leases and bounded-staleness reads.
	Clock func() int64
	// TickNanos is the nominal length of a tick on Clock (required with
	// Clock): the vote lease is ElectionTicks of them.
	TickNanos int64
	// MaxClockDrift bounds how far the rate of any node's Clock may be
	// from true time (0.1: within 10%; default DefaultMaxClockDrift). The
	// leader's lease is shortened to stay safe within it.
	MaxClockDrift float64
	// NoLease turns leader leases off: every linearizable read then takes
	// a heartbeat round (no assumption about clocks is needed for it).
	NoLease bool
}

func (c *Config) setDefaults() error {
	if c.ID == None {
		return errors.New("raft: config: ID must not be zero")
	}
	if c.Storage == nil || c.Rand == nil {
		return errors.New("raft: config: Storage and Rand are required")
	}
	setDefault(&c.ElectionTicks, DefaultElectionTicks)
	setDefault(&c.HeartbeatTicks, DefaultHeartbeatTicks)
	setDefault(&c.MaxMsgBytes, DefaultMaxMsgBytes)
	setDefault(&c.MaxInflightMsgs, DefaultMaxInflightMsgs)
	setDefault(&c.MaxSnapshotChunkBytes, DefaultMaxSnapshotChunkBytes)
	setDefault(&c.SnapshotChunksInFlight, DefaultSnapshotChunksInFlight)
	setDefault(&c.MaxSnapshotBytes, DefaultMaxSnapshotBytes)
	if c.MaxMsgBytes > MaxMessageBytes || c.MaxSnapshotChunkBytes > MaxEntryBytes {
		return fmt.Errorf("raft: config: MaxMsgBytes %d (limit %d) or MaxSnapshotChunkBytes %d (limit %d) too large",
			c.MaxMsgBytes, MaxMessageBytes, c.MaxSnapshotChunkBytes, MaxEntryBytes)
	}
	setDefault(&c.MaxUncommittedBytes, DefaultMaxUncommittedBytes)
	setDefault(&c.MaxApplyBytes, DefaultMaxApplyBytes)
	setDefault(&c.CatchUpRounds, DefaultCatchUpRounds)
	setDefault(&c.MaxPendingReads, DefaultMaxPendingReads)
	if c.Clock != nil {
		if c.TickNanos <= 0 {
			return errors.New("raft: config: TickNanos is required with a Clock")
		}
		if c.MaxClockDrift == 0 {
			c.MaxClockDrift = DefaultMaxClockDrift
		}
		if !(c.MaxClockDrift >= 0 && c.MaxClockDrift < 0.5) { // NaN too
			return fmt.Errorf("raft: config: MaxClockDrift %v outside [0, 0.5)", c.MaxClockDrift)
		}
	}
	if c.HeartbeatTicks >= c.ElectionTicks {
		return fmt.Errorf("raft: config: heartbeat ticks %d must be below election ticks %d",
			c.HeartbeatTicks, c.ElectionTicks)
	}
	return nil
}

func setDefault[T int | uint64](p *T, v T) {
	if *p == 0 {
		*p = v
	}
}

// configAt is a membership and the index of the entry that set it.
type configAt struct {
	index  uint64
	config Membership
}

// readRequest is a ReadIndex request waiting for a quorum of heartbeat
// acknowledgements.
type readRequest struct {
	ctx   uint64
	from  NodeID // a follower's request (None: a local read)
	index uint64
	seq   uint64
	acks  map[NodeID]bool
}

// promotion tracks the catch-up rounds of a node being promoted to voter.
type promotion struct {
	server       Server // the server with its new role
	round        int
	roundTarget  uint64 // leader's last index when the round started
	roundElapsed int
	totalElapsed int
}

// incomingSnapshot is a snapshot being received in chunks.
type incomingSnapshot struct {
	meta SnapshotMeta
	// buf holds the chunks received (without a SnapshotSink; with one,
	// the sink has them and buf stays nil).
	buf []byte
	// received is the number of bytes received: the offset of the next
	// chunk.
	received uint64
	// from, term and seq identify the chunk at offset 0 that started it
	// (with a sink): a copy of it, or of an older one, does not start
	// over.
	from NodeID
	term uint64
	seq  uint64
}

// Raft is one node's consensus state machine. It is not safe for concurrent
// use: one goroutine (the node's loop, or the simulator) calls every method.
type Raft struct {
	id  NodeID
	cfg Config
	log *raftLog

	term  uint64
	vote  NodeID
	state StateType
	lead  NodeID

	// configs is the membership history: the snapshot's membership followed
	// by every config entry in the log, in index order. The last is in force.
	configs []configAt
	// knownIDs holds every server named by a membership this node held
	// since it started (including ones truncated or superseded since), to
	// tell a removed member's late messages from a stranger's. It grows
	// only with the config entries and snapshots this node replicates.
	knownIDs map[NodeID]struct{}
	// leadHint is the leader of the current term as named by a member in a
	// vote rejection: a voter that missed the changes adding it may follow
	// it although it knows no membership naming it.
	leadHint NodeID

	// Follower: matched is the highest index known to match the current
	// term's leader's log; acked is the highest index acknowledged to it.
	matched, acked uint64
	// pendingAck asks for an append response once entries are persisted.
	pendingAck bool

	// voteLeaseUntil: with a Clock, no vote is granted and no campaign
	// started (but for a transfer) before this time.
	voteLeaseUntil int64
	// freshAt/freshIndex: the state at freshIndex includes every write
	// committed before freshAt (this node's clock).
	freshAt    int64
	freshIndex uint64
	// Reads forwarded to the leader: the batch in flight, those waiting
	// for it, and the last batch number.
	forward        *forwardBatch
	forwardWaiting []uint64
	forwardSeq     uint64
	readStats      ReadStats

	electionElapsed  int
	heartbeatElapsed int
	electionTimeout  int // randomized

	// Candidate state.
	votes map[NodeID]bool

	// Leader state.
	prs             map[NodeID]*progress
	replicas        []NodeID // keys of prs, sorted, excluding self
	leadTransferee  NodeID
	transferElapsed int
	promoting       *promotion
	reads           []readRequest
	readsWaiting    []pendingRead // reads waiting for the first commit in term
	readSeq         uint64
	// Leases (lease.go): the rounds waiting for acknowledgements, the
	// send time of the latest one a quorum acknowledged, when this node
	// became leader, and whether it sent a transfer's timeout-now.
	rounds       []leaseRound
	leaseAt      int64
	leaderSince  int64
	transferSent bool
	proposed     []proposedSize // uncommitted proposals, for the byte bound
	uncommitted  uint64
	needBcast    bool

	incoming *incomingSnapshot
	// snapRead is the furthest byte of a snapshot read for sending in this
	// leadership: no follower can acknowledge more.
	snapRead snapshotRead
	// srcRead replaces snapRead with a SnapshotSource, which may send
	// replicas different snapshots: for each replica, the furthest byte
	// read of the highest snapshot index read for it in this leadership.
	srcRead map[NodeID]snapshotRead

	// storageErrReported is set once Update returned log.readErr.
	storageErrReported bool

	msgs       []Message
	prevHard   HardState
	readStates []ReadState
	notices    []Notice
}

// snapshotRead is how much of the snapshot at index was read from storage.
type snapshotRead struct {
	index uint64
	end   uint64 // offset just past the furthest byte read
}

type proposedSize struct {
	index uint64
	size  uint64
}

// New creates a Raft from its durable state.
func New(cfg Config) (*Raft, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	hs, err := cfg.Storage.InitialState()
	if err != nil {
		return nil, fmt.Errorf("raft: reading initial state: %w", err)
	}
	r := &Raft{id: cfg.ID, cfg: cfg, log: newLog(cfg.Storage), knownIDs: map[NodeID]struct{}{}}
	snap := cfg.Storage.Snapshot()
	if snap.Index > 0 {
		r.setSnapshotConfig(snap)
	}
	if err := r.loadConfigs(); err != nil {
		return nil, err
	}
	if cfg.Applied > r.log.applied {
		if cfg.Applied > r.log.lastIndex() {
			return nil, fmt.Errorf("raft: applied index %d beyond last log index %d", cfg.Applied, r.log.lastIndex())
		}
		r.log.applied = cfg.Applied
		r.log.committed = cfg.Applied
	}
	r.term, r.vote = hs.Term, hs.Vote
	r.prevHard = hs
	r.becomeFollower(r.term, None)
	// This node may have acknowledged a leader just before it restarted.
	r.heardFromLeader()
	if r.hasClock() {
		// Batch numbers of forwarded reads differ from the ones of
		// earlier incarnations, whose answers may still be on their way.
		// (Only with a clock: without, the random sequence of election
		// timeouts stays what the scenario scripts expect.)
		r.forwardSeq = (cfg.Rand.Uint64() ^ uint64(r.now())) >> 2
	}
	return r, nil
}

// loadConfigs scans the stored log for config entries.
func (r *Raft) loadConfigs() error {
	lo, hi := r.log.firstIndex(), r.log.lastIndex()+1
	for lo < hi {
		ents, err := r.log.slice(lo, hi, r.cfg.MaxApplyBytes)
		if err != nil {
			return fmt.Errorf("raft: reading log at %d: %w", lo, err)
		}
		if err := r.trackConfigs(ents); err != nil {
			return err
		}
		lo = ents[len(ents)-1].Index + 1
	}
	return nil
}

// trackConfigs records the config entries among ents (which were just
// appended, possibly replacing a suffix) in the history.
func (r *Raft) trackConfigs(ents []Entry) error {
	if len(ents) == 0 {
		return nil
	}
	first := ents[0].Index
	n := len(r.configs)
	for n > 0 && r.configs[n-1].index >= first && !mutant.On(mutant.RaftConfigNoRollback) {
		n--
	}
	r.configs = r.configs[:n]
	for _, e := range ents {
		if e.Type != EntryConfig {
			continue
		}
		m, err := DecodeMembership(e.Data)
		if err != nil {
			return fmt.Errorf("raft: config entry %d: %w", e.Index, err)
		}
		r.configs = append(r.configs, configAt{index: e.Index, config: m})
		r.noteMembers(m)
	}
	return nil
}

// setSnapshotConfig makes a snapshot's membership the whole history.
func (r *Raft) setSnapshotConfig(meta SnapshotMeta) {
	m := meta.Config.Clone()
	r.configs = []configAt{{index: meta.ConfigIndex, config: m}}
	r.noteMembers(m)
}

func (r *Raft) noteMembers(m Membership) {
	for _, s := range m.Servers {
		r.knownIDs[s.ID] = struct{}{}
	}
}

// config is the membership in force (empty for a node that knows none yet).
func (r *Raft) config() Membership {
	if len(r.configs) == 0 {
		return Membership{}
	}
	return r.configs[len(r.configs)-1].config
}

func (r *Raft) configIndex() uint64 {
	if len(r.configs) == 0 {
		return 0
	}
	return r.configs[len(r.configs)-1].index
}

// appendEntries appends entries to the local log and tracks configs.
func (r *Raft) appendEntries(ents ...Entry) {
	r.log.append(ents...)
	err := r.trackConfigs(ents)
	assert.NoError(err, "tracking configs of appended entries")
	if r.state == StateLeader {
		r.updateReplicas()
	}
}

func (r *Raft) send(m Message) {
	m.From = r.id
	if m.Term == 0 {
		m.Term = r.term
	}
	r.msgs = append(r.msgs, m)
}

func (r *Raft) resetTimers() {
	r.electionElapsed = 0
	r.heartbeatElapsed = 0
	r.electionTimeout = r.cfg.ElectionTicks + r.cfg.Rand.IntN(r.cfg.ElectionTicks)
}

// isVoter reports whether this node is a voter in its current config.
func (r *Raft) isVoter() bool { return r.config().RoleOf(r.id) == Voter }

// canCampaign reports whether this node may stand for election: a voter of
// the configuration in force, or of the one before it while the one in
// force (which removed or demoted it) is not committed. Until then the
// others may need its log: if it holds the only copy of that change beside
// a crashed leader, the voters without it can win only with its vote, which
// it must refuse them (Raft dissertation §4.2.2, Figure 4.6).
func (r *Raft) canCampaign() bool {
	if r.isVoter() || mutant.On(mutant.RaftRemovedNoCampaign) {
		return r.isVoter()
	}
	n := len(r.configs)
	return n >= 2 && r.configs[n-1].index > r.log.committed && r.configs[n-2].config.RoleOf(r.id) == Voter
}

func (r *Raft) becomeFollower(term uint64, lead NodeID) {
	assert.That(term >= r.term, "term going back from %d to %d", r.term, term)
	if term > r.term || lead != r.lead || r.state != StateFollower {
		// Reads forwarded to the leader of another term, or another
		// leader, are not answered any more.
		r.failForwarded(ErrLeadershipLost)
	}
	if term > r.term {
		r.term = term
		r.vote = None
		// What was verified against the previous term's leader says
		// nothing about the next one's log.
		r.matched, r.acked, r.pendingAck = 0, 0, false
		// A partly received snapshot came from the old term's leader.
		r.dropIncoming()
		r.leadHint = None
	}
	r.abortLeadership()
	r.state = StateFollower
	r.lead = lead
	r.votes = nil
	r.resetTimers()
}

// abortLeadership fails everything a leader was waiting on.
func (r *Raft) abortLeadership() {
	if r.state != StateLeader {
		return
	}
	// A follower's read fails on its side (the leader changed, or its
	// request times out).
	for _, rr := range r.reads {
		if rr.from == None {
			r.notices = append(r.notices, Notice{Kind: NoticeReadFailed, Context: rr.ctx, Err: ErrLeadershipLost})
		}
	}
	for _, pr := range r.readsWaiting {
		if pr.from == None {
			r.notices = append(r.notices, Notice{Kind: NoticeReadFailed, Context: pr.ctx, Err: ErrLeadershipLost})
		}
	}
	r.rounds, r.leaseAt, r.transferSent = nil, 0, false
	if r.promoting != nil {
		r.notices = append(r.notices, Notice{Kind: NoticeConfigFailed, Err: ErrLeadershipLost})
	}
	r.reads, r.readsWaiting, r.promoting = nil, nil, nil
	r.prs, r.replicas = nil, nil
	r.leadTransferee = None
	r.proposed, r.uncommitted = nil, 0
	r.needBcast = false
}

func (r *Raft) becomePreCandidate() {
	r.failForwarded(ErrLeadershipLost)
	r.abortLeadership()
	r.state = StatePreCandidate
	r.lead = None
	r.votes = map[NodeID]bool{}
	r.resetTimers()
}

func (r *Raft) becomeCandidate() {
	r.failForwarded(ErrLeadershipLost)
	r.abortLeadership()
	r.term++
	r.vote = r.id
	r.state = StateCandidate
	r.lead, r.leadHint = None, None
	r.matched, r.acked, r.pendingAck = 0, 0, false
	r.votes = map[NodeID]bool{}
	r.resetTimers()
}

func (r *Raft) becomeLeader() {
	assert.That(r.state == StateCandidate, "becomeLeader from %s", r.state)
	r.state = StateLeader
	r.lead = r.id
	r.votes = nil
	r.resetTimers()
	r.prs = map[NodeID]*progress{}
	r.snapRead, r.srcRead = snapshotRead{}, nil
	r.rounds, r.leaseAt, r.transferSent = nil, 0, false
	r.leaderSince = r.now()
	r.updateReplicas()
	r.appendEntries(Entry{Index: r.log.lastIndex() + 1, Term: r.term, Type: EntryNoop})
	r.needBcast = true
}

// updateReplicas rebuilds the leader's set of followers from the config,
// keeping the progress of those it already tracks.
func (r *Raft) updateReplicas() {
	want := map[NodeID]bool{}
	for _, s := range r.config().Servers {
		if s.ID != r.id && (s.Role == Voter || s.Role == Standby) {
			want[s.ID] = true
		}
	}
	if r.promoting != nil && r.promoting.server.ID != r.id {
		want[r.promoting.server.ID] = true
	}
	for id := range r.prs {
		if !want[id] {
			delete(r.prs, id)
		}
	}
	r.replicas = r.replicas[:0]
	for id := range want {
		if r.prs[id] == nil {
			r.prs[id] = &progress{next: r.log.lastIndex() + 1, state: probeState, recentActive: true}
		}
		r.replicas = append(r.replicas, id)
	}
	sort.Slice(r.replicas, func(i, j int) bool { return r.replicas[i] < r.replicas[j] })
}

// Tick advances the logical clock by one tick.
func (r *Raft) Tick() {
	switch r.state {
	case StateLeader:
		r.tickLeader()
	default:
		r.electionElapsed++
		r.tickForward()
		if r.canCampaign() && r.electionElapsed >= r.electionTimeout {
			if mutant.On(mutant.RaftNoPreVote) {
				r.campaign(campaignElection)
			} else {
				r.campaign(campaignPreVote)
			}
		}
	}
	r.stopOnStorageErr()
}

func (r *Raft) tickLeader() {
	r.heartbeatElapsed++
	r.electionElapsed++
	if r.electionElapsed >= r.cfg.ElectionTicks {
		r.electionElapsed = 0
		if !r.quorumActive() {
			r.becomeFollower(r.term, None)
			return
		}
		if r.leadTransferee != None {
			r.notices = append(r.notices, Notice{Kind: NoticeTransferFailed,
				Err: fmt.Errorf("raft: transfer to %d timed out", r.leadTransferee)})
			r.leadTransferee = None
		}
	}
	r.tickPromotion()
	for _, id := range r.replicas {
		pr := r.prs[id]
		if pr.state == snapshotState {
			pr.snapIdle++
			if pr.snapIdle >= r.cfg.ElectionTicks {
				// A chunk or its acknowledgement was lost: resend.
				pr.snapOffset, pr.snapDone, pr.snapRewindSeq = pr.snapAcked, false, pr.snapSeq
				r.sendSnapshotChunks(id, pr)
			}
		}
	}
	if r.heartbeatElapsed >= r.cfg.HeartbeatTicks {
		r.heartbeatElapsed = 0
		r.bcastHeartbeat()
	}
}

// quorumActive reports whether a quorum of voters was heard from since the
// last check, and clears the marks.
func (r *Raft) quorumActive() bool {
	active := 0
	for _, id := range r.config().Voters() {
		if id == r.id {
			active++
			continue
		}
		if pr := r.prs[id]; pr != nil && pr.recentActive {
			active++
		}
	}
	for _, pr := range r.prs {
		pr.wasActive, pr.recentActive = pr.recentActive, false
	}
	return active >= r.config().Quorum()
}

// liveQuorum reports whether the voters of m that this leader heard from
// within about an election timeout (itself included, if a voter of m) are
// a quorum of m.
func (r *Raft) liveQuorum(m Membership) (live, quorum int, ok bool) {
	for _, id := range m.Voters() {
		if id == r.id {
			live++
			continue
		}
		if pr := r.prs[id]; pr != nil && (pr.recentActive || pr.wasActive) {
			live++
		}
	}
	return live, m.Quorum(), live >= m.Quorum()
}

// StepDown makes a leader (or candidate) a follower in the same term. The
// node's loop calls it after a storage failure: a leader that cannot persist
// must not keep proposing.
func (r *Raft) StepDown() {
	if r.state != StateFollower {
		r.becomeFollower(r.term, None)
	}
}

// stopOnStorageErr steps down a leader (or candidate) whose storage failed
// a read: it could no longer replicate, and must not block the cluster.
// Other inputs check log.readErr where it matters: no appends or snapshots
// are sent, no campaign starts, no vote is granted, no peer message is
// taken (the node behaves as crashed until restarted).
func (r *Raft) stopOnStorageErr() {
	if r.log.readErr != nil && r.state != StateFollower {
		r.becomeFollower(r.term, None)
	}
}

// HasUpdate reports whether Update would return something.
func (r *Raft) HasUpdate() bool {
	if r.needBcast && r.state == StateLeader {
		return true
	}
	if r.log.readErr != nil {
		// Nothing more can be applied: only the error is news.
		return !r.storageErrReported || r.hasOutput()
	}
	return r.hasOutput() || min(r.log.committed, r.log.persisted()) > r.log.applied
}

// hasOutput reports whether Update has anything but committed entries.
func (r *Raft) hasOutput() bool {
	u := &r.log.unstable
	if (HardState{Term: r.term, Vote: r.vote}) != r.prevHard || len(r.msgs) > 0 || len(r.readStates) > 0 ||
		len(r.notices) > 0 || (u.snapshot != nil && !u.snapshotHandedOut) {
		return true
	}
	return len(u.entries) > 0 && u.handedOut < u.offset+uint64(len(u.entries))-1
}

// Update returns the effects accumulated since the last call. See Update
// for the rules the caller must follow.
func (r *Raft) Update() Update {
	r.stopOnStorageErr()
	if r.needBcast && r.state == StateLeader {
		r.bcastAppend()
	}
	r.needBcast = false
	var u Update
	if hs := (HardState{Term: r.term, Vote: r.vote}); hs != r.prevHard {
		if !mutant.On(mutant.RaftVoteNotPersisted) || hs.Term != r.prevHard.Term {
			u.HardState = &hs
		}
		r.prevHard = hs
	}
	u.Snapshot = r.log.takeSnapshot()
	u.Entries = r.log.takeUnstable()
	u.Messages, r.msgs = r.msgs, nil
	u.CommittedEntries = r.log.nextApply(r.cfg.MaxApplyBytes)
	r.stopOnStorageErr()
	if r.log.readErr != nil && !r.storageErrReported {
		u.StorageErr, r.storageErrReported = r.log.readErr, true
	}
	u.ReadStates, r.readStates = r.readStates, nil
	u.Notices, r.notices = r.notices, nil
	r.trimConfigs()
	return u
}

// trimConfigs forgets memberships superseded at or below the applied index.
func (r *Raft) trimConfigs() {
	n := 0
	for n+1 < len(r.configs) && r.configs[n+1].index <= r.log.applied {
		n++
	}
	if n > 0 {
		r.configs = append(r.configs[:0], r.configs[n:]...)
	}
}

// Persisted reports that entries up to index (whose term is term) are
// durable, or that the snapshot at (index, term) was installed.
func (r *Raft) Persisted(index, term uint64) {
	if !r.log.stableTo(index, term) {
		return
	}
	switch r.state {
	case StateLeader:
		if r.maybeCommit() {
			r.needBcast = true
		}
	case StateFollower:
		r.maybeAck()
	}
	r.stopOnStorageErr()
}

// maybeAck acknowledges to the leader what is both verified to match its
// log and durable here.
func (r *Raft) maybeAck() {
	if r.lead == None || r.lead == r.id {
		return
	}
	idx := min(r.matched, r.log.persisted())
	if idx > r.acked || (r.pendingAck && idx >= r.matched) {
		r.acked = max(r.acked, idx)
		r.pendingAck = false
		r.send(Message{Type: MsgAppResp, To: r.lead, Index: idx})
	}
}

// Status is a snapshot of a node's state, for observation and tests.
type Status struct {
	ID          NodeID
	Term        uint64
	Vote        NodeID
	Lead        NodeID
	State       StateType
	Commit      uint64
	Applied     uint64
	LastIndex   uint64
	Persisted   uint64
	Config      Membership
	ConfigIndex uint64
	// Progress is the leader's view of each replica's match index.
	Progress map[NodeID]uint64
	// Transferee is the target of a leadership transfer in progress.
	Transferee NodeID
}

// ConfigIndex is the index of the entry that set the current membership
// (cheap: callers can skip Status when it did not change).
func (r *Raft) ConfigIndex() uint64 { return r.configIndex() }

// Status returns the node's current state.
func (r *Raft) Status() Status {
	s := Status{ID: r.id, Term: r.term, Vote: r.vote, Lead: r.lead, State: r.state,
		Commit: r.log.committed, Applied: r.log.applied, LastIndex: r.log.lastIndex(),
		Persisted: r.log.persisted(), Config: r.config().Clone(), ConfigIndex: r.configIndex(),
		Transferee: r.leadTransferee}
	if r.state == StateLeader {
		s.Progress = map[NodeID]uint64{}
		for id, pr := range r.prs {
			s.Progress[id] = pr.match
		}
	}
	return s
}

// LastTerm returns the term of the last log entry.
func (r *Raft) LastTerm() uint64 { return r.log.lastTerm() }

// Term returns the term of entry i, or an error if it is not available.
func (r *Raft) Term(i uint64) (uint64, error) { return r.log.term(i) }

// SnapshotMeta returns the metadata for a snapshot of the state machine at
// index, which must be applied. The caller writes the snapshot with it.
func (r *Raft) SnapshotMeta(index uint64) (SnapshotMeta, error) {
	if index > r.log.applied || index == 0 {
		return SnapshotMeta{}, fmt.Errorf("raft: snapshot at %d but applied is %d", index, r.log.applied)
	}
	term, err := r.log.term(index)
	if err != nil {
		return SnapshotMeta{}, fmt.Errorf("raft: snapshot at %d: %w", index, err)
	}
	for i := len(r.configs) - 1; i >= 0; i-- {
		if r.configs[i].index <= index {
			return SnapshotMeta{Index: index, Term: term, Config: r.configs[i].config.Clone(),
				ConfigIndex: r.configs[i].index}, nil
		}
	}
	return SnapshotMeta{}, fmt.Errorf("raft: no membership known at %d", index)
}

// BasicStatus is the part of Status that costs no allocation, for checks
// run after every simulator step.
type BasicStatus struct {
	Term      uint64
	State     StateType
	Lead      NodeID
	Commit    uint64
	Applied   uint64
	LastIndex uint64
	// Persisted is the last index known durable (LastIndex when nothing
	// waits to be persisted).
	Persisted uint64
}

// Basic returns the node's term, state, leader and positions.
func (r *Raft) Basic() BasicStatus {
	return BasicStatus{Term: r.term, State: r.state, Lead: r.lead, Commit: r.log.committed,
		Applied: r.log.applied, LastIndex: r.log.lastIndex(), Persisted: r.log.persisted()}
}
