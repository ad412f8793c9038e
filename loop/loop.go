package loop

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"

	"github.com/dqlite-go/dqlite/internal/assert"
	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/raft"
)

// Storage is the durable Raft log the loop writes. Appends run outside the
// loop (on the runtime's I/O goroutine, or as a simulated disk operation);
// everything else runs in the loop.
type Storage interface {
	raft.Storage
	// SetHardState makes term and vote durable before returning.
	SetHardState(hs raft.HardState) error
	// InstallSnapshot replaces the log with a received snapshot, durably.
	InstallSnapshot(snap raft.Snapshot) error
	// CreateSnapshot records a snapshot of the state machine and compacts
	// the log it covers.
	CreateSnapshot(meta raft.SnapshotMeta, data []byte) error
	// Append durably writes entries (replacing any suffix from
	// ents[0].Index) with one write and one sync, and makes them readable
	// through raft.Storage before returning. It may run concurrently with
	// the loop's reads.
	Append(ents []raft.Entry) error
}

// StateMachine is what committed entries are applied to.
type StateMachine interface {
	// Apply applies a committed normal entry and returns its result for the
	// client that proposed it (if any is waiting on this node). An error
	// that is the entry's deterministic result (every replica computes the
	// same one, e.g. a statement's SQL error in statement mode) implements
	// DeterministicError; any other error means this replica could not
	// apply the entry, and the loop stops applying (ErrApplyFailed) rather
	// than let the replica diverge from the others.
	Apply(e raft.Entry) (any, error)
	// Snapshot returns the state as bytes. An error with a method
	// SnapshotLater() bool returning true means "not now, try later".
	Snapshot() ([]byte, error)
	// Restore replaces the state with a snapshot's.
	Restore(data []byte) error
}

// DurableStateMachine is a StateMachine whose state lives on disk beside
// the log: after a restart it may already hold every entry a snapshot
// covers (and apply skips the replayed entries its state has).
type DurableStateMachine interface {
	StateMachine
	// Covers reports whether the state opened from disk includes every
	// entry up to index: the snapshot at index is then not restored.
	Covers(index uint64) bool
	// RestoreAt is Restore of the snapshot taken at index.
	RestoreAt(index uint64, data []byte) error
	// AppliedTo tells it every entry up to index is applied (entries it
	// is not given, such as membership changes, included).
	AppliedTo(index uint64)
}

// Default limits.
const (
	DefaultMaxPendingRequests  = 1024
	DefaultRequestTimeoutTicks = 100
	DefaultSnapshotThreshold   = 8192
	DefaultTxIdleTicks         = 100
	// DefaultMaxWriteJobBytes bounds the entry data of one write job (one
	// append and one sync); more staged entries wait for the next job.
	DefaultMaxWriteJobBytes = 64 << 20
)

// Config configures a Loop.
type Config struct {
	Raft    raft.Config // ID, ticks and limits; Storage and Rand are filled in
	Storage Storage
	FSM     StateMachine
	Rand    *rand.Rand
	// MaxPendingRequests bounds the client requests waiting (proposed or
	// reading) at once; more fail with ErrBusy.
	MaxPendingRequests int
	// RequestTimeoutTicks bounds how long a request waits.
	RequestTimeoutTicks int
	// SnapshotThreshold is the number of applied entries after which the
	// loop takes a snapshot and compacts the log (0: the default).
	SnapshotThreshold uint64
	// TxIdleTicks bounds how long a transaction spanning requests may hold
	// the writer slot without a request (default DefaultTxIdleTicks); then
	// it is rolled back (a vanished client cannot stop every writer).
	TxIdleTicks int
	// MaxWriteJobBytes bounds the entry data of one WriteJob (at least one
	// entry goes in each; default DefaultMaxWriteJobBytes).
	MaxWriteJobBytes int
	// Batcher, if set, runs batchable writes together; MaxBatch bounds how
	// many (default DefaultMaxBatch).
	Batcher  Batcher
	MaxBatch int
}

// Errors given to clients.
var (
	ErrNotLeader      = raft.ErrNotLeader
	ErrLeadershipLost = errors.New("loop: leadership lost before the request committed")
	ErrBusy           = errors.New("loop: too many pending requests")
	ErrTimeout        = errors.New("loop: request timed out")
	ErrStopped        = errors.New("loop: node stopped after a storage failure")
	// ErrApplyFailed: this replica could not apply a committed entry (its
	// state would diverge from the others'); the node stopped as after a
	// storage failure, and Err wraps it.
	ErrApplyFailed = errors.New("loop: applying a committed entry failed")
	// ErrUnknownOutcome: the write may or may not have committed (this node
	// lost track of it, for example when a snapshot replaced its log).
	ErrUnknownOutcome = errors.New("loop: outcome of the write is unknown")
	// ErrTxAborted: the session's transaction spanning requests was rolled
	// back by the node (leadership lost, idle too long); every request of
	// the session fails with it until the client ends the transaction
	// (ROLLBACK succeeds, COMMIT fails with it).
	ErrTxAborted = errors.New("loop: the transaction was rolled back")
	// ErrTxIdle is why a transaction idle past TxIdleTicks was rolled back.
	ErrTxIdle = errors.New("transaction idle for too long")
	// ErrSessionEnded answers requests still queued when their session
	// ended; ErrCanceled those whose client stopped waiting. Neither ran.
	ErrSessionEnded = errors.New("loop: the client session ended")
	ErrCanceled     = errors.New("loop: request canceled before it ran")
)

// DeterministicError is an Apply error that is the entry's result on every
// replica: it goes to the client and apply goes on.
type DeterministicError interface {
	error
	Deterministic() bool
}

// IsDeterministic reports whether err is (or wraps) a DeterministicError.
func IsDeterministic(err error) bool {
	var d DeterministicError
	return errors.As(err, &d) && d.Deterministic()
}

// WriteJob is an append the runtime performs with Storage.Append outside
// the loop, then reports with WriteDone.
type WriteJob struct {
	Entries []raft.Entry
}

// Reply answers a client request.
type Reply struct {
	ID     uint64
	Result any
	Err    error
	// Index is the log index of a write (0 for reads).
	Index uint64
}

// Output is what one event produced: messages to send (after the hard
// state they depend on is durable, which the loop ensures), a write to
// start, and replies to deliver.
type Output struct {
	Messages []raft.Message
	Write    *WriteJob
	Replies  []Reply
	// Again asks for another event soon (Continue): this one left work
	// for it (a write that waits for the checkpoint it ran to be done).
	Again bool
}

// request is a client request waiting in the loop.
type request struct {
	id      uint64
	read    func() (any, error) // reads: run once applied reaches readIndex
	index   uint64              // writes: proposed at index/term
	term    uint64
	ticks   int
	reading bool
	session uint64 // reads: the client session (0: none)
	// Executed writes (SubmitWrite): the result computed on the leader,
	// and how to drop the captured transaction.
	write  *WriteRequest
	result any
	// conf marks a membership change (answered when its entry applies);
	// transfer a leadership transfer (answered when this node stops leading).
	conf, transfer bool
	// acked: the client was already answered when the write was proposed
	// (only under mutant.LoopReplyBeforeApply); finish answers nobody.
	acked bool
}

// Loop is one node's event loop state: it owns the Raft, the state machine
// and the pending requests. Exactly one goroutine calls its methods.
type Loop struct {
	cfg     Config
	raft    *raft.Raft
	storage Storage
	fsm     StateMachine

	writing bool // a WriteJob is in flight
	// snap is a received snapshot waiting for the write in flight to end:
	// installing it under a running append could leave stale entries
	// after it.
	snap     *raft.Snapshot
	staged   []raft.Entry // entries waiting for the next write (group commit)
	writeErr error        // sticky storage failure
	pending  map[uint64]*request
	byIndex  map[uint64][]uint64 // write index -> request ids
	order    []uint64            // request ids in arrival order (for deterministic iteration)
	applied  uint64
	snapshot uint64 // index of the last snapshot taken
	// stream is the state machine when it streams snapshots (nil: whole
	// snapshots); viewIdle counts ticks since its view was last read.
	stream   StreamingStateMachine
	viewIdle int
	// pumpLater: this event copied a WAL (a tick's checkpoint), so it
	// starts no write; the next event does. heldRan: the next write's
	// held-back checkpoints ran (see pumpWrites).
	pumpLater, heldRan bool
	// sinceSnapshotBytes is the entry data applied since the last
	// snapshot (streaming state machines snapshot by size too).
	sinceSnapshotBytes int64
	out                Output
	// writes waiting for the writer slot, and the one holding it.
	writeQueue []*request
	// The entry holding the writer slot (0: free), and how to drop what it
	// captured.
	writingIndex, writingTerm uint64
	writingAbort              func()
	// The membership change and the transfer being waited on (0: none).
	confReq, transferReq uint64
	// The transfer's target, the term it started in, and the ticks since
	// this node stopped leading (see transferDone).
	transferTo    raft.NodeID
	transferTerm  uint64
	transferTicks int
	// The session whose transaction spanning requests holds the writer
	// slot (0: none), the term it began in, its idle ticks and how to roll
	// it back; txAborted holds, per session, why the loop rolled back its
	// transaction, until the client ends it.
	tx        uint64
	txTerm    uint64
	txIdle    int
	txAbort   func()
	txAborted map[uint64]error
}

// New creates a loop from durable state, restoring the state machine from
// the storage's snapshot.
func New(cfg Config) (*Loop, error) {
	if cfg.MaxPendingRequests == 0 {
		cfg.MaxPendingRequests = DefaultMaxPendingRequests
	}
	if cfg.RequestTimeoutTicks == 0 {
		cfg.RequestTimeoutTicks = DefaultRequestTimeoutTicks
	}
	if cfg.SnapshotThreshold == 0 {
		cfg.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.TxIdleTicks == 0 {
		cfg.TxIdleTicks = DefaultTxIdleTicks
	}
	if cfg.MaxWriteJobBytes == 0 {
		cfg.MaxWriteJobBytes = DefaultMaxWriteJobBytes
	}
	snap := cfg.Storage.Snapshot()
	durable, _ := cfg.FSM.(DurableStateMachine)
	if snap.Index > 0 && (durable == nil || !durable.Covers(snap.Index)) {
		data, err := readSnapshot(cfg.Storage, snap.Index)
		if err != nil {
			return nil, fmt.Errorf("loop: reading snapshot %d: %w", snap.Index, err)
		}
		// A snapshot of files (its data the marker) is never restored:
		// the log was compacted only up to what every database file
		// then reflected, so the files and the log after the snapshot
		// are the state (a database recorded behind it was created
		// after it, and the log holds all its entries).
		if st, ok := cfg.FSM.(StreamingStateMachine); !ok || !bytes.Equal(data, st.Marker()) {
			if err := restore(cfg.FSM, snap.Index, data); err != nil {
				return nil, fmt.Errorf("loop: restoring snapshot %d: %w", snap.Index, err)
			}
		}
	}
	if durable != nil {
		durable.AppliedTo(snap.Index) // the state is at least there
	}
	l := &Loop{cfg: cfg, storage: cfg.Storage, fsm: cfg.FSM, pending: map[uint64]*request{},
		byIndex: map[uint64][]uint64{}, applied: snap.Index, snapshot: snap.Index, txAborted: map[uint64]error{}}
	rc := cfg.Raft
	rc.Storage, rc.Rand, rc.Applied = cfg.Storage, cfg.Rand, snap.Index
	if st, ok := cfg.FSM.(StreamingStateMachine); ok && st.Streams() {
		// Files that a checkpoint cut short may hold pages of entries
		// up to the replay bound: apply them now, so the state (and
		// the views sent from it) is whole from the start.
		applied, err := replayApplied(st, cfg.Storage, snap.Index)
		if err == nil {
			err = st.FinishReplay()
		}
		if err != nil {
			return nil, err
		}
		l.applied, rc.Applied = applied, applied
		l.stream = st
		rc.SnapshotSource, rc.SnapshotSink = snapshotSource{l}, st
		if rc.MaxSnapshotBytes == 0 {
			rc.MaxSnapshotBytes = DefaultMaxStreamedSnapshotBytes
		}
	}
	r, err := raft.New(rc)
	if err != nil {
		return nil, err
	}
	l.raft = r
	return l, nil
}

// Raft exposes the state machine for status queries (read only use).
func (l *Loop) Raft() *raft.Raft { return l.raft }

// Applied is the index of the last applied entry.
func (l *Loop) Applied() uint64 { return l.applied }

// Tick advances time by one tick.
func (l *Loop) Tick() Output {
	l.raft.Tick()
	for _, id := range l.order {
		req := l.pending[id]
		if req == nil {
			continue
		}
		req.ticks++
		if req.ticks > l.cfg.RequestTimeoutTicks {
			err := ErrTimeout
			if req.write != nil && req.index == 0 {
				// Still queued: never executed, safe to send again.
				err = fmt.Errorf("%w: timed out waiting for the writer slot", ErrBusy)
			}
			l.finish(id, Reply{ID: id, Err: err})
		}
	}
	if l.transferReq != 0 && l.raft.Basic().State != raft.StateLeader {
		l.transferTicks++
		l.transferDone()
	}
	if l.tx != 0 {
		l.txIdle++
		if l.txIdle > l.cfg.TxIdleTicks {
			l.abortTx(ErrTxIdle)
		}
	}
	l.tickView()
	return l.flush()
}

// Step handles a peer message. Malformed messages are returned as errors
// (the caller logs them and may drop the link).
func (l *Loop) Step(m raft.Message) (Output, error) {
	err := l.raft.Step(m)
	return l.flush(), err
}

// Propose submits a write; its reply comes once it is applied (or fails).
func (l *Loop) Propose(id uint64, data []byte) Output {
	if err := l.admit(id); err != nil {
		l.out.Replies = append(l.out.Replies, Reply{ID: id, Err: err})
		return l.flush()
	}
	index, term, err := l.raft.Propose(data)
	if err != nil {
		l.out.Replies = append(l.out.Replies, Reply{ID: id, Err: err})
		return l.flush()
	}
	req := &request{id: id, index: index, term: term}
	l.track(req)
	l.byIndex[index] = append(l.byIndex[index], id)
	if mutant.On(mutant.LoopReplyBeforeApply) {
		l.ackEarly(req, nil)
	}
	return l.flush()
}

// Continue is the event an Output with Again asked for: it carries on
// with the work the last event left (the next write).
func (l *Loop) Continue() Output { return l.flush() }

// WriteDone reports that the last WriteJob finished.
func (l *Loop) WriteDone(job *WriteJob, err error) Output {
	assert.That(l.writing, "WriteDone without a write in flight")
	l.writing = false
	if err != nil {
		// Not retried: the kernel may have dropped the dirty pages. Stop
		// appending and stop leading; what is on disk is the truth.
		l.fail(err)
		return l.flush()
	}
	last := job.Entries[len(job.Entries)-1]
	l.raft.Persisted(last.Index, last.Term)
	if s := l.snap; s != nil {
		l.snap = nil
		l.installSnapshot(s)
	}
	return l.flush()
}

// flush drains raft's Update into the Output.
func (l *Loop) flush() Output {
	for l.raft.HasUpdate() {
		u := l.raft.Update()
		l.handleUpdate(u)
	}
	l.pumpWrites()
	l.pumpLater = false
	for l.raft.HasUpdate() {
		u := l.raft.Update()
		l.handleUpdate(u)
	}
	if !l.writing && l.snap == nil && len(l.staged) > 0 && l.writeErr == nil {
		n := jobEntries(l.staged, l.cfg.MaxWriteJobBytes)
		l.out.Write = &WriteJob{Entries: l.staged[:n:n]}
		l.staged = l.staged[n:]
		if len(l.staged) == 0 {
			l.staged = nil
		}
		l.writing = true
	}
	l.compactOrder()
	out := l.out
	l.out = Output{}
	return out
}

func (l *Loop) handleUpdate(u raft.Update) {
	if u.StorageErr != nil {
		// A read of the log or snapshot failed: stop as after a failed
		// append (what the disk holds is the truth after a restart).
		l.fail(fmt.Errorf("loop: reading the log: %w", u.StorageErr))
	}
	if u.HardState != nil {
		if err := l.storage.SetHardState(*u.HardState); err != nil {
			l.fail(fmt.Errorf("loop: persisting term and vote: %w", err))
			return
		}
	}
	if u.Snapshot != nil {
		l.staged = nil
		if l.writing {
			l.snap = u.Snapshot
		} else {
			l.installSnapshot(u.Snapshot)
		}
	}
	if len(u.Entries) > 0 && l.writeErr == nil {
		l.staged = appendStaged(l.staged, u.Entries)
	}
	if l.writeErr == nil {
		l.out.Messages = append(l.out.Messages, u.Messages...)
	}
	for _, e := range u.CommittedEntries {
		l.apply(e)
	}
	for _, rs := range u.ReadStates {
		if req := l.pending[rs.Context]; req != nil {
			req.index, req.reading = rs.Index, true
		}
	}
	for _, n := range u.Notices {
		l.handleNotice(n)
	}
	l.transferDone()
	l.serveReads()
	l.failLostWrites()
	l.maybeSnapshot()
}

// jobEntries is how many staged entries go in one write job: those whose
// data (and raft.EntryOverheadBytes each) totals at most maxBytes, and at
// least one.
func jobEntries(staged []raft.Entry, maxBytes int) int {
	size := 0
	for i, e := range staged {
		size += len(e.Data) + raft.EntryOverheadBytes
		if i > 0 && size > maxBytes {
			return i
		}
	}
	return len(staged)
}

// appendStaged adds entries to the staged batch, replacing any staged
// suffix they overwrite.
func appendStaged(staged, ents []raft.Entry) []raft.Entry {
	first := ents[0].Index
	for len(staged) > 0 && staged[len(staged)-1].Index >= first {
		staged = staged[:len(staged)-1]
	}
	return append(staged, ents...)
}

func (l *Loop) apply(e raft.Entry) {
	if l.writeErr != nil {
		return // stopped: nothing more is applied (see fail)
	}
	var result any
	var err error
	if e.Type == raft.EntryNormal {
		result, err = l.fsm.Apply(e)
	}
	if err != nil && IsStorageFailure(err) {
		// The entry applied, its database file failed: stop as a log
		// failure does; a restart replays from what the file holds.
		l.fail(fmt.Errorf("loop: database file failed after entry %d: %w", e.Index, err))
		return
	}
	if err != nil && !IsDeterministic(err) {
		l.fail(fmt.Errorf("%w: entry %d (term %d): %w", ErrApplyFailed, e.Index, e.Term, err))
		return
	}
	l.applied = e.Index
	l.sinceSnapshotBytes += int64(len(e.Data))
	if d, ok := l.fsm.(DurableStateMachine); ok {
		d.AppliedTo(e.Index)
	}
	if l.writingIndex != 0 && e.Index >= l.writingIndex {
		// Applied: the state machine made its captured transaction
		// visible (same term) or dropped it for another leader's entry.
		l.releaseSlot(false)
	}
	for _, id := range append([]uint64(nil), l.byIndex[e.Index]...) {
		req := l.pending[id]
		if req.term != e.Term {
			l.finish(id, Reply{ID: id, Err: ErrLeadershipLost})
			continue
		}
		res := result
		if req.write != nil && err == nil && req.result != nil {
			res = req.result // computed when the leader executed it
		}
		l.finish(id, Reply{ID: id, Result: res, Err: err, Index: e.Index})
	}
}
