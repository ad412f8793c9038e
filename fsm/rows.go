package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// The rows of a write sent as a query (BatchItem.Rows): collected while
// it runs, sent once it committed, and recorded for deduplication.

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
func (d *DB) checkNoRows(x *database, sql string) error {
	r, err := d.freeReader(x) // compiled against the latest schema
	if err != nil {
		return err
	}
	s, _, err := r.conn.Prepare(sql)
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
	// Every value takes a byte at least: the row count cannot ask for more
	// memory than the record holds (the table is writable by clients).
	if d.err == nil && (n > uint64(len(b)) || cols > 0 && n*cols > uint64(len(d.b))) {
		d.fail("%d rows of %d columns in %d bytes", n, cols, len(d.b))
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
