package fsm

import (
	"fmt"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

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
	defer d.end(d.begin(WorkExecute))
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
	if err := d.checkpointBeforeWrite(x); err != nil {
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
				if err := d.checkNoRows(x, b.SQL); err != nil {
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
