package fsm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/dqlite-go/dqlite/vfs"
)

// Queries: cursors on the databases' read connections (or on the write
// connection inside a transaction spanning requests), and checking a
// statement without running it.

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
	var s *vfs.Stmt
	if s = r.takeStmt(sql); s != nil {
		// Compiled and checked by an earlier query of the same SQL.
		if err := bindArgs(s, args); err != nil {
			s.Finalize()
			return nil, err
		}
	} else if s, err = openCursor(r.conn, sql, args); err != nil {
		return nil, err
	} else {
		d.queryCompiles++
	}
	d.cursors[s] = openQuery{x, r, sql}
	r.busy = true
	x.cursors++
	return s, nil
}

// bindArgs binds args to s's parameters. Parameters past the statement's
// own are ignored, as the C server does (it binds as many as both have).
func bindArgs(s *vfs.Stmt, args []any) error {
	for i, a := range args[:min(len(args), s.ParamCount())] {
		if err := s.Bind(i+1, a); err != nil {
			return err
		}
	}
	return nil
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
	if err := bindArgs(s, args); err != nil {
		s.Finalize()
		return nil, err
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
	x   *database
	r   *reader
	sql string
}

// QueryCompiles counts the statements OpenCursor compiled (the others
// came kept from an earlier query of the same SQL on the connection).
func (d *DB) QueryCompiles() uint64 { return d.queryCompiles }

// OpenCursors is the number of open cursors (queries not yet closed).
func (d *DB) OpenCursors() int { return len(d.cursors) + len(d.txCursors) }

// CloseCursor closes a cursor: s is finalized, or, for a query on a read
// connection, its statement is kept for the connection's next query of the
// same SQL (under a new handle: s can step nothing any more).
func (d *DB) CloseCursor(s *vfs.Stmt) {
	if q, ok := d.cursors[s]; ok {
		q.x.cursors--
		q.r.busy = false
		delete(d.cursors, s)
		if kept := s.Recycle(); kept != nil {
			q.r.keepStmt(q.sql, kept)
		}
		return
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
