package loop

import (
	"fmt"

	"github.com/dqlite-go/dqlite/internal/assert"
	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/raft"
)

// Writes executed on the leader: the queue for the writer slot, batches
// (group commit), transactions spanning requests, and what drops a write
// that has not run (its session ended, its client interrupted it or gave
// up).

// WriteRequest is a write that the leader executes before proposing it
// (SQLite frames: the statement runs, its frames become the entry). Writes
// run one at a time, in arrival order, once the leader has applied every
// committed entry (so they never read stale state).
type WriteRequest struct {
	ID uint64
	// Execute runs the write and returns the command to propose (nil if it
	// wrote nothing) and the result for the client.
	Execute func() (cmd []byte, result any, err error)
	// Proposed tells the state machine where its entry went.
	Proposed func(index, term uint64)
	// Abort drops what Execute captured (leadership lost, proposal refused).
	Abort func()
	// Batch, when set and the loop has a Batcher, replaces the three
	// functions above: consecutive batchable writes of the same Group (a
	// database) run together as one transaction and one entry (group
	// commit).
	Batch any
	Group string
	// Tx, when not 0, names the client session the write comes from, for
	// transactions spanning requests. While the session's transaction is
	// open it holds the writer slot, and the session's writes run at once
	// with ExecuteTx (Batch is ignored); ExecuteTx also replaces Execute
	// when Batch is nil. open reports whether a transaction is open after
	// the write. Abort also rolls an open transaction back.
	Tx        uint64
	ExecuteTx func() (cmd []byte, result any, open bool, err error)
	// EndsTx marks a COMMIT or ROLLBACK: it consumes the report of a
	// transaction the node rolled back (a ROLLBACK then succeeds).
	EndsTx, Rollback bool
}

// Batcher executes several queued writes as one transaction and one entry
// (a savepoint per write, so one write's error undoes only that write).
type Batcher interface {
	ExecuteBatch(batch []any) (cmd []byte, results []any, errs []error)
	Proposed(index, term uint64)
	Abort()
}

// DefaultMaxBatch bounds the writes merged into one entry.
const DefaultMaxBatch = 128

// SubmitWrite queues a write executed on the leader (see WriteRequest).
func (l *Loop) SubmitWrite(w WriteRequest) Output {
	if err := l.admit(w.ID); err != nil {
		l.out.Replies = append(l.out.Replies, Reply{ID: w.ID, Err: err})
		return l.flush()
	}
	if w.Tx != 0 {
		if err, ok := l.txAborted[w.Tx]; ok {
			if w.EndsTx {
				delete(l.txAborted, w.Tx)
			}
			if w.Rollback {
				err = nil
			}
			l.out.Replies = append(l.out.Replies, Reply{ID: w.ID, Err: err})
			return l.flush()
		}
	}
	if l.raft.Basic().State != raft.StateLeader {
		l.out.Replies = append(l.out.Replies, Reply{ID: w.ID, Err: ErrNotLeader})
		return l.flush()
	}
	req := &request{id: w.ID, write: &w}
	l.track(req)
	if w.Tx != 0 && w.Tx == l.tx {
		// The session's transaction holds the writer slot: run now.
		l.txIdle = 0
		l.startWrite(req)
		return l.flush()
	}
	l.writeQueue = append(l.writeQueue, req)
	return l.flush()
}

// abortTx rolls back the open transaction spanning requests; the session's
// next requests fail with ErrTxAborted wrapping why.
func (l *Loop) abortTx(why error) {
	if l.tx == 0 {
		return
	}
	l.txAborted[l.tx] = fmt.Errorf("%w: %w", ErrTxAborted, why)
	l.releaseTx()
}

func (l *Loop) releaseTx() {
	if l.txAbort != nil {
		l.txAbort()
	}
	l.tx, l.txAbort = 0, nil
}

// TxHeld reports whether a transaction spanning requests holds the writer
// slot, and how many sessions have a rolled back transaction to hear about.
func (l *Loop) TxHeld() (bool, int) { return l.tx != 0, len(l.txAborted) }

// QueuedWrites is the number of writes waiting for the writer slot.
func (l *Loop) QueuedWrites() int { return len(l.writeQueue) }

// TxOpen reports whether session's transaction spanning requests is open
// (and holds the writer slot).
func (l *Loop) TxOpen(session uint64) bool { return session != 0 && l.tx == session }

// TxErr is why the loop rolled back session's transaction (nil if it did
// not); reads of the session report it too.
func (l *Loop) TxErr(session uint64) error { return l.txAborted[session] }

// TxActive tells the loop the session's transaction is in use (a query
// streaming its rows): it is not idle.
func (l *Loop) TxActive(session uint64) {
	if l.TxOpen(session) {
		l.txIdle = 0
	}
}

// EndSession rolls back the session's open transaction, if any, and
// forgets it (its client disconnected).
func (l *Loop) EndSession(session uint64) Output {
	if l.TxOpen(session) {
		l.releaseTx()
	}
	delete(l.txAborted, session)
	// Its requests still queued must not run (a BEGIN would open a
	// transaction nobody ends).
	l.dropQueued(func(req *request) bool { return req.write.Tx == session }, ErrSessionEnded)
	return l.flush() // queued writers may go now
}

// dropQueued fails, with err, the queued writes drop picks: they never run.
func (l *Loop) dropQueued(drop func(*request) bool, err error) {
	kept := l.writeQueue[:0]
	for _, req := range l.writeQueue {
		if drop(req) {
			l.finish(req.id, Reply{ID: req.id, Err: err})
			continue
		}
		kept = append(kept, req)
	}
	l.writeQueue = kept
}

// Interrupt drops session's requests that have not run yet (a write queued
// for the writer slot, a read waiting for its read point): they fail with
// ErrCanceled and never run. One already running goes on (its client
// interrupted it too late) and is answered as usual.
func (l *Loop) Interrupt(session uint64) Output {
	if session == 0 {
		return l.flush()
	}
	l.dropQueued(func(req *request) bool { return req.write.Tx == session }, ErrCanceled)
	for _, id := range l.order {
		if req := l.pending[id]; req != nil && req.read != nil && req.session == session {
			l.finish(id, Reply{ID: id, Err: ErrCanceled})
		}
	}
	return l.flush()
}

// Cancel drops a request whose client stopped waiting, if it has not run
// yet (a queued write, a read): it never will. A write already executed
// keeps going (its outcome is what it is).
func (l *Loop) Cancel(id uint64) Output {
	req := l.pending[id]
	switch {
	case req == nil:
	case req.write != nil && req.index == 0:
		l.dropQueued(func(r *request) bool { return r == req }, ErrCanceled)
	case req.read != nil:
		l.finish(id, Reply{ID: id, Err: ErrCanceled})
	}
	return l.flush()
}

// pumpWrites runs the next queued write when the writer slot is free and
// the leader has applied everything committed.
func (l *Loop) pumpWrites() {
	b := l.raft.Basic()
	if l.writingIndex != 0 && (b.State != raft.StateLeader || b.Term != l.writingTerm) {
		// Leadership lost: drop the captured transaction now. The requests
		// keep waiting: their entry may still commit (then they succeed) or
		// be overwritten (then they fail with ErrLeadershipLost). A later
		// term's writes start only after the barrier, so the slot is free.
		l.releaseSlot(true)
	}
	if l.tx != 0 && (b.State != raft.StateLeader || b.Term != l.txTerm || l.writeErr != nil) {
		l.abortTx(ErrLeadershipLost)
	}
	if b.State != raft.StateLeader {
		for _, req := range l.writeQueue {
			l.finish(req.id, Reply{ID: req.id, Err: ErrNotLeader})
		}
		l.writeQueue = nil
		return
	}
	for l.writingIndex == 0 && l.tx == 0 && len(l.writeQueue) > 0 && l.writeErr == nil {
		if t, _ := l.raft.Term(b.Commit); t != b.Term || l.applied < b.Commit {
			return // barrier: not everything committed is applied yet
		}
		// One loop event copies a WAL or executes a write, not both
		// (each can take tens of milliseconds): a checkpoint this event
		// ran, or one the writes have held back too long, goes first,
		// and the write waits for the next event.
		if l.pumpLater {
			l.out.Again = true
			return
		}
		if l.stream != nil && !l.heldRan {
			ran, err := l.stream.RunHeldCheckpoints()
			if err != nil {
				l.fail(fmt.Errorf("loop: database file failed: %w", err))
				return
			}
			if ran {
				l.heldRan = true // once a write: a checkpoint cut short
				l.out.Again = true
				return
			}
		}
		l.heldRan = false
		l.assertSlotFree()
		var batch []*request
		for len(l.writeQueue) > 0 && len(batch) < l.cfg.MaxBatch {
			req := l.writeQueue[0]
			if l.pending[req.id] == nil {
				l.writeQueue = l.writeQueue[1:]
				continue // timed out while queued
			}
			if req.write.Batch == nil || l.cfg.Batcher == nil {
				if len(batch) == 0 {
					l.writeQueue = l.writeQueue[1:]
					l.startWrite(req)
				}
				break
			}
			if len(batch) > 0 && req.write.Group != batch[0].write.Group {
				break // another database: the next batch
			}
			batch = append(batch, req)
			l.writeQueue = l.writeQueue[1:]
		}
		if len(batch) > 0 {
			l.startBatch(batch)
		}
	}
}

func (l *Loop) startWrite(req *request) {
	var cmd []byte
	var result any
	var err error
	if w := req.write; w.Tx != 0 && w.ExecuteTx != nil && (w.Batch == nil || l.cfg.Batcher == nil || w.Tx == l.tx) {
		var open bool
		cmd, result, open, err = w.ExecuteTx()
		switch {
		case open:
			if l.tx != w.Tx {
				l.tx, l.txTerm, l.txAbort = w.Tx, l.raft.Basic().Term, w.Abort
			}
			l.txIdle = 0
			l.finish(req.id, Reply{ID: req.id, Result: result, Err: err})
			return
		case l.tx == w.Tx:
			l.tx, l.txAbort = 0, nil // ended: the slot passes to its entry, if any
			if err != nil && !w.EndsTx {
				// SQLite rolled the whole transaction back (INSERT OR
				// ROLLBACK, RAISE(ROLLBACK), an I/O error): the client
				// still believes it open, so its next requests must
				// fail, not run alone.
				err = fmt.Errorf("%w: %w", ErrTxAborted, err)
				l.txAborted[w.Tx] = err
			}
		}
	} else {
		cmd, result, err = req.write.Execute()
	}
	if err != nil || cmd == nil {
		l.finish(req.id, Reply{ID: req.id, Result: result, Err: err})
		return
	}
	index, term, err := l.raft.Propose(cmd)
	if err != nil {
		req.write.Abort()
		l.finish(req.id, Reply{ID: req.id, Err: err})
		return
	}
	req.write.Proposed(index, term)
	l.holdSlot([]*request{req}, []any{result}, index, term, req.write.Abort)
}

func (l *Loop) startBatch(reqs []*request) {
	items := make([]any, len(reqs))
	for i, r := range reqs {
		items[i] = r.write.Batch
	}
	cmd, results, errs := l.cfg.Batcher.ExecuteBatch(items)
	var ok []*request
	var okResults []any
	for i, r := range reqs {
		switch {
		case errs[i] != nil:
			l.finish(r.id, Reply{ID: r.id, Err: errs[i]})
		case cmd == nil:
			l.finish(r.id, Reply{ID: r.id, Result: results[i]})
		default:
			ok, okResults = append(ok, r), append(okResults, results[i])
		}
	}
	if cmd == nil {
		return
	}
	if len(ok) == 0 {
		// Every write failed, yet the transaction captured frames (e.g.
		// the deduplication table's creation): nobody proposes them, so
		// drop them, or every later write would find a capture pending.
		l.cfg.Batcher.Abort()
		return
	}
	index, term, err := l.raft.Propose(cmd)
	if err != nil {
		l.cfg.Batcher.Abort()
		for _, r := range ok {
			l.finish(r.id, Reply{ID: r.id, Err: err})
		}
		return
	}
	l.cfg.Batcher.Proposed(index, term)
	l.holdSlot(ok, okResults, index, term, l.cfg.Batcher.Abort)
}

// holdSlot records proposed writes as holding the writer slot.
func (l *Loop) holdSlot(reqs []*request, results []any, index, term uint64, abort func()) {
	for i, r := range reqs {
		r.index, r.term, r.result = index, term, results[i]
		l.byIndex[index] = append(l.byIndex[index], r.id)
	}
	l.writingIndex, l.writingTerm, l.writingAbort = index, term, abort
	if mutant.On(mutant.LoopReplyBeforeApply) {
		for i, r := range reqs {
			l.ackEarly(r, results[i])
		}
	}
}

// ackEarly is the deliberate bug mutant.LoopReplyBeforeApply: it answers a
// write as succeeded as soon as it is proposed. The request keeps its place
// (its entry still holds the writer slot and resolves it when applied or
// lost), but whatever finish says later reaches nobody.
func (l *Loop) ackEarly(req *request, result any) {
	l.out.Replies = append(l.out.Replies, Reply{ID: req.id, Result: result, Index: req.index})
	req.acked = true
}

// releaseSlot frees the writer slot held by a proposed entry, dropping its
// captured transaction first when abort is set. The slot is released only
// here: when the entry applies or when this node stops leading in its term
// (never when its requests finish: a timed out client leaves the capture
// pending in the state machine until its entry resolves).
func (l *Loop) releaseSlot(abort bool) {
	if abort && l.writingAbort != nil {
		l.writingAbort()
	}
	l.writingIndex, l.writingTerm, l.writingAbort = 0, 0, nil
}

// PendingReporter is implemented by state machines that capture a write
// before proposing it (fsm's frames mode): Pending reports whether one is
// captured and not yet applied or dropped.
type PendingReporter interface{ Pending() bool }

// assertSlotFree checks, before a write starts, that the loop's free writer
// slot and the state machine's capture agree: a capture left behind would
// refuse every following write.
func (l *Loop) assertSlotFree() {
	for _, sm := range []any{l.fsm, l.cfg.Batcher} {
		if p, ok := sm.(PendingReporter); ok {
			assert.That(!p.Pending(), "writer slot free but the state machine holds a captured write (applied %d)", l.applied)
		}
	}
}
