package loop

import (
	"errors"
	"fmt"

	"github.com/dqlite-go/dqlite/raft"
)

// StreamingStateMachine is a DurableStateMachine that sends and receives
// snapshots as streams from its own files (package fsm with a data
// directory): the log then holds snapshot metadata only (Marker as data),
// compacted up to DurableIndex, and a leader streams a view of the
// current state to a replica that needs one.
type StreamingStateMachine interface {
	DurableStateMachine
	raft.SnapshotSink
	// Streams reports whether it streams (false: Snapshot and Restore).
	Streams() bool
	// DurableIndex is the index its files reflect: the log may be
	// compacted up to it.
	DurableIndex() uint64
	// Marker is the data of a snapshot whose state is the files.
	Marker() []byte
	// CheckpointSoon makes the next ticks' checkpoints (Maintain) take
	// every database, so that DurableIndex moves on.
	CheckpointSoon()
	// Maintain runs the checkpoints applied entries made due (at each
	// tick, so that no write's reply waits for one); an error stops the
	// node.
	Maintain() error
	// RunHeldCheckpoints runs, before a write starts, the checkpoints
	// that writes have held back too long, and reports whether it ran
	// any; an error stops the node.
	RunHeldCheckpoints() (bool, error)
	// Checkpoints counts the checkpoints run.
	Checkpoints() uint64
	// OpenView opens a view of the state at the last applied index and
	// returns that index (an error with SnapshotLater() true: not now).
	OpenView() (uint64, error)
	// ReadView reads the open view at index (raft.ErrSnapshotChanged
	// when it is gone).
	ReadView(index, offset uint64, maxBytes int) ([]byte, bool, error)
	// CloseView closes the open view, if any.
	CloseView()
	// ViewOpen reports whether a view is open.
	ViewOpen() (uint64, bool)
	// InstallReceived installs the snapshot the sink received whole.
	InstallReceived(index uint64) error
	// ReplayBound is the last index that may have been applied before a
	// restart (its files may hold pages of entries up to it): the loop
	// applies the log up to it before it starts, then calls
	// FinishReplay.
	ReplayBound() uint64
	FinishReplay() error
}

// replayApplied applies the entries after index up to the state machine's
// ReplayBound (or the log's end) at start, and returns the new applied
// index. They were applied before the restart, so they are committed.
func replayApplied(st StreamingStateMachine, s Storage, index uint64) (uint64, error) {
	end := min(st.ReplayBound(), s.LastIndex())
	for index < end {
		ents, err := s.Entries(index+1, end+1, 1<<20)
		if err != nil {
			return index, fmt.Errorf("loop: reading entries %d..%d to replay: %w", index+1, end, err)
		}
		if len(ents) == 0 {
			return index, fmt.Errorf("loop: no entries %d..%d to replay", index+1, end)
		}
		for _, e := range ents {
			if e.Type == raft.EntryNormal {
				if _, err := st.Apply(e); err != nil && !IsDeterministic(err) {
					return index, fmt.Errorf("%w: replaying entry %d: %w", ErrApplyFailed, e.Index, err)
				}
			}
			st.AppliedTo(e.Index)
			index = e.Index
		}
	}
	return index, nil
}

// viewIdleTicks closes a view nobody read for this many election
// timeouts: the replicas it was for are gone or caught up.
const viewIdleElections = 4

// snapshotSource is the loop's raft.SnapshotSource over a streaming state
// machine.
type snapshotSource struct{ l *Loop }

func (s snapshotSource) OpenSnapshot() (raft.SnapshotMeta, error) {
	l := s.l
	idx, err := l.stream.OpenView()
	if err != nil {
		return raft.SnapshotMeta{}, err
	}
	meta, err := l.raft.SnapshotMeta(idx)
	if err != nil {
		l.stream.CloseView()
		return raft.SnapshotMeta{}, fmt.Errorf("loop: snapshot view at %d: %w: %w", idx, err, raft.ErrSnapshotLater)
	}
	l.viewIdle = 0
	return meta, nil
}

func (s snapshotSource) ReadSnapshot(index, offset uint64, maxBytes int) ([]byte, bool, error) {
	s.l.viewIdle = 0
	return s.l.stream.ReadView(index, offset, maxBytes)
}

// tickView closes an idle view, and runs the checkpoints that are due.
func (l *Loop) tickView() {
	if l.stream == nil {
		return
	}
	if l.writeErr == nil {
		before := l.stream.Checkpoints()
		if err := l.stream.Maintain(); err != nil {
			l.fail(fmt.Errorf("loop: database file failed: %w", err))
			return
		}
		// A tick that copied a WAL starts no write (see pumpWrites).
		l.pumpLater = l.stream.Checkpoints() != before
		// A compaction waiting for the checkpoints (compact) need not
		// wait for another write as well.
		l.maybeSnapshot()
	}
	if _, open := l.stream.ViewOpen(); !open {
		l.viewIdle = 0
		return
	}
	l.viewIdle++
	if l.viewIdle > viewIdleElections*l.cfg.Raft.ElectionTicks {
		l.stream.CloseView()
		l.viewIdle = 0
	}
}

// compact records a snapshot of the files (metadata and Marker) at the
// index they all reflect, so the log can drop what is before it. When the
// ticks' checkpoints already moved them past the last snapshot, that index
// is used as it is (the log keeps the few entries after it); otherwise the
// next ticks checkpoint every database (CheckpointSoon) and a later tick or apply
// compacts. Checkpointing here, syncs included, held the loop while the
// file's goroutine wrote out its queue (21-33 ms of a 10 MB WAL measured on
// the 2 GiB load, and up to the whole 32 MiB queue on a busy disk).
func (l *Loop) compact() {
	idx := min(l.stream.DurableIndex(), l.applied)
	if idx <= l.snapshot {
		l.stream.CheckpointSoon() // the files lag: the next checkpoints move them on
		return
	}
	meta, err := l.raft.SnapshotMeta(idx)
	if err != nil {
		return
	}
	if err := l.storage.CreateSnapshot(meta, l.stream.Marker()); err != nil {
		l.fail(fmt.Errorf("loop: recording snapshot at %d: %w", idx, err))
		return
	}
	l.snapshot = idx
	l.sinceSnapshotBytes = 0
}

// StreamSnapshotBytes is the entry data after which a streaming state
// machine's files are snapshotted (checkpointed and the log compacted),
// whatever the entry count.
const StreamSnapshotBytes = 64 << 20

// IsStorageFailure reports whether err (from the state machine) is a
// failure of its storage rather than of an entry: the node stops as when
// its log fails, and a restart recovers.
func IsStorageFailure(err error) bool {
	var f interface{ StorageFailure() bool }
	return errors.As(err, &f) && f.StorageFailure()
}
