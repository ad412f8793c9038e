package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/sqltext"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/vfs"
)

// Transactions spanning requests. A client session (a wire connection, or
// a Tx of the embedding API) opens one with a request holding BEGIN alone:
// it waits for the writer slot like any write, then keeps it, so the
// session's next requests run at once inside the transaction (reads too,
// on the write connection: they see the transaction's own writes), while
// other writers queue behind it (each bounded by the request timeout, then
// a busy error). COMMIT replicates the whole transaction as one entry;
// ROLLBACK leaves no trace. The node rolls the transaction back itself
// when it loses leadership, when the session stays idle past
// Config.TxIdleTimeout, or when the session ends; the session's next
// requests then fail with loop.ErrTxAborted until it sends ROLLBACK (which
// succeeds) or COMMIT (which fails with it).

// txSessionBase keeps the embedding API's sessions apart from the wire
// server's (numbered from 1).
const txSessionBase = 1 << 62

// writeRequest builds the loop request for a write of session.
func (n *Node) writeRequest(id, session uint64, item *fsm.BatchItem) loop.WriteRequest {
	if item.Database == "" {
		item.Database = DefaultDatabase
	}
	w := loop.WriteRequest{ID: id, Batch: item, Group: item.Database, Tx: session}
	if session == 0 {
		return w
	}
	ctl := sqltext.LoneTxControl(item.SQL)
	if ctl != "" {
		// BEGIN opens a transaction (it runs alone, not merged into a
		// batch); COMMIT/END/ROLLBACK outside a transaction get SQLite's
		// own answer (a lone ROLLBACK succeeds).
		w.Batch = nil
	}
	w.EndsTx = ctl == "COMMIT" || ctl == "END" || ctl == "ROLLBACK"
	w.Rollback = ctl == "ROLLBACK"
	w.ExecuteTx = func() ([]byte, any, bool, error) {
		cmd, res, open, err := n.db.ExecuteTx(item.Database, item.SQL, item.Params, item.Rows)
		return cmd, res, open, err
	}
	w.Proposed, w.Abort = n.db.Proposed, n.db.Abort
	return w
}

// openCursor opens a query's cursor for session, inside its transaction if
// one is open. Called in the loop.
func (n *Node) openCursor(session uint64, db, sql string, args []any) (*vfs.Stmt, error) {
	if n.loop.TxOpen(session) {
		return n.db.OpenTxCursor(sql, args...)
	}
	if err := n.loop.TxErr(session); err != nil {
		return nil, err
	}
	return n.db.OpenCursor(db, sql, args...)
}

// txStepErr is the error of a query's step: when the session's
// transaction was rolled back under it (which finalized its cursor), the
// rollback's reason. Called in the loop.
func (n *Node) txStepErr(session uint64, err error) error {
	if err != nil && session != 0 {
		if txErr := n.loop.TxErr(session); txErr != nil {
			return txErr
		}
	}
	return err
}

// endSession rolls back session's open transaction and forgets it.
func (n *Node) endSession(session uint64) {
	n.post(func() { n.handle(n.loop.EndSession(session)) })
}

// ErrTxDone is returned by a Tx used after Commit or Rollback.
var ErrTxDone = errors.New("node: transaction already committed or rolled back")

// Tx is a transaction spanning several requests on this node, which must
// stay the leader until it commits (see Begin). A Tx is not safe for
// concurrent use.
type Tx struct {
	n       *Node
	db      string
	session uint64
	done    bool
}

// Begin opens a transaction (SQLite's deferred BEGIN, holding the
// cluster's writer slot): its writes are invisible to everyone else until
// Commit replicates them as one entry. Every Begin must end with Commit or
// Rollback; an idle transaction is rolled back after Config.TxIdleTimeout.
func (n *Node) Begin(ctx context.Context) (*Tx, error) { return n.Database(DefaultDatabase).Begin(ctx) }

// Begin opens a transaction on the database (see Node.Begin).
func (db *Database) Begin(ctx context.Context) (*Tx, error) {
	n := db.n
	tx := &Tx{n: n, db: db.name, session: txSessionBase + n.nextSession.Add(1)}
	if _, err := n.execIn(ctx, tx.session, &fsm.BatchItem{Database: tx.db, SQL: "BEGIN"}); err != nil {
		n.endSession(tx.session)
		return nil, err
	}
	return tx, nil
}

// Exec runs a write (one or more statements) inside the transaction.
func (tx *Tx) Exec(ctx context.Context, sql string, args ...any) (fsm.Result, error) {
	if tx.done {
		return fsm.Result{}, ErrTxDone
	}
	params, err := toValues(args)
	if err != nil {
		return fsm.Result{}, err
	}
	return tx.n.execIn(ctx, tx.session, &fsm.BatchItem{Database: tx.db, SQL: sql, Params: params})
}

// Query runs a read inside the transaction (it sees the transaction's
// writes).
func (tx *Tx) Query(ctx context.Context, sql string, args ...any) ([][]any, error) {
	if tx.done {
		return nil, ErrTxDone
	}
	return tx.n.queryIn(ctx, tx.session, tx.db, sql, args)
}

// Commit replicates the transaction and returns once it is committed and
// applied on this node.
func (tx *Tx) Commit(ctx context.Context) error { return tx.end(ctx, "COMMIT") }

// Rollback drops the transaction.
func (tx *Tx) Rollback(ctx context.Context) error { return tx.end(ctx, "ROLLBACK") }

func (tx *Tx) end(ctx context.Context, sql string) error {
	if tx.done {
		return ErrTxDone
	}
	tx.done = true
	_, err := tx.n.execIn(ctx, tx.session, &fsm.BatchItem{Database: tx.db, SQL: sql})
	tx.n.endSession(tx.session)
	if err != nil {
		return fmt.Errorf("node: %s: %w", sql, err)
	}
	return nil
}
