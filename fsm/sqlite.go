package fsm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/dqlite-go/dqlite/internal/sqltext"
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
}

// Open opens the set of databases on v, with def as its default database
// (opened, created if need be); databases it creates have pageSize.
func Open(v *vfs.VFS, def string, pageSize int, mode Mode) (*DB, error) {
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

// OpenCursor prepares a read-only query on database db's read connection
// (creating the database, empty, if it does not exist). The caller steps
// it (possibly across many loop events: it reads one consistent snapshot)
// and closes it with CloseCursor.
func (d *DB) OpenCursor(db, sql string, args ...any) (*vfs.Stmt, error) {
	x, err := d.database(db, true)
	if err != nil {
		return nil, err
	}
	r, err := d.freeReader(x)
	if err != nil {
		return nil, err
	}
	s, err := openCursor(r.conn, sql, args)
	if err != nil {
		return nil, err
	}
	d.cursors[s] = openQuery{x, r}
	r.busy = true
	x.cursors++
	return s, nil
}

// OpenTxCursor prepares a read-only query inside the open transaction (on
// the write connection: it sees the transaction's own writes). It is closed
// with CloseCursor, or when the transaction ends.
func (d *DB) OpenTxCursor(sql string, args ...any) (*vfs.Stmt, error) {
	if d.txDB == nil {
		return nil, ErrNoOpenTx
	}
	s, err := openCursor(d.txDB.conn, sql, args)
	if err != nil {
		return nil, err
	}
	d.txCursors[s] = struct{}{}
	return s, nil
}

// ErrWrites is returned for a query that writes: it must run as a write.
var ErrWrites = errors.New("fsm: a query must not write (use Exec)")

func openCursor(c *vfs.Conn, sql string, args []any) (*vfs.Stmt, error) {
	s, tail, err := c.Prepare(sql)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, ErrEmptyStatement
	}
	// SQLite calls transaction statements read-only; on the read
	// connection a BEGIN would freeze every later read at its snapshot.
	if !s.Readonly() || txStatement(sql) {
		s.Finalize()
		return nil, ErrWrites
	}
	if strings.TrimSpace(tail) != "" {
		s.Finalize()
		return nil, fmt.Errorf("%w: %q", ErrNonemptyTail, tail)
	}
	// Parameters past the statement's own are ignored, as the C server
	// does (it binds as many as both have).
	for i, a := range args[:min(len(args), s.ParamCount())] {
		if err := s.Bind(i+1, a); err != nil {
			s.Finalize()
			return nil, err
		}
	}
	return s, nil
}

// Errors of queries.
var (
	ErrEmptyStatement = errors.New("fsm: empty statement")
	ErrNonemptyTail   = errors.New("fsm: nonempty statement tail")
)

// PrepareCheck compiles the first statement of sql on database db and
// returns its bind parameter count and the byte offset of the unparsed
// tail; inTx compiles it inside the open transaction (seeing its schema
// changes).
func (d *DB) PrepareCheck(db, sql string, inTx bool) (params, tail int, err error) {
	var c *vfs.Conn
	if inTx && d.txDB != nil {
		c = d.txDB.conn // the transaction's own schema changes are visible
	} else {
		x, err := d.database(db, true)
		if err != nil {
			return 0, 0, err
		}
		// A connection no query steps on: one that does compiles
		// against that query's (older) schema.
		r, err := d.freeReader(x)
		if err != nil {
			return 0, 0, err
		}
		c = r.conn
	}
	s, rest, err := c.Prepare(sql)
	if err != nil {
		return 0, 0, err
	}
	if s == nil {
		return 0, 0, ErrEmptyStatement
	}
	defer s.Finalize()
	return s.ParamCount(), len(sql) - len(rest), nil
}

// openQuery is an open cursor's database and read connection.
type openQuery struct {
	x *database
	r *reader
}

// OpenCursors is the number of open cursors (queries not yet closed).
func (d *DB) OpenCursors() int { return len(d.cursors) + len(d.txCursors) }

// CloseCursor finalizes a cursor.
func (d *DB) CloseCursor(s *vfs.Stmt) {
	if q, ok := d.cursors[s]; ok {
		q.x.cursors--
		q.r.busy = false
		delete(d.cursors, s)
	}
	delete(d.txCursors, s)
	s.Finalize()
}

// closeCursors finalizes every open read cursor (their next step fails).
func (d *DB) closeCursors() {
	for s, q := range d.cursors {
		q.x.cursors--
		q.r.busy = false
		s.Finalize()
	}
	clear(d.cursors)
}

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

// Errors of transactions spanning requests.
var (
	// ErrNoOpenTx: a query for a transaction that is not open.
	ErrNoOpenTx = errors.New("fsm: no transaction is open")
	// ErrTxStatementMode: statement mode replicates whole requests, so a
	// transaction cannot stay open between them.
	ErrTxStatementMode = errors.New("fsm: transactions spanning requests need frames mode " +
		"(statement mode replicates whole requests): send BEGIN ... COMMIT as one request")
	errTxHoldsConn = errors.New("fsm: a transaction spanning requests holds the write connection")
	// ErrStatementAfterTxEnd: statements after the COMMIT or ROLLBACK that
	// ended a transaction, in the same request (among them a BEGIN: the
	// commit could not be proposed while the next transaction held the
	// connection).
	ErrStatementAfterTxEnd = errors.New("fsm: a statement after the COMMIT or ROLLBACK that ended the transaction, " +
		"in the same request, is refused; nothing of the request was committed and the transaction was rolled back")
	// ErrTxOtherDatabase: a request for another database than the one the
	// open transaction spanning requests belongs to.
	ErrTxOtherDatabase = errors.New("fsm: a transaction spanning requests is open on another database")
)

// ExecuteTx runs a request of a transaction that spans requests on
// database db: every statement of sql runs as written on its write
// connection (BEGIN, COMMIT, ROLLBACK and savepoints included), as SQLite
// would run it for one connection. open reports whether a transaction is
// open afterwards (the caller keeps the writer slot for it); when the
// request ended a transaction that wrote, cmd is the command to propose,
// captured as in Execute. A ROLLBACK with no transaction open succeeds (the
// transaction was already rolled back, e.g. by a leadership change). With
// rows, sql is one statement whose rows the result carries (see
// BatchItem.Rows).
func (d *DB) ExecuteTx(db, sql string, params []Value, rows bool) (cmd []byte, res Result, open bool, err error) {
	if d.pending {
		return nil, Result{}, d.txDB != nil, fmt.Errorf("fsm: a write is already pending")
	}
	if d.mode == ModeStatements {
		return nil, Result{}, false, ErrTxStatementMode
	}
	if d.txDB == nil && isLoneRollback(sql) {
		return nil, Result{}, false, nil
	}
	x := d.txDB
	if x == nil {
		if x, err = d.database(db, true); err != nil {
			return nil, Result{}, false, err
		}
	} else if d.resolve(db) != x.name {
		return nil, Result{}, true, ErrTxOtherDatabase
	}
	if rows {
		res, err = x.runRows(sql, params)
	} else {
		res, err = x.runStmts(sql, params, false, true)
	}
	if !x.conn.Autocommit() {
		d.txDB = x
		return nil, res, true, err
	}
	d.txDB = nil
	d.closeTxCursors()
	if err != nil {
		d.dropCapture(x)
		return nil, Result{}, false, err
	}
	if cmd, err = d.capture(x, 0, 0); err != nil {
		return nil, Result{}, false, err
	}
	if cmd != nil {
		d.pendingResult = res
	}
	return cmd, res, false, nil
}

// isLoneRollback reports whether sql is one ROLLBACK [TRANSACTION]
// statement (not ROLLBACK TO a savepoint).
func isLoneRollback(sql string) bool { return sqltext.LoneTxControl(sql) == "ROLLBACK" }

// TxOpen reports whether a transaction spanning requests is open.
func (d *DB) TxOpen() bool { return d.txDB != nil }

// RollbackTx ends the open transaction spanning requests, leaving no trace.
func (d *DB) RollbackTx() {
	x := d.txDB
	if x == nil {
		return
	}
	d.closeTxCursors()
	if !x.conn.Autocommit() {
		_ = x.conn.Exec("ROLLBACK")
	}
	d.dropCapture(x)
	d.txDB = nil
}

func (d *DB) closeTxCursors() {
	for s := range d.txCursors {
		s.Finalize()
	}
	clear(d.txCursors)
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
