package vfs

/*
#include <stdlib.h>
#include "sqlite3min.h"
#include "vfs.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// Conn is a SQLite connection on a VFS, for the node's own use.
type Conn struct {
	db *C.sqlite3
	// guard refuses client SQL that would change how the node stores or
	// replicates the database; the node's own statements run trusted (see
	// dq_guard in vfs.c).
	guard *C.dq_guard_state
	// live counts the statements prepared on the connection and not yet
	// finalized (Close reports any left).
	live int
}

// Open opens (creating if needed) database name on the VFS, in WAL mode with
// the settings replication needs: synchronous off (durability comes from the
// Raft log), no automatic checkpoints, foreign keys on. pageSize applies
// when the database is created.
func (v *VFS) Open(name string, pageSize int) (*Conn, error) {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var db *C.sqlite3
	flags := C.SQLITE_OPEN_READWRITE | C.SQLITE_OPEN_CREATE | C.SQLITE_OPEN_EXRESCODE | C.SQLITE_OPEN_NOMUTEX
	if rc := C.sqlite3_open_v2(cname, &db, C.int(flags), v.name); rc != C.SQLITE_OK {
		err := connError(db, rc)
		if db != nil {
			C.sqlite3_close_v2(db)
		}
		return nil, fmt.Errorf("vfs: open %s: %w", name, err)
	}
	c := &Conn{db: db}
	C.sqlite3_extended_result_codes(db, 1)
	setup := fmt.Sprintf("PRAGMA page_size=%d; PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; PRAGMA foreign_keys=ON;", pageSize)
	if err := c.Exec(setup); err != nil {
		c.Close()
		return nil, fmt.Errorf("vfs: configuring %s: %w", name, err)
	}
	C.sqlite3_wal_autocheckpoint(db, 0)
	if rc := C.dq_no_checkpoint_on_close(db); rc != C.SQLITE_OK {
		c.Close()
		return nil, fmt.Errorf("vfs: configuring %s: no checkpoint on close: code %d", name, rc)
	}
	if c.guard = C.dq_guard(db); c.guard == nil {
		c.Close()
		return nil, fmt.Errorf("vfs: guarding %s: out of memory", name)
	}
	return c, nil
}

func connError(db *C.sqlite3, rc C.int) error {
	msg := "unknown error"
	code := int(rc)
	if db != nil {
		msg = C.GoString(C.sqlite3_errmsg(db))
		code = int(C.sqlite3_extended_errcode(db))
	}
	if code == C.SQLITE_AUTH {
		msg += ": ATTACH, DETACH, TEMP tables, views, triggers and indexes, checkpoints and setting PRAGMAs that change " +
			"how the node stores or replicates the database (journal_mode, locking_mode, synchronous, heap limits, ...) " +
			"are reserved to the node"
	}
	return &Error{Code: code, Msg: msg}
}

// Close closes the connection.
func (c *Conn) Close() error {
	if c.db == nil {
		return nil
	}
	rc := C.sqlite3_close_v2(c.db)
	c.db = nil
	live := c.live
	if c.guard != nil {
		C.dq_guard_free(c.guard)
		c.guard = nil
	}
	if rc != C.SQLITE_OK {
		return &Error{Code: int(rc), Msg: "closing connection"}
	}
	if live > 0 {
		// SQLite keeps the connection until they are finalized: a leak.
		return fmt.Errorf("vfs: connection closed with %d statements not finalized", live)
	}
	return nil
}

// Statements is the number of statements prepared on the connection and
// not yet finalized.
func (c *Conn) Statements() int { return c.live }

// Exec runs every statement in sql, discarding rows.
func (c *Conn) Exec(sql string) error {
	csql := C.CString(sql)
	defer C.free(unsafe.Pointer(csql))
	if rc := C.sqlite3_exec(c.db, csql, nil, nil, nil); rc != C.SQLITE_OK {
		return connError(c.db, rc)
	}
	return nil
}

// Checkpoint copies the WAL into the database file and empties the WAL.
func (c *Conn) Checkpoint() error {
	c.trust(true)
	defer c.trust(false)
	err := c.Exec("PRAGMA wal_checkpoint(TRUNCATE)")
	if werr := c.checkpointWriteError(); err == nil {
		err = werr
	}
	return err
}

// ErrCheckpointWrite: a checkpoint's last write to the database file
// failed; the checkpoint copied nothing (the WAL keeps every frame).
var ErrCheckpointWrite = errors.New("vfs: the checkpoint's last write to the database file failed; the WAL keeps its frames")

// checkpointWriteError reports a failure of the last write of the
// checkpoint that just ran (its pages are written in large coalesced
// writes, the last one after SQLite can hear of a failure; see vfs.c).
func (c *Conn) checkpointWriteError() error {
	if rc := C.dq_ckpt_error(c.db); rc != 0 {
		return fmt.Errorf("%w (code %d)", ErrCheckpointWrite, int(rc))
	}
	return nil
}

// CheckpointPassive copies the WAL's committed frames into the database
// file as far as readers allow, without waiting for or blocking anyone and
// without restarting the WAL (so a captured transaction waiting to commit
// is not disturbed). It returns the frames in the WAL and the frames now in
// the file: equal when the file holds every committed frame.
func (c *Conn) CheckpointPassive() (frames, copied int64, err error) {
	c.trust(true)
	defer c.trust(false)
	rows, err := c.Query("PRAGMA wal_checkpoint(PASSIVE)")
	if werr := c.checkpointWriteError(); err == nil {
		err = werr
	}
	if err != nil {
		return 0, 0, err
	}
	if len(rows) != 1 || len(rows[0]) != 3 {
		return 0, 0, fmt.Errorf("vfs: checkpoint returned %v", rows)
	}
	frames, _ = rows[0][1].(int64)
	copied, _ = rows[0][2].(int64)
	return frames, copied, nil
}

// SetCacheBytes bounds the connection's page cache (SQLite's cache_size).
func (c *Conn) SetCacheBytes(n int64) error {
	c.trust(true)
	defer c.trust(false)
	return c.Exec(fmt.Sprintf("PRAGMA cache_size=-%d", max(n/1024, 1)))
}

// SetQueryOnly makes every later attempt of the connection to write fail
// with SQLITE_READONLY before it takes a lock (PRAGMA query_only, which
// client SQL cannot turn off: see the guard). A statement SQLite calls
// read-only may still try to write: PRAGMA optimize runs ANALYZE.
func (c *Conn) SetQueryOnly() error {
	c.trust(true)
	defer c.trust(false)
	return c.Exec("PRAGMA query_only=1")
}

// CacheUsed is the memory the connection's page cache uses.
func (c *Conn) CacheUsed() int64 { return int64(C.dq_cache_used(c.db)) }

// trust lets the node's own statements past the guard.
func (c *Conn) trust(on bool) {
	v := C.int(0)
	if on {
		v = 1
	}
	C.dq_guard_trust(c.guard, v)
}

// Changes is the number of rows the last statement changed.
func (c *Conn) Changes() int64 { return int64(C.sqlite3_changes(c.db)) }

// LastInsertRowID is the rowid of the last insert.
func (c *Conn) LastInsertRowID() int64 { return int64(C.sqlite3_last_insert_rowid(c.db)) }

// SetLastInsertRowID sets what LastInsertRowID returns until the next
// insert.
func (c *Conn) SetLastInsertRowID(id int64) {
	C.sqlite3_set_last_insert_rowid(c.db, C.sqlite3_int64(id))
}

// TotalChanges counts the rows changed by INSERT, UPDATE and DELETE
// statements since the connection opened.
func (c *Conn) TotalChanges() int64 { return int64(C.sqlite3_total_changes64(c.db)) }

// Interrupt makes the running statement stop with an interrupt error.
func (c *Conn) Interrupt() { C.sqlite3_interrupt(c.db) }

// Autocommit reports whether the connection is outside an explicit
// transaction.
func (c *Conn) Autocommit() bool { return C.sqlite3_get_autocommit(c.db) != 0 }

// Stmt is a prepared statement.
type Stmt struct {
	s    *C.sqlite3_stmt
	conn *Conn
}

// Prepare compiles the first statement of sql and returns the rest. A nil
// statement with no error means sql held only whitespace or comments.
func (c *Conn) Prepare(sql string) (*Stmt, string, error) {
	csql := C.CString(sql)
	defer C.free(unsafe.Pointer(csql))
	var s *C.sqlite3_stmt
	var tail *C.char
	if rc := C.sqlite3_prepare_v2(c.db, csql, C.int(len(sql)), &s, &tail); rc != C.SQLITE_OK {
		return nil, "", connError(c.db, rc)
	}
	used := int(uintptr(unsafe.Pointer(tail)) - uintptr(unsafe.Pointer(csql)))
	rest := sql[used:]
	if s == nil {
		return nil, rest, nil
	}
	c.live++
	return &Stmt{s: s, conn: c}, rest, nil
}

// MemUsed is the memory SQLite holds for the compiled statement, in bytes.
func (s *Stmt) MemUsed() int64 {
	if s.s == nil {
		return 0
	}
	return int64(C.sqlite3_stmt_status(s.s, C.SQLITE_STMTSTATUS_MEMUSED, 0))
}

// ParamCount is the number of parameters (the highest index).
func (s *Stmt) ParamCount() int { return int(C.sqlite3_bind_parameter_count(s.s)) }

// Readonly reports whether the statement does not write.
func (s *Stmt) Readonly() bool { return C.sqlite3_stmt_readonly(s.s) != 0 }

// Bind sets parameter i (1-based) to v: int64, int, float64, string, []byte,
// bool or nil.
func (s *Stmt) Bind(i int, v any) error {
	var rc C.int
	switch x := v.(type) {
	case nil:
		rc = C.sqlite3_bind_null(s.s, C.int(i))
	case int64:
		rc = C.sqlite3_bind_int64(s.s, C.int(i), C.sqlite3_int64(x))
	case int:
		rc = C.sqlite3_bind_int64(s.s, C.int(i), C.sqlite3_int64(x))
	case bool:
		b := 0
		if x {
			b = 1
		}
		rc = C.sqlite3_bind_int64(s.s, C.int(i), C.sqlite3_int64(b))
	case float64:
		rc = C.sqlite3_bind_double(s.s, C.int(i), C.double(x))
	case string:
		p := C.CString(x)
		rc = C.dq_bind_text(s.s, C.int(i), p, C.int(len(x)))
		C.free(unsafe.Pointer(p))
	case []byte:
		p := C.CBytes(x)
		rc = C.dq_bind_blob(s.s, C.int(i), p, C.int(len(x)))
		C.free(p)
	default:
		return fmt.Errorf("vfs: cannot bind %T", v)
	}
	if rc != C.SQLITE_OK {
		return connError(s.conn.db, rc)
	}
	return nil
}

// Step runs the statement to its next row; it returns false when done.
func (s *Stmt) Step() (bool, error) {
	if s.s == nil {
		return false, errors.New("vfs: statement already finalized")
	}
	switch rc := C.sqlite3_step(s.s); rc {
	case C.SQLITE_ROW:
		return true, nil
	case C.SQLITE_DONE:
		return false, nil
	default:
		return false, connError(s.conn.db, rc)
	}
}

// ColumnCount is the number of result columns.
func (s *Stmt) ColumnCount() int { return int(C.sqlite3_column_count(s.s)) }

// ColumnName is the name of column i (0-based).
func (s *Stmt) ColumnName(i int) string { return C.GoString(C.sqlite3_column_name(s.s, C.int(i))) }

// ColumnDeclType is the declared type of column i ("" for expressions).
func (s *Stmt) ColumnDeclType(i int) string {
	return C.GoString(C.sqlite3_column_decltype(s.s, C.int(i)))
}

// Column types.
const (
	Integer = 1
	Float   = 2
	Text    = 3
	Blob    = 4
	Null    = 5
)

// ColumnType is the storage class of column i in the current row.
func (s *Stmt) ColumnType(i int) int { return int(C.sqlite3_column_type(s.s, C.int(i))) }

// Column returns column i of the current row as int64, float64, string,
// []byte or nil.
func (s *Stmt) Column(i int) any {
	ci := C.int(i)
	switch C.sqlite3_column_type(s.s, ci) {
	case C.SQLITE_INTEGER:
		return int64(C.sqlite3_column_int64(s.s, ci))
	case C.SQLITE_FLOAT:
		return float64(C.sqlite3_column_double(s.s, ci))
	case C.SQLITE_TEXT:
		p := C.sqlite3_column_text(s.s, ci)
		return C.GoStringN((*C.char)(unsafe.Pointer(p)), C.sqlite3_column_bytes(s.s, ci))
	case C.SQLITE_BLOB:
		p := C.sqlite3_column_blob(s.s, ci)
		return C.GoBytes(p, C.sqlite3_column_bytes(s.s, ci))
	}
	return nil
}

// Reset rewinds the statement to run again (bindings are kept).
func (s *Stmt) Reset() error {
	if rc := C.sqlite3_reset(s.s); rc != C.SQLITE_OK {
		return connError(s.conn.db, rc)
	}
	return nil
}

// Recycle resets the statement and clears its bindings for another use,
// and returns it under a new handle: s itself no longer refers to it (its
// later use fails as after Finalize), so whoever kept s cannot step the
// statement's next user. When the reset fails, the statement is finalized
// and Recycle returns nil.
func (s *Stmt) Recycle() *Stmt {
	if s.s == nil {
		return nil
	}
	if C.sqlite3_reset(s.s) != C.SQLITE_OK || C.sqlite3_clear_bindings(s.s) != C.SQLITE_OK {
		s.Finalize()
		return nil
	}
	n := &Stmt{s: s.s, conn: s.conn}
	s.s = nil
	return n
}

// Finalize releases the statement.
func (s *Stmt) Finalize() error {
	if s.s == nil {
		return nil
	}
	rc := C.sqlite3_finalize(s.s)
	s.s = nil
	s.conn.live--
	if rc != C.SQLITE_OK {
		return &Error{Code: int(rc), Msg: "finalizing statement"}
	}
	return nil
}

// Query runs sql with args and returns every row (a convenience for the
// node's own small queries and for tests).
func (c *Conn) Query(sql string, args ...any) ([][]any, error) {
	s, _, err := c.Prepare(sql)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, nil
	}
	defer s.Finalize()
	for i, a := range args {
		if err := s.Bind(i+1, a); err != nil {
			return nil, err
		}
	}
	var rows [][]any
	for {
		ok, err := s.Step()
		if err != nil {
			return rows, err
		}
		if !ok {
			return rows, nil
		}
		row := make([]any, s.ColumnCount())
		for i := range row {
			row[i] = s.Column(i)
		}
		rows = append(rows, row)
	}
}
