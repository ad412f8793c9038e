package loop

import (
	"time"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

// Reads: the levels a read may ask for, and serving the reads whose read
// point is applied.

// Read submits a linearizable read: fn runs on the state machine once a
// ReadIndex round confirmed leadership and the read point is applied.
func (l *Loop) Read(id uint64, fn func() (any, error)) Output { return l.ReadIn(id, 0, fn) }

// ReadIn is Read for a client session (0: none): a session whose
// transaction the loop rolled back gets ErrTxAborted instead.
func (l *Loop) ReadIn(id, session uint64, fn func() (any, error)) Output {
	return l.ReadWith(id, session, ReadOptions{}, fn)
}

// ReadLevel says where a read may be served and what it promises (see
// docs/CONSISTENCY.md).
type ReadLevel uint8

const (
	// ReadLeader: linearizable, served by the leader only (from its
	// lease, or after a heartbeat round); any other node refuses with
	// ErrNotLeader. Clients of the original protocol get this level.
	ReadLeader ReadLevel = iota
	// ReadLinearizable: linearizable, served by any node that knows a
	// leader: a follower or standby asks the leader for a read index and
	// serves once it applied it.
	ReadLinearizable
	// ReadStale: served from this node's state when it is known to
	// include every write committed more than MaxStaleness ago (on this
	// node's clock); otherwise as ReadLinearizable, or, with no leader
	// known, refused with raft.ErrTooStale.
	ReadStale
)

// ReadOptions choose a read's level.
type ReadOptions struct {
	Level        ReadLevel
	MaxStaleness time.Duration // ReadStale only
}

// ReadWith submits a read at the given level. A read in the session's
// transaction spanning requests is served at ReadLeader whatever it asks
// (the transaction lives on the leader).
func (l *Loop) ReadWith(id, session uint64, o ReadOptions, fn func() (any, error)) Output {
	if err := l.txAborted[session]; err != nil {
		l.out.Replies = append(l.out.Replies, Reply{ID: id, Err: err})
		return l.flush()
	}
	if err := l.admit(id); err != nil {
		l.out.Replies = append(l.out.Replies, Reply{ID: id, Err: err})
		return l.flush()
	}
	if session != 0 && session == l.tx {
		o.Level = ReadLeader
	}
	var err error
	switch o.Level {
	case ReadLinearizable:
		err = l.raft.ReadIndexAny(id)
	case ReadStale:
		err = l.raft.ReadStale(id, int64(o.MaxStaleness))
	default:
		err = l.raft.ReadIndex(id)
	}
	if err != nil {
		l.out.Replies = append(l.out.Replies, Reply{ID: id, Err: err})
		return l.flush()
	}
	l.track(&request{id: id, read: fn, session: session})
	return l.flush()
}

func (l *Loop) serveReads() {
	for _, id := range l.order {
		req := l.pending[id]
		if req == nil || !req.reading || (req.index > l.applied && !mutant.On(mutant.LoopReadBeforeApply)) {
			continue
		}
		result, err := req.read()
		l.finish(id, Reply{ID: id, Result: result, Err: err})
	}
}
