package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
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
}

// ErrSnapshotBusy is returned by Snapshot while a write is pending; the
// caller tries again later.
var ErrSnapshotBusy error = snapshotBusy{}

type snapshotBusy struct{}

func (snapshotBusy) Error() string { return "fsm: a write is pending, snapshot later" }

// SnapshotLater tells the loop to try again later (see loop.StateMachine).
func (snapshotBusy) SnapshotLater() bool { return true }

// DB is one node's replicated SQLite database. It implements the loop's
// StateMachine. Not safe for concurrent use (the node's loop owns it).
type DB struct {
	vfs      *vfs.VFS
	name     string
	pageSize int
	mode     Mode
	conn     *vfs.Conn
	// rconn serves queries that step across several loop events, isolated
	// from the writes conn makes meanwhile; cursors are its open statements.
	rconn   *vfs.Conn
	cursors map[*vfs.Stmt]struct{}
	// txOpen: a client's transaction spanning requests is open on conn
	// (see ExecuteTx); txCursors are its queries, reading on conn.
	txOpen    bool
	txCursors map[*vfs.Stmt]struct{}
	// The transaction this node captured and proposed, waiting for its
	// entry to be applied.
	pending                 bool
	pendingIndex, pendingTm uint64
	pendingResult           Result
	dedupWrites             uint64
}

// Open opens (creating) database name on v.
func Open(v *vfs.VFS, name string, pageSize int, mode Mode) (*DB, error) {
	if !validPageSize(uint32(pageSize)) {
		return nil, fmt.Errorf("fsm: invalid page size %d", pageSize)
	}
	c, err := v.Open(name, pageSize)
	if err != nil {
		return nil, err
	}
	r, err := v.Open(name, pageSize)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &DB{vfs: v, name: name, pageSize: pageSize, mode: mode, conn: c, rconn: r,
		cursors: map[*vfs.Stmt]struct{}{}, txCursors: map[*vfs.Stmt]struct{}{}}, nil
}

// OpenCursor prepares a read-only query on the read connection. The caller
// steps it (possibly across many loop events: it reads one consistent
// snapshot) and closes it with CloseCursor.
func (d *DB) OpenCursor(sql string, args ...any) (*vfs.Stmt, error) {
	return d.openCursor(d.rconn, d.cursors, sql, args)
}

// OpenTxCursor prepares a read-only query inside the open transaction (on
// the write connection: it sees the transaction's own writes). It is closed
// with CloseCursor, or when the transaction ends.
func (d *DB) OpenTxCursor(sql string, args ...any) (*vfs.Stmt, error) {
	if !d.txOpen {
		return nil, ErrNoOpenTx
	}
	return d.openCursor(d.conn, d.txCursors, sql, args)
}

func (d *DB) openCursor(c *vfs.Conn, set map[*vfs.Stmt]struct{}, sql string, args []any) (*vfs.Stmt, error) {
	s, tail, err := c.Prepare(sql)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, ErrEmptyStatement
	}
	if !s.Readonly() {
		s.Finalize()
		return nil, fmt.Errorf("fsm: a query must not write (use Exec)")
	}
	if strings.TrimSpace(tail) != "" {
		s.Finalize()
		return nil, fmt.Errorf("%w: %q", ErrNonemptyTail, tail)
	}
	if len(args) > s.ParamCount() {
		s.Finalize()
		return nil, fmt.Errorf("%w: %d given, the statement has %d", ErrBindParameters, len(args), s.ParamCount())
	}
	for i, a := range args {
		if err := s.Bind(i+1, a); err != nil {
			s.Finalize()
			return nil, err
		}
	}
	set[s] = struct{}{}
	return s, nil
}

// Errors of queries.
var (
	ErrEmptyStatement = errors.New("fsm: empty statement")
	ErrNonemptyTail   = errors.New("fsm: nonempty statement tail")
	ErrBindParameters = errors.New("fsm: bind parameters")
)

// PrepareCheck compiles the first statement of sql and returns its bind
// parameter count and the byte offset of the unparsed tail; inTx compiles it
// inside the open transaction (seeing its schema changes).
func (d *DB) PrepareCheck(sql string, inTx bool) (params, tail int, err error) {
	c := d.rconn
	if inTx && d.txOpen {
		c = d.conn // the transaction's own schema changes are visible
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
	delete(d.cursors, s)
	delete(d.txCursors, s)
	s.Finalize()
}

// closeCursors finalizes every open cursor (their next step fails).
func (d *DB) closeCursors() {
	for s := range d.cursors {
		s.Finalize()
	}
	clear(d.cursors)
}

// Close closes the node's connection.
func (d *DB) Close() error {
	d.closeCursors()
	d.closeTxCursors()
	d.rconn.Close()
	return d.conn.Close()
}

// Conn is the node's connection, for reads.
func (d *DB) Conn() *vfs.Conn { return d.conn }

// Mode is the replication mode.
func (d *DB) Mode() Mode { return d.mode }

// Execute runs a write on the leader and returns the command to propose.
// In frames mode the statement runs now and its frames are captured
// (invisible until Applied); in statement mode nothing runs until apply.
// A nil command with a nil error means the statement wrote nothing.
func (d *DB) Execute(client, seq uint64, sql string, params []Value) ([]byte, Result, error) {
	if d.pending {
		return nil, Result{}, fmt.Errorf("fsm: a write is already pending")
	}
	if d.txOpen {
		return nil, Result{}, errTxHoldsConn
	}
	if d.mode == ModeStatements {
		cmd, err := EncodeStatements(&Statements{Client: client, Seq: seq, Database: d.name,
			Statements: []Statement{{SQL: sql, Params: params}}})
		return cmd, Result{}, err
	}
	res, err := d.run(sql, params, false)
	if err != nil {
		if d.vfs.Pending(d.name) {
			_ = d.vfs.Abort(d.name)
		}
		return nil, Result{}, err
	}
	if !d.vfs.Pending(d.name) {
		return nil, res, nil
	}
	f, err := d.vfs.Poll(d.name)
	if err != nil {
		_ = d.vfs.Abort(d.name)
		return nil, Result{}, err
	}
	cmd, err := EncodeFrames(&Frames{Client: client, Seq: seq, Database: d.name, PageSize: uint32(f.PageSize),
		DBSize: f.DBSize, PageNumbers: f.PageNumbers, Pages: f.Pages})
	if err != nil {
		_ = d.vfs.Abort(d.name)
		return nil, Result{}, err
	}
	d.pending, d.pendingResult = true, res
	return cmd, res, nil
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
)

// ExecuteTx runs a request of a transaction that spans requests: every
// statement of sql runs as written on the write connection (BEGIN, COMMIT,
// ROLLBACK and savepoints included), as SQLite would run it for one
// connection. open reports whether a transaction is open afterwards (the
// caller keeps the writer slot for it); when the request ended a
// transaction that wrote, cmd is the command to propose, captured as in
// Execute. A ROLLBACK with no transaction open succeeds (the transaction
// was already rolled back, e.g. by a leadership change).
func (d *DB) ExecuteTx(sql string, params []Value) (cmd []byte, res Result, open bool, err error) {
	if d.pending {
		return nil, Result{}, d.txOpen, fmt.Errorf("fsm: a write is already pending")
	}
	if d.mode == ModeStatements {
		return nil, Result{}, false, ErrTxStatementMode
	}
	if !d.txOpen && isLoneRollback(sql) {
		return nil, Result{}, false, nil
	}
	res, err = d.runStmts(sql, params, false, true)
	d.txOpen = !d.conn.Autocommit()
	if d.txOpen {
		return nil, res, true, err
	}
	d.closeTxCursors()
	if err != nil {
		d.dropCaptured()
		return nil, Result{}, false, err
	}
	if !d.vfs.Pending(d.name) {
		return nil, res, false, nil
	}
	f, err := d.vfs.Poll(d.name)
	if err == nil {
		cmd, err = EncodeFrames(&Frames{Database: d.name, PageSize: uint32(f.PageSize),
			DBSize: f.DBSize, PageNumbers: f.PageNumbers, Pages: f.Pages})
	}
	if err != nil {
		_ = d.vfs.Abort(d.name)
		return nil, Result{}, false, err
	}
	d.pending, d.pendingResult = true, res
	return cmd, res, false, nil
}

// isLoneRollback reports whether sql is one ROLLBACK [TRANSACTION]
// statement (not ROLLBACK TO a savepoint).
func isLoneRollback(sql string) bool { return sqltext.LoneTxControl(sql) == "ROLLBACK" }

// TxOpen reports whether a transaction spanning requests is open.
func (d *DB) TxOpen() bool { return d.txOpen }

// RollbackTx ends the open transaction spanning requests, leaving no trace.
func (d *DB) RollbackTx() {
	if !d.txOpen {
		return
	}
	d.closeTxCursors()
	if !d.conn.Autocommit() {
		_ = d.conn.Exec("ROLLBACK")
	}
	d.dropCaptured()
	d.txOpen = false
}

func (d *DB) closeTxCursors() {
	for s := range d.txCursors {
		s.Finalize()
	}
	clear(d.txCursors)
}

// dropCaptured drops frames the VFS captured that no entry carries.
func (d *DB) dropCaptured() {
	if !d.pending && d.vfs.Pending(d.name) {
		_ = d.vfs.Abort(d.name)
	}
}

// Proposed records the log position of the pending write's entry.
func (d *DB) Proposed(index, term uint64) { d.pendingIndex, d.pendingTm = index, term }

// Abort drops the pending write (leadership lost, or the proposal failed)
// and rolls back an open transaction spanning requests.
func (d *DB) Abort() {
	if d.pending {
		_ = d.vfs.Abort(d.name)
		d.pending = false
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
func (d *DB) run(sql string, params []Value, atomic bool) (Result, error) {
	return d.runStmts(sql, params, atomic, false)
}

// runStmts is run; with endsTx, a statement after one that ended the
// transaction (COMMIT, ROLLBACK) is refused: it would run on the shared
// connection outside any transaction.
func (d *DB) runStmts(sql string, params []Value, atomic, endsTx bool) (Result, error) {
	rest := sql
	next := 0
	inTxn := false
	ran := 0
	// The connection is shared by every client: the result must be this
	// request's own (last insert id 0 unless it inserted; rows affected by
	// its last statement, 0 when that statement changed nothing).
	d.conn.SetLastInsertRowID(0)
	var changes int64
	for {
		s, tail, err := d.conn.Prepare(rest)
		if err != nil {
			return Result{}, err
		}
		if s == nil {
			break
		}
		if endsTx && ran > 0 && d.conn.Autocommit() {
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
		total := d.conn.TotalChanges()
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
		if d.conn.TotalChanges() != total {
			changes = d.conn.Changes()
		}
		s.Finalize()
		rest = tail
	}
	if inTxn {
		return Result{}, ErrOpenTransaction
	}
	return Result{LastInsertID: d.conn.LastInsertRowID(), RowsAffected: changes}, nil
}

// Errors of transaction statements in a request.
var (
	ErrOpenTransaction = fmt.Errorf("fsm: BEGIN without COMMIT in the same request: " +
		"send BEGIN alone to open a transaction spanning requests, or BEGIN ... COMMIT as one request")
	ErrNoTransaction = fmt.Errorf("fsm: COMMIT without BEGIN in the same request " +
		"(a transaction spanning requests starts with a request holding BEGIN alone)")
)

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
// pending transaction becomes visible; elsewhere the frames are appended.
func (d *DB) Apply(e raft.Entry) (any, error) {
	kind, err := KindOf(e.Data)
	if err != nil {
		return nil, fmt.Errorf("fsm: entry %d: %w", e.Index, err)
	}
	var res any
	switch kind {
	case KindFrames:
		res, err = d.applyFrames(e)
	default:
		res, err = d.applyStatements(e)
	}
	if err == nil {
		d.maybeCheckpoint()
	}
	return res, err
}

// checkpointFrames is the WAL length (in frames) past which a node
// checkpoints on its own, as SQLite's default auto-checkpoint does: the
// WAL's memory stays small and is reused (growing it costs a page fault per
// page written), and readers search a short WAL.
const checkpointFrames = 1000

// maybeCheckpoint checkpoints (TRUNCATE: the WAL restarts empty) when the
// WAL is long and nothing holds it: no captured write, no open cursor (whose
// read snapshot would stop the checkpoint part way). A failure is left for
// the next try; Snapshot reports checkpoint errors.
func (d *DB) maybeCheckpoint() {
	if d.pending || d.txOpen || len(d.cursors) > 0 || d.vfs.WALSize(d.name) < int64(checkpointFrames)*int64(d.pageSize+24) {
		return
	}
	_ = d.conn.Checkpoint()
}

func (d *DB) applyFrames(e raft.Entry) (any, error) {
	if d.pending && e.Index == d.pendingIndex && e.Term == d.pendingTm {
		d.pending = false
		if err := d.vfs.Apply(d.name); err != nil {
			return nil, fmt.Errorf("fsm: applying entry %d: %w", e.Index, err)
		}
		return d.pendingResult, nil
	}
	// Someone else's transaction: ours (if any) can no longer commit on top
	// of the state it read.
	d.Abort()
	f, err := DecodeFrames(e.Data)
	if err != nil {
		return nil, err
	}
	if err := d.vfs.ApplyFrames(f.Database, &vfs.Frames{PageSize: int(f.PageSize), DBSize: f.DBSize,
		PageNumbers: f.PageNumbers, Pages: f.Pages}); err != nil {
		return nil, fmt.Errorf("fsm: applying entry %d: %w", e.Index, err)
	}
	return nil, nil
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

func (d *DB) applyStatements(e raft.Entry) (any, error) {
	d.Abort()
	s, err := DecodeStatements(e.Data)
	if err != nil {
		return nil, err
	}
	if err := d.conn.Exec("BEGIN"); err != nil {
		return nil, err
	}
	var res Result
	for _, st := range s.Statements {
		if res, err = d.run(st.SQL, st.Params, true); err != nil {
			_ = d.conn.Exec("ROLLBACK")
			// The statement's own error is the deterministic result.
			return nil, statementError{err}
		}
	}
	if err := d.conn.Exec("COMMIT"); err != nil {
		return nil, err
	}
	if d.vfs.Pending(d.name) {
		if err := d.vfs.Apply(d.name); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// snapshotMagic starts a snapshot: magic | page size u32 | crc32c u32 | image.
const snapshotMagic = "DQSQLv01"

// WALSize is the size of the database's WAL in bytes.
func (d *DB) WALSize() int64 { return d.vfs.WALSize(d.name) }

// Snapshot returns the database image as of the last applied entry. It
// also checkpoints, to keep the WAL short, unless a query's cursor is open:
// its read snapshot would stop the checkpoint part way (the image does not
// depend on the checkpoint either way).
func (d *DB) Snapshot() ([]byte, error) {
	if d.pending || d.txOpen {
		return nil, ErrSnapshotBusy
	}
	if len(d.cursors) == 0 {
		if err := d.conn.Checkpoint(); err != nil {
			return nil, fmt.Errorf("fsm: checkpoint for snapshot: %w", err)
		}
	}
	img := d.vfs.Image(d.name)
	b := make([]byte, 0, 16+len(img))
	b = append(b, snapshotMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(d.pageSize))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(img, castagnoli))
	return append(b, img...), nil
}

// Restore replaces the database with a snapshot's image and checks it.
func (d *DB) Restore(data []byte) error {
	if len(data) < 16 || string(data[:8]) != snapshotMagic {
		return fmt.Errorf("%w: not a database snapshot", ErrCorrupt)
	}
	img := data[16:]
	if crc32.Checksum(img, castagnoli) != binary.LittleEndian.Uint32(data[12:]) {
		return fmt.Errorf("%w: snapshot image fails its checksum", ErrCorrupt)
	}
	d.Abort()
	keepOld := mutant.On(mutant.FSMRestoreKeepsOld) && d.hasSchema()
	d.closeCursors()
	if err := d.rconn.Close(); err != nil {
		return err
	}
	if err := d.conn.Close(); err != nil {
		return err
	}
	if len(img) > 0 && !keepOld {
		if err := d.vfs.Restore(d.name, img); err != nil {
			return err
		}
	}
	c, err := d.vfs.Open(d.name, d.pageSize)
	if err != nil {
		return err
	}
	d.conn = c
	if d.rconn, err = d.vfs.Open(d.name, d.pageSize); err != nil {
		return err
	}
	rows, err := c.Query("PRAGMA quick_check")
	if err != nil {
		return fmt.Errorf("fsm: checking restored database: %w", err)
	}
	if len(rows) == 0 || rows[0][0] != "ok" {
		return fmt.Errorf("%w: restored database fails quick_check: %v", ErrCorrupt, rows)
	}
	return nil
}

// hasSchema reports whether the database holds any table. It serves the
// deliberate bug mutant.FSMRestoreKeepsOld: Restore taking a database that
// has one for already restored, and keeping it.
func (d *DB) hasSchema() bool {
	rows, err := d.conn.Query("SELECT count(*) FROM sqlite_master")
	if err != nil || len(rows) == 0 {
		return false
	}
	n, _ := rows[0][0].(int64)
	return n > 0
}

// BatchItem is one autocommit write for ExecuteBatch.
type BatchItem struct {
	SQL    string
	Params []Value
	// Client and Seq, when Client is not 0, make the write idempotent: the
	// database records the last sequence number applied per client (in
	// the dqlite_dedup table, in the same transaction), and a write whose
	// sequence number is already recorded returns the recorded result
	// without running again.
	Client, Seq uint64
}

// Deduplication table and its limits.
const (
	dedupTable = "dqlite_dedup"
	// DedupRetentionSeconds is how long a client's last sequence number is
	// kept after its last write.
	DedupRetentionSeconds = 24 * 3600
	// dedupPruneEvery is how many deduplicated writes pass between prunes.
	dedupPruneEvery = 1024
)

// ErrStaleSequence is returned for a write older than its client's last
// recorded one (a client bug: sequence numbers must increase).
var ErrStaleSequence = fmt.Errorf("fsm: sequence number older than the client's last write")

func (d *DB) dedupPrepare() error {
	err := d.conn.Exec("CREATE TABLE IF NOT EXISTS " + dedupTable +
		"(client INTEGER PRIMARY KEY, seq INTEGER NOT NULL, last_insert_id INTEGER NOT NULL," +
		" rows_affected INTEGER NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID")
	if err != nil {
		return err
	}
	d.dedupWrites++
	if d.dedupWrites%dedupPruneEvery == 0 {
		return d.conn.Exec(fmt.Sprintf("DELETE FROM %s WHERE at < unixepoch() - %d", dedupTable, DedupRetentionSeconds))
	}
	return nil
}

// dedupLookup returns the recorded result of (client, seq), if any.
func (d *DB) dedupLookup(client, seq uint64) (Result, bool, error) {
	rows, err := d.conn.Query("SELECT seq, last_insert_id, rows_affected FROM "+dedupTable+" WHERE client = ?", int64(client))
	if err != nil || len(rows) == 0 {
		return Result{}, false, err
	}
	last, _ := rows[0][0].(int64)
	switch {
	case uint64(last) == seq:
		id, _ := rows[0][1].(int64)
		n, _ := rows[0][2].(int64)
		return Result{LastInsertID: id, RowsAffected: n}, true, nil
	case uint64(last) > seq:
		return Result{}, false, ErrStaleSequence
	}
	return Result{}, false, nil
}

func (d *DB) dedupRecord(client, seq uint64, r Result) error {
	_, err := d.conn.Query("INSERT OR REPLACE INTO "+dedupTable+" VALUES (?, ?, ?, ?, unixepoch())",
		int64(client), int64(seq), r.LastInsertID, r.RowsAffected)
	return err
}

// ExecuteBatch runs several autocommit writes on the leader as one
// transaction with a savepoint each (a failing write is rolled back alone
// and gets its error), and returns the command to propose for all of them.
// In statement mode the statements are proposed together. Items are
// *BatchItem.
func (d *DB) ExecuteBatch(items []any) ([]byte, []any, []error) {
	results := make([]any, len(items))
	errs := make([]error, len(items))
	if d.pending || d.txOpen {
		for i := range errs {
			errs[i] = fmt.Errorf("fsm: a write is already pending")
			if d.txOpen {
				errs[i] = errTxHoldsConn
			}
		}
		return nil, results, errs
	}
	if d.mode == ModeStatements {
		st := &Statements{Database: d.name}
		for _, it := range items {
			b := it.(*BatchItem)
			st.Statements = append(st.Statements, Statement{SQL: b.SQL, Params: b.Params})
		}
		cmd, err := EncodeStatements(st)
		if err != nil {
			for i := range errs {
				errs[i] = err
			}
		}
		return cmd, results, errs
	}
	if err := d.conn.Exec("BEGIN"); err != nil {
		for i := range errs {
			errs[i] = err
		}
		return nil, results, errs
	}
	dedupReady := false
	for i, it := range items {
		b := it.(*BatchItem)
		if b.Client != 0 && !dedupReady {
			if err := d.dedupPrepare(); err != nil {
				errs[i] = err
				continue
			}
			dedupReady = true
		}
		// One item needs no savepoint: on error the whole transaction
		// rolls back (two statements fewer on the sequential write path).
		single := len(items) == 1
		if !single {
			if err := d.conn.Exec("SAVEPOINT w"); err != nil {
				errs[i] = err
				continue
			}
		}
		var res Result
		var err error
		done := false
		if b.Client != 0 {
			res, done, err = d.dedupLookup(b.Client, b.Seq)
			if done && mutant.On(mutant.FSMDedupIgnored) {
				done = false // the deliberate bug: the retry runs again
			}
		}
		if err == nil && !done {
			res, err = d.run(b.SQL, b.Params, true)
			if err == nil && b.Client != 0 {
				err = d.dedupRecord(b.Client, b.Seq, res)
			}
		}
		if single {
			if err != nil {
				errs[i] = err
				_ = d.conn.Exec("ROLLBACK")
				if d.vfs.Pending(d.name) {
					_ = d.vfs.Abort(d.name)
				}
				return nil, results, errs
			}
			results[i] = res
			continue
		}
		if err != nil {
			errs[i] = err
			_ = d.conn.Exec("ROLLBACK TO w")
		} else {
			results[i] = res
		}
		_ = d.conn.Exec("RELEASE w")
	}
	if err := d.conn.Exec("COMMIT"); err != nil {
		_ = d.conn.Exec("ROLLBACK")
		if d.vfs.Pending(d.name) {
			_ = d.vfs.Abort(d.name)
		}
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return nil, results, errs
	}
	if !d.vfs.Pending(d.name) {
		return nil, results, errs
	}
	f, err := d.vfs.Poll(d.name)
	var cmd []byte
	if err == nil {
		cmd, err = EncodeFrames(&Frames{Database: d.name, PageSize: uint32(f.PageSize), DBSize: f.DBSize,
			PageNumbers: f.PageNumbers, Pages: f.Pages})
	}
	if err != nil {
		_ = d.vfs.Abort(d.name)
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return nil, results, errs
	}
	d.pending = true
	return cmd, results, errs
}
