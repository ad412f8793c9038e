package fsm

import (
	"errors"
	"fmt"

	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/vfs"
)

// Apply applies a committed entry. On the node that captured it, the
// pending transaction becomes visible; elsewhere the frames are appended
// (to the database the entry names, created if this node has none of that
// name yet).
func (d *DB) Apply(e raft.Entry) (any, error) {
	defer d.end(d.begin(WorkApply))
	kind, err := KindOf(e.Data)
	if err != nil {
		return nil, fmt.Errorf("fsm: entry %d: %w", e.Index, err)
	}
	if e.Index > d.appliedIndex {
		d.appliedIndex = e.Index
	}
	var res any
	var x *database
	switch kind {
	case KindFrames:
		res, x, err = d.applyFrames(e)
	default:
		res, x, err = d.applyStatements(e)
	}
	if x != nil {
		x.written = true
	}
	if err == nil && x != nil {
		d.maybeCloseView()
		if d.files != nil {
			// With files, checkpoints wait for the loop's next tick
			// (Maintain): the write's reply does not wait for a file
			// write and its syncs.
			x.checkpointDue = true
		} else if _, cerr := d.maybeCheckpoint(x); cerr != nil {
			return res, cerr
		}
	}
	return res, err
}

// Maintain runs the checkpoints that applied entries made due, and gives
// back the WAL memory of databases idle for walKeepTicks (the loop calls
// it at each tick; loop.StreamingStateMachine). An error is a
// storage failure (FileSyncError): the node stops.
func (d *DB) Maintain() error {
	m := d.begin(WorkTrim)
	d.vfs.Trim(walKeepTicks)
	d.end(m)
	d.abortLongDumps()
	// A file whose goroutine failed a write (one no sync was asked for
	// after, say: a snapshot view's passive checkpoint) stops the node
	// now, as a failed sync does.
	for _, name := range d.sortedNames() {
		if err := d.vfs.FileFailed(name); err != nil {
			x := d.dbs[name]
			x.unsynced, x.syncOwed = true, false
			return FileSyncError{d.checkpointError(x, err)}
		}
	}
	synced := false
	for _, name := range d.sortedNames() {
		x := d.dbs[name]
		if x.syncOwed {
			synced = true
			if err := d.finishSync(x); err != nil {
				return err
			}
		}
	}
	if synced {
		return nil // the copies wait for the next tick: one wait per tick
	}
	for _, name := range d.sortedNames() {
		x := d.dbs[name]
		if !x.checkpointDue {
			continue
		}
		due, err := d.maybeCheckpoint(x)
		// Held back (a write waiting to commit, a transaction, a query)
		// or cut short: the next tick tries again, with or without new
		// entries (a WAL left long when the writes stop is checkpointed).
		x.checkpointDue = due
		if err != nil {
			return err
		}
	}
	return nil
}

// walKeepTicks is how many ticks an idle database keeps the WAL and
// capture room of its largest recent transaction (1 s at the default
// 50 ms tick): a run of large writes reuses memory already mapped (a
// fresh 16 MiB costs 4,096 page faults, 20–50 ms on a busy machine, inside
// the loop event that commits).
const walKeepTicks = 20

// checkpointFrames is the WAL length (in frames) past which a node
// checkpoints on its own, as SQLite's default auto-checkpoint does: the
// WAL's memory stays small and is reused (growing it costs a page fault per
// page written), and readers search a short WAL.
const checkpointFrames = 1000

// SetCheckpointFrames sets the WAL length (in frames) past which the node
// checkpoints (0: checkpointFrames). The simulator lowers it so that its
// small workloads reach the checkpoint path.
func (d *DB) SetCheckpointFrames(n int) { d.ckptFrames = n }

// checkpointWALBytes is the length of x's WAL that makes a checkpoint due.
func (d *DB) checkpointWALBytes(x *database) int64 {
	frames := d.ckptFrames
	if frames <= 0 {
		frames = checkpointFrames
	}
	return int64(frames) * int64(x.pageSize+24)
}

// maybeCheckpoint checkpoints x (TRUNCATE: the WAL restarts empty) when its
// WAL is long and nothing holds it: no captured write, no open cursor
// (whose read snapshot would stop the checkpoint part way). A failure is
// left for the next try; Snapshot reports checkpoint errors.
func (d *DB) maybeCheckpoint(x *database) (due bool, err error) {
	wal := d.vfs.WALSize(x.name)
	if x.soon && x.fileIndex >= d.appliedIndex {
		x.soon = false
	}
	if wal < d.checkpointWALBytes(x) && !x.soon {
		return false, nil
	}
	if d.pending || d.txDB == x || x.cursors > 0 {
		return true, nil
	}
	// The file's goroutine is still writing the last checkpoints (the
	// disk stalls, say, while the filesystem commits): wait for it at a
	// later tick rather than in this loop event, unless the WAL is so long
	// that it must not grow further.
	if wal < 2*heldBackCheckpoints*d.checkpointWALBytes(x) && !d.vfs.FileHasRoom(x.name, wal) {
		return true, nil
	}
	done, err := d.checkpointFileSync(x, d.files != nil)
	if done {
		x.soon = false
	}
	return !done, d.noteCheckpoint(err)
}

// CheckpointSoon makes every written database's checkpoint due at the next
// ticks whatever the length of its WAL (loop.StreamingStateMachine): the
// log's compaction waits for the files to reflect an index past its last
// snapshot, which a database written too little to reach the threshold
// would hold back for good.
func (d *DB) CheckpointSoon() {
	for _, x := range d.dbs {
		if x.written && !x.syncOwed { // one owed moves F on when it is done
			x.checkpointDue, x.soon = true, true
		}
	}
}

// heldBackCheckpoints is how many checkpoints' worth of WAL a database may
// hold before a write starts: back-to-back large writes leave a write
// waiting to commit at nearly every tick, which holds the tick's checkpoint
// back (the 2 GiB large run's leader reached WALs of 62 MB and 355 MiB of
// memory), so a write to a database whose WAL is this long checkpoints it
// first (the copy, in the write's loop event; the sync at the next tick).
const heldBackCheckpoints = 4

// checkpointBeforeWrite checkpoints x before a write is executed on it when
// the ticks' checkpoints have been held back long enough (see
// heldBackCheckpoints). Only a failed sync (FileSyncError) is returned.
// The loop runs these checkpoints in an event of their own first
// (RunHeldCheckpoints); this is for callers that do not.
func (d *DB) checkpointBeforeWrite(x *database) error {
	if !d.heldBack(x) {
		return nil
	}
	due, err := d.maybeCheckpoint(x)
	x.checkpointDue = due
	return err
}

// heldBack reports whether x's checkpoint has been held back long enough
// to run before the next write.
func (d *DB) heldBack(x *database) bool {
	return d.files != nil && x.checkpointDue && !d.pending && d.txDB == nil && x.cursors == 0 &&
		d.vfs.WALSize(x.name) >= heldBackCheckpoints*d.checkpointWALBytes(x)
}

// RunHeldCheckpoints runs the checkpoints the ticks have held back long
// enough (see heldBackCheckpoints), and reports whether it copied any WAL:
// the loop calls it before it starts a write and, when it did, starts the
// write at its next event, so that no loop event both copies a WAL of tens
// of megabytes and executes a write. Only a failed sync (FileSyncError) is
// returned.
func (d *DB) RunHeldCheckpoints() (bool, error) {
	if d.files == nil || d.pending || d.txDB != nil {
		return false, nil
	}
	before := d.checkpoints
	for _, name := range d.sortedNames() {
		if x := d.dbs[name]; d.heldBack(x) {
			due, err := d.maybeCheckpoint(x)
			x.checkpointDue = due
			if err != nil {
				return d.checkpoints != before, err
			}
		}
	}
	return d.checkpoints != before, nil
}

// Checkpoints counts the checkpoints that copied a WAL (not an empty one)
// into its file.
func (d *DB) Checkpoints() uint64 { return d.checkpoints }

// noteCheckpoint keeps a checkpoint's failure for CheckpointStats and
// returns it if the node must stop (a FileSyncError); other failures are
// retried by later checkpoints.
func (d *DB) noteCheckpoint(err error) error {
	if err == nil {
		return nil
	}
	d.lastCheckpointErr = err
	var fe FileSyncError
	if errors.As(err, &fe) {
		return err
	}
	return nil
}

// CheckpointStats are the checkpoint failures so far and the last one.
func (d *DB) CheckpointStats() (failures uint64, last error) {
	return d.checkpointFailures, d.lastCheckpointErr
}

func (d *DB) applyFrames(e raft.Entry) (any, *database, error) {
	if d.pending && e.Index == d.pendingIndex && e.Term == d.pendingTm {
		x := d.pendingDB
		d.pending, d.pendingDB = false, nil
		if err := d.vfs.Apply(x.name); err != nil {
			return nil, nil, fmt.Errorf("fsm: applying entry %d: %w", e.Index, err)
		}
		return d.pendingResult, x, nil
	}
	// Someone else's transaction: ours (if any) can no longer commit on top
	// of the state it read.
	d.Abort()
	f, err := DecodeFrames(e.Data)
	if err != nil {
		return nil, nil, err
	}
	if d.deferred[d.resolve(f.Database)] != nil {
		return nil, nil, d.applyDeferred(e, f)
	}
	x, err := d.applied(f.Database, int(f.PageSize))
	if err != nil {
		return nil, nil, fmt.Errorf("fsm: applying entry %d: %w", e.Index, err)
	}
	if e.Index <= x.fileIndex {
		return nil, x, nil // replayed after a restart: the file has it
	}
	if err := d.vfs.ApplyFrames(x.name, &vfs.Frames{PageSize: int(f.PageSize), DBSize: f.DBSize,
		PageNumbers: f.PageNumbers, Pages: f.Pages, Contiguous: f.raw}); err != nil {
		return nil, nil, fmt.Errorf("fsm: applying entry %d: %w", e.Index, err)
	}
	return nil, x, nil
}

// statementError is a statement's own error when applied in statement
// mode: every replica runs the same statement on the same state and gets
// the same error, so it is the entry's result and apply goes on (it
// satisfies loop.DeterministicError). Every other Apply error means this
// replica failed to apply the entry.
type statementError struct{ err error }

func (e statementError) Error() string     { return e.err.Error() }
func (e statementError) Unwrap() error     { return e.err }
func (statementError) Deterministic() bool { return true }

func (d *DB) applyStatements(e raft.Entry) (any, *database, error) {
	d.Abort()
	if err := d.FinishReplay(); err != nil { // statements need connections
		return nil, nil, err
	}
	s, err := DecodeStatements(e.Data)
	if err != nil {
		return nil, nil, err
	}
	x, err := d.applied(s.Database, d.pageSize)
	if err != nil {
		return nil, nil, fmt.Errorf("fsm: applying entry %d: %w", e.Index, err)
	}
	if e.Index <= x.fileIndex {
		return nil, x, nil // replayed after a restart: the file has it
	}
	if err := x.conn.Exec("BEGIN"); err != nil {
		return nil, nil, err
	}
	var res Result
	for _, st := range s.Statements {
		if res, err = x.run(st.SQL, st.Params, true); err != nil {
			_ = x.conn.Exec("ROLLBACK")
			// The statement's own error is the deterministic result.
			return nil, x, statementError{err}
		}
	}
	if err := x.conn.Exec("COMMIT"); err != nil {
		return nil, nil, err
	}
	if d.vfs.Pending(x.name) {
		if err := d.vfs.Apply(x.name); err != nil {
			return nil, nil, err
		}
	}
	return res, x, nil
}

// hasSchema reports whether x holds any table. It serves the deliberate
// bug mutant.FSMRestoreKeepsOld: Restore taking a database that has one
// for already restored, and keeping it.
func (x *database) hasSchema() bool {
	rows, err := x.conn.Query("SELECT count(*) FROM sqlite_master")
	if err != nil || len(rows) == 0 {
		return false
	}
	n, _ := rows[0][0].(int64)
	return n > 0
}
