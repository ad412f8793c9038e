package fsm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/dqlite-go/dqlite/vfs"
)

// Mode selects what is replicated.
type Mode uint8

const (
	// ModeFrames replicates the WAL frames of each write transaction (the
	// product): followers never execute SQL.
	ModeFrames Mode = iota + 1
	// ModeStatements replicates SQL text and parameters, executed by every
	// node at apply time (rqlite-style, for comparison only).
	ModeStatements
)

// Result is the outcome of a write for its client.
type Result struct {
	LastInsertID int64
	RowsAffected int64
	// Rows are the rows of a write sent as a query (BatchItem.Rows).
	Rows *Rows
}

// ErrSnapshotBusy is returned by Snapshot while a write is pending; the
// caller tries again later.
var ErrSnapshotBusy error = snapshotBusy{}

type snapshotBusy struct{}

func (snapshotBusy) Error() string { return "fsm: a write is pending, snapshot later" }

// SnapshotLater tells the loop to try again later (see loop.StateMachine).
func (snapshotBusy) SnapshotLater() bool { return true }

// DB is one node's replicated SQLite databases. It implements the loop's
// StateMachine and Batcher. Not safe for concurrent use (the node's loop
// owns it). The databases it holds are in databases.go.
type DB struct {
	vfs        *vfs.VFS
	def        string // the default database: the one of methods and items that name none
	pageSize   int    // of the databases this node creates
	mode       Mode
	ckptFrames int // the WAL length in frames that makes a checkpoint due (0: checkpointFrames)
	dbs        map[string]*database
	// cursors are the open queries on the databases' read connections,
	// which step across several loop events, isolated from the writes
	// made meanwhile.
	cursors map[*vfs.Stmt]openQuery
	// queryCompiles counts the statements OpenCursor compiled.
	queryCompiles uint64
	// txDB holds a client's transaction spanning requests, open on its
	// write connection (see ExecuteTx); txCursors are its queries.
	txDB      *database
	txCursors map[*vfs.Stmt]struct{}
	// The transaction this node captured and proposed, waiting for its
	// entry to be applied.
	pending                 bool
	pendingDB               *database
	pendingIndex, pendingTm uint64
	pendingResult           Result
	dedupWrites             uint64
	// files keeps the databases' main files and their record (nil: the
	// databases live in memory); ownVFS: Close closes the VFS too.
	files  *fileStore
	ownVFS bool
	// appliedIndex is the index of the last entry applied.
	appliedIndex uint64
	// checkpointFailures counts checkpoints that failed (see
	// ErrCheckpoint); lastCheckpointErr is the latest failure.
	checkpointFailures uint64
	lastCheckpointErr  error
	checkpoints        uint64 // see Checkpoints
	redone             uint64 // see Redone
	// view is the snapshot view being sent (stream.go), in the snapshot
	// being received; viewsOpened and viewsOverrun count views.
	view                      *view
	in, ready                 *incoming // being received; received whole, to install
	viewsOpened, viewsOverrun uint64
	// received counts the bytes of streamed snapshots received.
	received uint64
	// replayBound is the largest dirty index of the record the set was
	// opened with (files.go): views wait until applied reaches it.
	replayBound uint64
	// appliedBefore is the largest index, recorded or dirty, of the
	// record the set was opened with: the node applied every entry up to
	// it before it stopped, so they are committed.
	appliedBefore uint64
	// deferred are the databases opened from disk waiting for the
	// replay to open their connections (nil: none; see FinishReplay).
	deferred map[string]*deferredDB
	// cacheWrite and cacheRead are the page cache sizes (0: defaults).
	cacheWrite, cacheRead int64
	phase                 string // see Phase
	work                  workTimer
}

// ErrFramesNeedFiles: frames mode keeps its databases in files (OpenFiles;
// tests and the simulator use an in-memory faulty disk), never in memory.
var ErrFramesNeedFiles = errors.New("fsm: frames mode keeps its databases in files: use OpenFiles")

// Open opens a set of statement-mode databases on v, in memory, with def
// as its default database (opened, created if need be); databases it
// creates have pageSize. Its snapshots are whole images. Only this
// package's tests use it: nodes open both modes in files (OpenFiles, with
// redo journals in statement mode). Frames mode is refused
// (ErrFramesNeedFiles).
func Open(v *vfs.VFS, def string, pageSize int, mode Mode) (*DB, error) {
	if mode == ModeFrames {
		return nil, ErrFramesNeedFiles
	}
	if !validPageSize(uint32(pageSize)) {
		return nil, fmt.Errorf("fsm: invalid page size %d", pageSize)
	}
	d := newDB(v, def, pageSize, mode)
	if _, err := d.database(def, true); err != nil {
		return nil, err
	}
	return d, nil
}

func newDB(v *vfs.VFS, def string, pageSize int, mode Mode) *DB {
	return &DB{vfs: v, def: def, pageSize: pageSize, mode: mode, dbs: map[string]*database{},
		cursors: map[*vfs.Stmt]openQuery{}, txCursors: map[*vfs.Stmt]struct{}{}}
}

// OwnVFS makes Close close the VFS too.
func (d *DB) OwnVFS() { d.ownVFS = true }

// VFS is the VFS the databases live on.
func (d *DB) VFS() *vfs.VFS { return d.vfs }

// Close closes every database's connections.
func (d *DB) Close() error {
	d.CloseView()
	if d.files != nil {
		d.AbortSnapshot()
		d.dropReceived(d.ready)
		d.ready = nil
	}
	d.closeCursors()
	d.closeTxCursors()
	var first error
	for _, x := range d.dbs {
		if err := x.close(); err != nil && first == nil {
			first = err
		}
	}
	clear(d.dbs)
	if d.ownVFS && d.vfs != nil {
		d.vfs.Close()
		d.vfs = nil
	}
	return first
}

// Conn is the default database's write connection (for tests and checks).
func (d *DB) Conn() *vfs.Conn { return d.dbs[d.def].conn }

// ConnOf is database name's write connection (for tests and checks), nil
// when this node has no database of that name.
func (d *DB) ConnOf(name string) *vfs.Conn {
	if x := d.dbs[name]; x != nil {
		return x.conn
	}
	return nil
}

// Mode is the replication mode.
func (d *DB) Mode() Mode { return d.mode }

// Execute runs a write on the default database, on the leader, and
// returns the command to propose. In frames mode the statement runs now and
// its frames are captured (invisible until Applied); in statement mode
// nothing runs until apply. A nil command with a nil error means the
// statement wrote nothing.
func (d *DB) Execute(client, seq uint64, sql string, params []Value) ([]byte, Result, error) {
	defer d.end(d.begin(WorkExecute))
	if d.pending {
		return nil, Result{}, fmt.Errorf("fsm: a write is already pending")
	}
	if d.txDB != nil {
		return nil, Result{}, errTxHoldsConn
	}
	x := d.dbs[d.def]
	if err := d.checkpointBeforeWrite(x); err != nil {
		return nil, Result{}, err
	}
	if d.mode == ModeStatements {
		cmd, err := EncodeStatements(&Statements{Client: client, Seq: seq, Database: x.name,
			Statements: []Statement{{SQL: sql, Params: params}}})
		return cmd, Result{}, err
	}
	res, err := x.run(sql, params, false)
	if err != nil {
		d.dropCapture(x)
		return nil, Result{}, err
	}
	cmd, err := d.capture(x, client, seq)
	if err != nil {
		return nil, Result{}, err
	}
	if cmd != nil {
		d.pendingResult = res
	}
	return cmd, res, nil
}

// capture encodes the frames the VFS captured for x's last transaction as
// the command to propose, and records them as pending (nil: it wrote
// nothing). On error the capture is dropped.
func (d *DB) capture(x *database, client, seq uint64) ([]byte, error) {
	if !d.vfs.Pending(x.name) {
		return nil, nil
	}
	f, err := d.vfs.PollView(x.name) // encoded before the capture changes
	var cmd []byte
	if err == nil {
		cmd, err = EncodeFrames(&Frames{Client: client, Seq: seq, Database: x.name, PageSize: uint32(f.PageSize),
			DBSize: f.DBSize, PageNumbers: f.PageNumbers, Pages: f.Pages})
	}
	if err != nil {
		_ = d.vfs.Abort(x.name)
		return nil, err
	}
	d.pending, d.pendingDB = true, x
	return cmd, nil
}

// dropCapture drops frames the VFS captured for x that no entry carries.
func (d *DB) dropCapture(x *database) {
	if !(d.pending && d.pendingDB == x) && d.vfs.Pending(x.name) {
		_ = d.vfs.Abort(x.name)
	}
}

// Proposed records the log position of the pending write's entry.
func (d *DB) Proposed(index, term uint64) { d.pendingIndex, d.pendingTm = index, term }

// Abort drops the pending write (leadership lost, or the proposal failed)
// and rolls back an open transaction spanning requests.
func (d *DB) Abort() {
	if d.pending {
		_ = d.vfs.Abort(d.pendingDB.name)
		d.pending, d.pendingDB = false, nil
	}
	d.RollbackTx()
}

// Pending reports whether this node holds a captured write.
func (d *DB) Pending() bool { return d.pending }

// run executes every statement of sql, consuming params in order. When
// atomic, the caller already holds a transaction (a batch's savepoint or an
// applied entry's BEGIN): the request is one atomic unit, so BEGIN and
// COMMIT/END statements in its text are accepted and skipped, but they
// must pair up within the text (a transaction cannot span requests), and
// ROLLBACK is refused (fail the request instead).
func (x *database) run(sql string, params []Value, atomic bool) (Result, error) {
	return x.runStmts(sql, params, atomic, false)
}

// runStmts is run; with endsTx, a statement after one that ended the
// transaction (COMMIT, ROLLBACK) is refused: it would run on the shared
// connection outside any transaction.
func (x *database) runStmts(sql string, params []Value, atomic, endsTx bool) (Result, error) {
	c := x.conn
	rest := sql
	next := 0
	inTxn := false
	ran := 0
	// The connection is shared by every client: the result must be this
	// request's own (last insert id 0 unless it inserted; rows affected by
	// its last statement, 0 when that statement changed nothing).
	c.SetLastInsertRowID(0)
	var changes int64
	for {
		s, tail, err := c.Prepare(rest)
		if err != nil {
			return Result{}, err
		}
		if s == nil {
			break
		}
		if endsTx && ran > 0 && c.Autocommit() {
			s.Finalize()
			return Result{}, ErrStatementAfterTxEnd
		}
		ran++
		if atomic {
			switch txnControl(rest) {
			case "BEGIN":
				if inTxn {
					s.Finalize()
					return Result{}, fmt.Errorf("fsm: nested BEGIN")
				}
				inTxn = true
				s.Finalize()
				rest = tail
				continue
			case "COMMIT", "END":
				if !inTxn {
					s.Finalize()
					return Result{}, ErrNoTransaction
				}
				inTxn = false
				s.Finalize()
				rest = tail
				continue
			case "ROLLBACK":
				if !strings.Contains(strings.ToUpper(rest[:len(rest)-len(tail)]), " TO ") {
					s.Finalize()
					return Result{}, fmt.Errorf("fsm: ROLLBACK inside a request is not supported (a request is atomic: let it fail instead)")
				}
			}
		}
		for i := 1; i <= s.ParamCount() && next < len(params); i++ {
			if err := s.Bind(i, params[next].goValue()); err != nil {
				s.Finalize()
				return Result{}, err
			}
			next++
		}
		total := c.TotalChanges()
		for {
			more, err := s.Step()
			if err != nil {
				s.Finalize()
				return Result{}, err
			}
			if !more {
				break
			}
		}
		changes = 0
		if c.TotalChanges() != total {
			changes = c.Changes()
		}
		s.Finalize()
		rest = tail
	}
	if inTxn {
		return Result{}, ErrOpenTransaction
	}
	return Result{LastInsertID: c.LastInsertRowID(), RowsAffected: changes}, nil
}

// Errors of transaction statements in a request.
var (
	ErrOpenTransaction = fmt.Errorf("fsm: BEGIN without COMMIT in the same request: " +
		"send BEGIN alone to open a transaction spanning requests, or BEGIN ... COMMIT as one request")
	ErrNoTransaction = fmt.Errorf("fsm: COMMIT without BEGIN in the same request " +
		"(a transaction spanning requests starts with a request holding BEGIN alone)")
)

// txStatement reports whether sql starts with a transaction statement
// (BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE).
func txStatement(sql string) bool {
	if txnControl(sql) != "" {
		return true
	}
	t := strings.TrimLeft(sql, " \t\r\n;")
	for _, kw := range []string{"SAVEPOINT", "RELEASE"} {
		if len(t) >= len(kw) && strings.EqualFold(t[:len(kw)], kw) && (len(t) == len(kw) || !isIdent(t[len(kw)])) {
			return true
		}
	}
	return false
}

// txnControl returns BEGIN, COMMIT, END or ROLLBACK when sql starts with
// that keyword (after whitespace), else "".
func txnControl(sql string) string {
	t := strings.TrimLeft(sql, " \t\r\n;")
	for _, kw := range []string{"BEGIN", "COMMIT", "END", "ROLLBACK"} {
		if len(t) >= len(kw) && strings.EqualFold(t[:len(kw)], kw) &&
			(len(t) == len(kw) || !isIdent(t[len(kw)])) {
			return kw
		}
	}
	return ""
}

func isIdent(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func (v Value) goValue() any {
	switch v.Type {
	case TypeInteger:
		return v.Int
	case TypeFloat:
		return v.Float
	case TypeText:
		return v.Text
	case TypeBlob:
		return v.Blob
	}
	return nil
}
