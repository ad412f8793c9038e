package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/internal/sqltext"
	"github.com/dqlite-go/dqlite/raft"
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

// Rows are the rows a write returned (INSERT ... RETURNING): column names
// and declared types, and values as vfs.Stmt.Column gives them.
type Rows struct {
	Columns, DeclTypes []string
	Values             [][]any
}

// MaxWriteRowsBytes bounds the rows one write returns (they are held in
// memory until the write commits); past it the write fails and changes
// nothing.
const MaxWriteRowsBytes = 16 << 20

// ErrWriteRowsTooLarge: the rows a write returns exceed MaxWriteRowsBytes.
var ErrWriteRowsTooLarge = fmt.Errorf("fsm: the rows a write returns exceed %d bytes (the write was rolled back)", MaxWriteRowsBytes)

// ErrRowsStatementMode: statement mode cannot return a write's rows.
var ErrRowsStatementMode = errors.New("fsm: statement mode cannot return the rows of a write (RETURNING): use frames mode, or Exec")

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
	vfs      *vfs.VFS
	def      string // the default database: the one of methods and items that name none
	pageSize int    // of the databases this node creates
	mode     Mode
	dbs      map[string]*database
	// cursors are the open queries on the databases' read connections,
	// which step across several loop events, isolated from the writes
	// made meanwhile.
	cursors map[*vfs.Stmt]*database
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
}

// Open opens the set of databases on v, with def as its default database
// (opened, created if need be); databases it creates have pageSize.
func Open(v *vfs.VFS, def string, pageSize int, mode Mode) (*DB, error) {
	if !validPageSize(uint32(pageSize)) {
		return nil, fmt.Errorf("fsm: invalid page size %d", pageSize)
	}
	d := &DB{vfs: v, def: def, pageSize: pageSize, mode: mode, dbs: map[string]*database{},
		cursors: map[*vfs.Stmt]*database{}, txCursors: map[*vfs.Stmt]struct{}{}}
	if _, err := d.database(def, true); err != nil {
		return nil, err
	}
	return d, nil
}

// OpenCursor prepares a read-only query on database db's read connection
// (creating the database, empty, if it does not exist). The caller steps
// it (possibly across many loop events: it reads one consistent snapshot)
// and closes it with CloseCursor.
func (d *DB) OpenCursor(db, sql string, args ...any) (*vfs.Stmt, error) {
	x, err := d.database(db, true)
	if err != nil {
		return nil, err
	}
	s, err := openCursor(x.rconn, sql, args)
	if err != nil {
		return nil, err
	}
	d.cursors[s] = x
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
		c = x.rconn
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

// OpenCursors is the number of open cursors (queries not yet closed).
func (d *DB) OpenCursors() int { return len(d.cursors) + len(d.txCursors) }

// CloseCursor finalizes a cursor.
func (d *DB) CloseCursor(s *vfs.Stmt) {
	if x := d.cursors[s]; x != nil {
		x.cursors--
		delete(d.cursors, s)
	}
	delete(d.txCursors, s)
	s.Finalize()
}

// closeCursors finalizes every open read cursor (their next step fails).
func (d *DB) closeCursors() {
	for s, x := range d.cursors {
		x.cursors--
		s.Finalize()
	}
	clear(d.cursors)
}

// Close closes every database's connections.
func (d *DB) Close() error {
	d.closeCursors()
	d.closeTxCursors()
	var first error
	for _, x := range d.dbs {
		if err := x.close(); err != nil && first == nil {
			first = err
		}
	}
	clear(d.dbs)
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
	f, err := d.vfs.Poll(x.name)
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

// runRows runs sql, one statement that may write, on the write
// connection and returns its rows with the result (see BatchItem.Rows).
func (x *database) runRows(sql string, params []Value) (Result, error) {
	c := x.conn
	s, tail, err := c.Prepare(sql)
	if err != nil {
		return Result{}, err
	}
	if s == nil {
		return Result{}, ErrEmptyStatement
	}
	defer s.Finalize()
	if strings.TrimSpace(tail) != "" {
		return Result{}, fmt.Errorf("%w: %q", ErrNonemptyTail, tail)
	}
	for i, p := range params[:min(len(params), s.ParamCount())] { // extra ones ignored, as in openCursor
		if err := s.Bind(i+1, p.goValue()); err != nil {
			return Result{}, err
		}
	}
	r := &Rows{Columns: make([]string, s.ColumnCount()), DeclTypes: make([]string, s.ColumnCount())}
	for i := range r.Columns {
		r.Columns[i], r.DeclTypes[i] = s.ColumnName(i), s.ColumnDeclType(i)
	}
	// SQLite makes a RETURNING statement's changes at its first step: one
	// refused afterwards (too many rows) is undone by a savepoint inside a
	// transaction spanning requests (a batch's own savepoint or rollback
	// undoes it otherwise).
	undo := !c.Autocommit() && !txStatement(sql)
	if undo {
		if err := c.Exec("SAVEPOINT dqlite_rows"); err != nil {
			return Result{}, err
		}
		defer func() {
			s.Reset() // no statement of this savepoint in progress
			_ = c.Exec("RELEASE dqlite_rows")
		}()
	}
	c.SetLastInsertRowID(0)
	total := c.TotalChanges()
	size := 0
	for {
		more, err := s.Step()
		if err != nil {
			return Result{}, err
		}
		if !more {
			break
		}
		row := make([]any, len(r.Columns))
		for i := range row {
			row[i] = s.Column(i)
			size += valueBytes(row[i])
		}
		if size > MaxWriteRowsBytes {
			if undo {
				s.Reset()
				_ = c.Exec("ROLLBACK TO dqlite_rows")
			}
			return Result{}, ErrWriteRowsTooLarge
		}
		r.Values = append(r.Values, row)
	}
	res := Result{LastInsertID: c.LastInsertRowID(), Rows: r}
	if c.TotalChanges() != total {
		res.RowsAffected = c.Changes()
	}
	return res, nil
}

// checkNoRows refuses, in statement mode, a write sent as a query that
// returns rows: they would come from every replica's apply, not to the
// client. One that returns none (CREATE TABLE through QUERY) replicates as
// any write.
func (x *database) checkNoRows(sql string) error {
	s, _, err := x.rconn.Prepare(sql)
	if err != nil {
		return err
	}
	if s == nil {
		return ErrEmptyStatement
	}
	defer s.Finalize()
	if s.ColumnCount() > 0 {
		return ErrRowsStatementMode
	}
	return nil
}

func valueBytes(v any) int {
	switch x := v.(type) {
	case string:
		return len(x) + 16
	case []byte:
		return len(x) + 16
	}
	return 16
}

// encodeRows and decodeRows are the format of the rows recorded for
// deduplication: a uvarint column count, each column's name and declared
// type (uvarint length and bytes), a uvarint row count, then each row's
// values in command value encoding (see appendValue).
func encodeRows(r *Rows) []byte {
	b := binary.AppendUvarint(nil, uint64(len(r.Columns)))
	for i := range r.Columns {
		b = appendString(b, r.Columns[i])
		b = appendString(b, r.DeclTypes[i])
	}
	b = binary.AppendUvarint(b, uint64(len(r.Values)))
	for _, row := range r.Values {
		for _, v := range row {
			b, _ = appendValue(b, valueOf(v))
		}
	}
	return b
}

func decodeRows(b []byte) (*Rows, error) {
	d := &decoder{b: b}
	cols := d.uv()
	if d.err == nil && cols > uint64(len(b)) {
		d.fail("%d columns in %d bytes", cols, len(b))
	}
	r := &Rows{}
	for i := uint64(0); i < cols && d.err == nil; i++ {
		r.Columns = append(r.Columns, d.str(MaxCommandBytes))
		r.DeclTypes = append(r.DeclTypes, d.str(MaxCommandBytes))
	}
	n := d.uv()
	if d.err == nil && n > uint64(len(b)) {
		d.fail("%d rows in %d bytes", n, len(b))
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		row := make([]any, cols)
		for j := range row {
			row[j] = d.value().goValue()
		}
		r.Values = append(r.Values, row)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d bytes after the recorded rows", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return r, nil
}

// valueOf is the command value of a column value.
func valueOf(v any) Value {
	switch x := v.(type) {
	case int64:
		return Value{Type: TypeInteger, Int: x}
	case float64:
		return Value{Type: TypeFloat, Float: x}
	case string:
		return Value{Type: TypeText, Text: x}
	case []byte:
		return Value{Type: TypeBlob, Blob: x}
	}
	return Value{Type: TypeNull}
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

// Apply applies a committed entry. On the node that captured it, the
// pending transaction becomes visible; elsewhere the frames are appended
// (to the database the entry names, created if this node has none of that
// name yet).
func (d *DB) Apply(e raft.Entry) (any, error) {
	kind, err := KindOf(e.Data)
	if err != nil {
		return nil, fmt.Errorf("fsm: entry %d: %w", e.Index, err)
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
		d.maybeCheckpoint(x)
	}
	return res, err
}

// checkpointFrames is the WAL length (in frames) past which a node
// checkpoints on its own, as SQLite's default auto-checkpoint does: the
// WAL's memory stays small and is reused (growing it costs a page fault per
// page written), and readers search a short WAL.
const checkpointFrames = 1000

// maybeCheckpoint checkpoints x (TRUNCATE: the WAL restarts empty) when its
// WAL is long and nothing holds it: no captured write, no open cursor
// (whose read snapshot would stop the checkpoint part way). A failure is
// left for the next try; Snapshot reports checkpoint errors.
func (d *DB) maybeCheckpoint(x *database) {
	if d.pending || d.txDB == x || x.cursors > 0 || d.vfs.WALSize(x.name) < int64(checkpointFrames)*int64(x.pageSize+24) {
		return
	}
	_ = x.conn.Checkpoint()
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
	x, err := d.applied(f.Database, int(f.PageSize))
	if err != nil {
		return nil, nil, fmt.Errorf("fsm: applying entry %d: %w", e.Index, err)
	}
	if err := d.vfs.ApplyFrames(x.name, &vfs.Frames{PageSize: int(f.PageSize), DBSize: f.DBSize,
		PageNumbers: f.PageNumbers, Pages: f.Pages}); err != nil {
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
	s, err := DecodeStatements(e.Data)
	if err != nil {
		return nil, nil, err
	}
	x, err := d.applied(s.Database, d.pageSize)
	if err != nil {
		return nil, nil, fmt.Errorf("fsm: applying entry %d: %w", e.Index, err)
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

// BatchItem is one autocommit write for ExecuteBatch.
type BatchItem struct {
	// Database is the database written ("": the default one).
	Database string
	SQL      string
	Params   []Value
	// Client and Seq, when Client is not 0, make the write idempotent: the
	// database records the last sequence number applied per client (in
	// the dqlite_dedup table, in the same transaction), and a write whose
	// sequence number is already recorded returns the recorded result
	// without running again.
	Client, Seq uint64
	// Rows: SQL is one statement sent as a query (INSERT ... RETURNING, a
	// CREATE TABLE through QUERY) whose rows the result carries, at most
	// MaxWriteRowsBytes of them; with Client set they are recorded too, so
	// a retry returns them.
	Rows bool
}

// Deduplication tables and their limits.
const (
	dedupTable = "dqlite_dedup"
	// dedupRowsTable holds the rows a deduplicated query that writes
	// returned, per client (its last such write only).
	dedupRowsTable = "dqlite_dedup_rows"
	// DedupRetentionSeconds is how long a client's last sequence number is
	// kept after its last write.
	DedupRetentionSeconds = 24 * 3600
	// dedupPruneEvery is how many deduplicated writes pass between prunes.
	dedupPruneEvery = 1024
)

// ErrStaleSequence is returned for a write older than its client's last
// recorded one (a client bug: sequence numbers must increase).
var ErrStaleSequence = fmt.Errorf("fsm: sequence number older than the client's last write")

func (d *DB) dedupPrepare(x *database, rows bool) error {
	err := x.conn.Exec("CREATE TABLE IF NOT EXISTS " + dedupTable +
		"(client INTEGER PRIMARY KEY, seq INTEGER NOT NULL, last_insert_id INTEGER NOT NULL," +
		" rows_affected INTEGER NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID")
	if err == nil && rows {
		err = x.conn.Exec("CREATE TABLE IF NOT EXISTS " + dedupRowsTable +
			"(client INTEGER PRIMARY KEY, seq INTEGER NOT NULL, rows BLOB NOT NULL, at INTEGER NOT NULL)")
	}
	if err != nil {
		return err
	}
	d.dedupWrites++
	if d.dedupWrites%dedupPruneEvery != 0 {
		return nil
	}
	if err := x.conn.Exec(fmt.Sprintf("DELETE FROM %s WHERE at < unixepoch() - %d", dedupTable, DedupRetentionSeconds)); err != nil {
		return err
	}
	// The rows table, if a write sent as a query made it: pruned on every
	// deduplicated write's turn, whatever its kind.
	found, err := x.conn.Query("SELECT 1 FROM sqlite_master WHERE name = ?", dedupRowsTable)
	if err != nil || len(found) == 0 {
		return err
	}
	return x.conn.Exec(fmt.Sprintf("DELETE FROM %s WHERE at < unixepoch() - %d", dedupRowsTable, DedupRetentionSeconds))
}

// dedupLookup returns the recorded result of (client, seq), if any; with
// rows, the rows it returned too.
func (x *database) dedupLookup(client, seq uint64, rows bool) (Result, bool, error) {
	found, err := x.conn.Query("SELECT seq, last_insert_id, rows_affected FROM "+dedupTable+" WHERE client = ?", int64(client))
	if err != nil || len(found) == 0 {
		return Result{}, false, err
	}
	last, _ := found[0][0].(int64)
	switch {
	case uint64(last) == seq:
		id, _ := found[0][1].(int64)
		n, _ := found[0][2].(int64)
		res := Result{LastInsertID: id, RowsAffected: n}
		if rows {
			r, err := x.dedupRows(client, seq)
			if err != nil {
				return Result{}, false, err
			}
			res.Rows = r
		}
		return res, true, nil
	case uint64(last) > seq:
		return Result{}, false, ErrStaleSequence
	}
	return Result{}, false, nil
}

func (x *database) dedupRecord(client, seq uint64, r Result) error {
	_, err := x.conn.Query("INSERT OR REPLACE INTO "+dedupTable+" VALUES (?, ?, ?, ?, unixepoch())",
		int64(client), int64(seq), r.LastInsertID, r.RowsAffected)
	if err == nil && r.Rows != nil {
		_, err = x.conn.Query("INSERT OR REPLACE INTO "+dedupRowsTable+" VALUES (?, ?, ?, unixepoch())",
			int64(client), int64(seq), encodeRows(r.Rows))
	}
	return err
}

// dedupRows returns the rows recorded for (client, seq): none when the
// write was recorded without rows.
func (x *database) dedupRows(client, seq uint64) (*Rows, error) {
	found, err := x.conn.Query("SELECT rows FROM "+dedupRowsTable+" WHERE client = ? AND seq = ?", int64(client), int64(seq))
	if err != nil {
		return nil, err
	}
	if len(found) == 0 {
		return &Rows{}, nil
	}
	b, _ := found[0][0].([]byte)
	return decodeRows(b)
}

// ExecuteBatch runs several autocommit writes of one database on the
// leader as one transaction with a savepoint each (a failing write is
// rolled back alone and gets its error), and returns the command to
// propose for all of them. In statement mode the statements are proposed
// together. Items are *BatchItem, all of the same database (the loop
// batches writes of one group: see loop.WriteRequest.Group); an item of
// another one fails.
func (d *DB) ExecuteBatch(items []any) ([]byte, []any, []error) {
	results := make([]any, len(items))
	errs := make([]error, len(items))
	fail := func(err error) ([]byte, []any, []error) {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return nil, results, errs
	}
	if d.pending {
		return fail(fmt.Errorf("fsm: a write is already pending"))
	}
	if d.txDB != nil {
		return fail(errTxHoldsConn)
	}
	x, err := d.database(items[0].(*BatchItem).Database, true)
	if err != nil {
		return fail(err)
	}
	for i, it := range items {
		if b := it.(*BatchItem); d.resolve(b.Database) != x.name {
			errs[i] = fmt.Errorf("fsm: a batch of writes to %q holds one to %q", x.name, b.Database)
		}
	}
	if d.mode == ModeStatements {
		st := &Statements{Database: x.name}
		for i, it := range items {
			b := it.(*BatchItem)
			if errs[i] != nil {
				continue
			}
			if b.Rows {
				if err := x.checkNoRows(b.SQL); err != nil {
					errs[i] = err
					continue
				}
			}
			st.Statements = append(st.Statements, Statement{SQL: b.SQL, Params: b.Params})
		}
		if len(st.Statements) == 0 {
			return nil, results, errs
		}
		cmd, err := EncodeStatements(st)
		if err != nil {
			return fail(err)
		}
		return cmd, results, errs
	}
	if err := x.conn.Exec("BEGIN"); err != nil {
		return fail(err)
	}
	dedupReady, rowsReady := false, false
	// One item needs no savepoint: on error the whole transaction rolls
	// back (two statements fewer on the sequential write path).
	single := len(items) == 1
	for i, it := range items {
		b := it.(*BatchItem)
		if errs[i] != nil {
			continue
		}
		if b.Client != 0 && (!dedupReady || b.Rows && !rowsReady) {
			if err := d.dedupPrepare(x, b.Rows); err != nil {
				errs[i] = err
				continue
			}
			dedupReady, rowsReady = true, rowsReady || b.Rows
		}
		if !single {
			if err := x.conn.Exec("SAVEPOINT w"); err != nil {
				errs[i] = err
				continue
			}
		}
		var res Result
		var err error
		done := false
		if b.Client != 0 {
			res, done, err = x.dedupLookup(b.Client, b.Seq, b.Rows)
			if done && mutant.On(mutant.FSMDedupIgnored) {
				done = false // the deliberate bug: the retry runs again
			}
		}
		if err == nil && !done {
			if b.Rows {
				res, err = x.runRows(b.SQL, b.Params)
			} else {
				res, err = x.run(b.SQL, b.Params, true)
			}
			if err == nil && b.Client != 0 {
				err = x.dedupRecord(b.Client, b.Seq, res)
			}
		}
		if single {
			if err != nil {
				errs[i] = err
				_ = x.conn.Exec("ROLLBACK")
				d.dropCapture(x)
				return nil, results, errs
			}
			results[i] = res
			continue
		}
		if err != nil {
			errs[i] = err
			_ = x.conn.Exec("ROLLBACK TO w")
		} else {
			results[i] = res
		}
		_ = x.conn.Exec("RELEASE w")
	}
	if err := x.conn.Exec("COMMIT"); err != nil {
		_ = x.conn.Exec("ROLLBACK")
		d.dropCapture(x)
		return fail(err)
	}
	cmd, err := d.capture(x, 0, 0)
	if err != nil {
		return fail(err)
	}
	return cmd, results, errs
}
