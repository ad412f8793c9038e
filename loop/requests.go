package loop

import (
	"errors"
	"fmt"

	"github.com/dqlite-go/dqlite/internal/assert"
	"github.com/dqlite-go/dqlite/raft"
)

// The requests the loop tracks: admitting one, finishing it with its
// reply, and failing them when leadership or the storage is lost.

func (l *Loop) admit(id uint64) error {
	switch {
	case l.writeErr != nil:
		// Never executed, and this node will not lead again before a
		// restart: "not leader" sends clients to the leader at once
		// (before, they retried here in a tight loop of failures).
		return fmt.Errorf("%w: %w: %v", ErrNotLeader, ErrStopped, l.writeErr)
	case len(l.pending) >= l.cfg.MaxPendingRequests:
		return fmt.Errorf("%w: %d pending", ErrBusy, len(l.pending))
	case l.pending[id] != nil:
		assert.Fail("request id %d reused while pending", id)
	}
	return nil
}

func (l *Loop) track(req *request) {
	l.pending[req.id] = req
	l.order = append(l.order, req.id)
}

func (l *Loop) finish(id uint64, rep Reply) {
	req := l.pending[id]
	if req == nil {
		return
	}
	delete(l.pending, id)
	if req.read == nil && req.index != 0 {
		ids := l.byIndex[req.index][:0]
		for _, other := range l.byIndex[req.index] {
			if other != id {
				ids = append(ids, other)
			}
		}
		if len(ids) == 0 {
			// The writer slot stays with the entry, not with its
			// requests: a client that stopped waiting does not end the
			// captured transaction (see releaseSlot).
			delete(l.byIndex, req.index)
		} else {
			l.byIndex[req.index] = ids
		}
	}
	if req.acked {
		return // answered when proposed (mutant.LoopReplyBeforeApply)
	}
	l.out.Replies = append(l.out.Replies, rep)
}

// failLostWrites fails the writes of a term this node no longer leads
// whose index a snapshot covered (outcome unknown), or below whose index
// an entry of a later term is committed (they did not happen). The others
// wait for their index to apply (see apply), bounded by
// RequestTimeoutTicks.
func (l *Loop) failLostWrites() {
	st := l.raft.Basic()
	for _, id := range l.order {
		req := l.pending[id]
		if req == nil || req.read != nil || req.index == 0 {
			continue
		}
		if st.Term != req.term || st.State != raft.StateLeader {
			// Keep waiting: the apply path resolves the write by the
			// term of the entry applied at its index. An entry another
			// leader overwrote here is not lost yet: a node that holds
			// it may still win an election and commit it (and then it
			// comes back here); only a different entry committed at its
			// index settles that it did not happen.
			if _, err := l.raft.Term(req.index); errors.Is(err, raft.ErrCompacted) {
				// A snapshot from the new leader covers the index: the
				// entry there may or may not be ours.
				l.finish(id, Reply{ID: id, Err: ErrUnknownOutcome})
				continue
			}
			// It is settled, though, once an entry of a later term is
			// committed at or below its index: a leader holding it
			// would hold an entry of an earlier term there (log
			// matching), so it can never commit. Terms grow along the
			// log: the highest committed entry up to its index tells.
			if j := min(st.Commit, req.index); j > 0 {
				if t, err := l.raft.Term(j); err == nil && t > req.term {
					l.finish(id, Reply{ID: id, Err: ErrLeadershipLost})
				}
			}
		}
	}
}

// fail stops the node for good (until a restart): no more appends, applies
// or messages, and every waiting request is answered now.
func (l *Loop) fail(err error) {
	if l.writeErr != nil {
		return
	}
	l.writeErr = err
	l.staged = nil
	l.raft.StepDown()
	l.failPending(err)
}

// failPending answers every waiting request of a stopped node: a write
// already proposed may have committed (unknown outcome); anything else
// never ran and goes to another node ("not leader").
func (l *Loop) failPending(err error) {
	for _, id := range append([]uint64(nil), l.order...) {
		req := l.pending[id]
		if req == nil {
			continue
		}
		if req.read == nil && req.index != 0 {
			l.finish(id, Reply{ID: id, Err: fmt.Errorf("%w: %w: %v", ErrUnknownOutcome, ErrStopped, err)})
		} else {
			l.finish(id, Reply{ID: id, Err: fmt.Errorf("%w: %w: %v", ErrNotLeader, ErrStopped, err)})
		}
	}
	l.writeQueue = nil
}

// Err returns the failure that stopped the node (a storage failure, or
// ErrApplyFailed), if any.
func (l *Loop) Err() error { return l.writeErr }
