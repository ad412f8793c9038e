package fsm

import (
	"errors"
	"fmt"

	"github.com/dqlite-go/dqlite/internal/sqltext"
)

// Transactions spanning requests: a client session's BEGIN holds the
// write connection until its COMMIT or ROLLBACK (or the node rolls it
// back).

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
	defer d.end(d.begin(WorkExecute))
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
