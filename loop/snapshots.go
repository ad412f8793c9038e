package loop

import (
	"errors"
	"fmt"

	"github.com/dqlite-go/dqlite/raft"
)

// Snapshots and compaction: restoring a state machine from a snapshot in
// the log, installing one Raft received, and taking one when the log grew
// past its threshold (with the files as the snapshot, compacting the log up
// to what they reflect).

func restore(sm StateMachine, index uint64, data []byte) error {
	if d, ok := sm.(DurableStateMachine); ok {
		return d.RestoreAt(index, data)
	}
	return sm.Restore(data)
}

// DefaultMaxStreamedSnapshotBytes bounds a streamed snapshot this node
// receives (it goes to disk, not memory): 64 TiB.
const DefaultMaxStreamedSnapshotBytes = 1 << 46

// readSnapshotChunkBytes is the chunk size used to read a whole snapshot.
const readSnapshotChunkBytes = 1 << 20

func readSnapshot(s raft.Storage, index uint64) ([]byte, error) {
	var data []byte
	for {
		chunk, last, err := s.SnapshotChunk(index, uint64(len(data)), readSnapshotChunkBytes)
		if err != nil {
			return nil, err
		}
		data = append(data, chunk...)
		if last {
			return data, nil
		}
	}
}

func (l *Loop) installSnapshot(s *raft.Snapshot) {
	if l.stream != nil && s.Data == nil {
		// Streamed: the files first (their record is the commit point),
		// then the log. A crash between leaves files ahead of the log,
		// which a restart handles as after a checkpoint.
		if err := l.stream.InstallReceived(s.Meta.Index); err != nil {
			l.fail(fmt.Errorf("loop: installing streamed snapshot %d: %w", s.Meta.Index, err))
			return
		}
		snap := *s
		snap.Data = l.stream.Marker()
		if err := l.storage.InstallSnapshot(snap); err != nil {
			l.fail(fmt.Errorf("loop: installing snapshot %d: %w", s.Meta.Index, err))
			return
		}
	} else {
		if err := l.storage.InstallSnapshot(*s); err != nil {
			l.fail(fmt.Errorf("loop: installing snapshot %d: %w", s.Meta.Index, err))
			return
		}
		if err := restore(l.fsm, s.Meta.Index, s.Data); err != nil {
			l.fail(fmt.Errorf("loop: restoring snapshot %d: %w", s.Meta.Index, err))
			return
		}
	}
	l.applied, l.snapshot = s.Meta.Index, s.Meta.Index
	l.raft.Persisted(s.Meta.Index, s.Meta.Term)
}

func (l *Loop) maybeSnapshot() {
	if l.writeErr != nil {
		return
	}
	if l.stream != nil {
		// A snapshot of files costs a checkpoint, not an image: also
		// take one every StreamSnapshotBytes of entries, so the log
		// (and what a new node would be sent of it) stays small.
		if l.applied-l.snapshot >= l.cfg.SnapshotThreshold || l.sinceSnapshotBytes >= StreamSnapshotBytes {
			l.compact()
		}
		return
	}
	if l.applied-l.snapshot < l.cfg.SnapshotThreshold {
		return
	}
	meta, err := l.raft.SnapshotMeta(l.applied)
	if err != nil {
		return
	}
	data, err := l.fsm.Snapshot()
	var later interface{ SnapshotLater() bool }
	if errors.As(err, &later) && later.SnapshotLater() {
		return // e.g. a write is pending: the next apply tries again
	}
	if err == nil {
		err = l.storage.CreateSnapshot(meta, data)
	}
	if err != nil {
		l.fail(fmt.Errorf("loop: taking snapshot at %d: %w", l.applied, err))
		return
	}
	l.snapshot = l.applied
}

// compactOrder drops finished request ids from the arrival order.
func (l *Loop) compactOrder() {
	if len(l.order) <= 2*len(l.pending)+16 {
		return
	}
	kept := l.order[:0]
	for _, id := range l.order {
		if l.pending[id] != nil {
			kept = append(kept, id)
		}
	}
	l.order = kept
}
