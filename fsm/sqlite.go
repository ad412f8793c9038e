package fsm

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"

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
	// The transaction this node captured and proposed, waiting for its
	// entry to be applied.
	pending                 bool
	pendingIndex, pendingTm uint64
	pendingResult           Result
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
		cursors: map[*vfs.Stmt]struct{}{}}, nil
}

// OpenCursor prepares a read-only query on the read connection. The caller
// steps it (possibly across many loop events: it reads one consistent
// snapshot) and closes it with CloseCursor.
func (d *DB) OpenCursor(sql string, args ...any) (*vfs.Stmt, error) {
	s, tail, err := d.rconn.Prepare(sql)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, fmt.Errorf("fsm: empty query")
	}
	if !s.Readonly() {
		s.Finalize()
		return nil, fmt.Errorf("fsm: a query must not write (use Exec)")
	}
	if strings.TrimSpace(tail) != "" {
		s.Finalize()
		return nil, fmt.Errorf("fsm: nonempty statement tail %q", tail)
	}
	for i, a := range args {
		if err := s.Bind(i+1, a); err != nil {
			s.Finalize()
			return nil, err
		}
	}
	d.cursors[s] = struct{}{}
	return s, nil
}

// CloseCursor finalizes a cursor.
func (d *DB) CloseCursor(s *vfs.Stmt) {
	delete(d.cursors, s)
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
	if d.mode == ModeStatements {
		cmd, err := EncodeStatements(&Statements{Client: client, Seq: seq, Database: d.name,
			Statements: []Statement{{SQL: sql, Params: params}}})
		return cmd, Result{}, err
	}
	res, err := d.run(sql, params)
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

// Proposed records the log position of the pending write's entry.
func (d *DB) Proposed(index, term uint64) { d.pendingIndex, d.pendingTm = index, term }

// Abort drops the pending write (leadership lost, or the proposal failed).
func (d *DB) Abort() {
	if d.pending {
		_ = d.vfs.Abort(d.name)
		d.pending = false
	}
}

// Pending reports whether this node holds a captured write.
func (d *DB) Pending() bool { return d.pending }

func (d *DB) run(sql string, params []Value) (Result, error) {
	rest := sql
	next := 0
	for {
		s, tail, err := d.conn.Prepare(rest)
		if err != nil {
			return Result{}, err
		}
		if s == nil {
			break
		}
		for i := 1; i <= s.ParamCount() && next < len(params); i++ {
			if err := s.Bind(i, params[next].goValue()); err != nil {
				s.Finalize()
				return Result{}, err
			}
			next++
		}
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
		s.Finalize()
		rest = tail
	}
	return Result{LastInsertID: d.conn.LastInsertRowID(), RowsAffected: d.conn.Changes()}, nil
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
	switch kind {
	case KindFrames:
		return d.applyFrames(e)
	default:
		return d.applyStatements(e)
	}
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
		if res, err = d.run(st.SQL, st.Params); err != nil {
			_ = d.conn.Exec("ROLLBACK")
			// The statement's own error is the deterministic result.
			return nil, err
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

// Snapshot checkpoints and returns the database image.
func (d *DB) Snapshot() ([]byte, error) {
	if d.pending {
		return nil, ErrSnapshotBusy
	}
	if err := d.conn.Checkpoint(); err != nil {
		return nil, fmt.Errorf("fsm: checkpoint for snapshot: %w", err)
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
	d.closeCursors()
	if err := d.rconn.Close(); err != nil {
		return err
	}
	if err := d.conn.Close(); err != nil {
		return err
	}
	if len(img) > 0 {
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

// BatchItem is one autocommit write for ExecuteBatch.
type BatchItem struct {
	SQL    string
	Params []Value
}

// ExecuteBatch runs several autocommit writes on the leader as one
// transaction with a savepoint each (a failing write is rolled back alone
// and gets its error), and returns the command to propose for all of them.
// In statement mode the statements are proposed together. Items are
// *BatchItem.
func (d *DB) ExecuteBatch(items []any) ([]byte, []any, []error) {
	results := make([]any, len(items))
	errs := make([]error, len(items))
	if d.pending {
		for i := range errs {
			errs[i] = fmt.Errorf("fsm: a write is already pending")
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
	for i, it := range items {
		b := it.(*BatchItem)
		if err := d.conn.Exec("SAVEPOINT w"); err != nil {
			errs[i] = err
			continue
		}
		res, err := d.run(b.SQL, b.Params)
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
