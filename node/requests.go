package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/vfs"
)

// Client requests of the embedding API (and, through backend, of the wire
// server): a request runs in the loop and waits for its reply; the
// databases' Exec and Query.

// request runs submit in the loop goroutine and waits for the reply.
func (n *Node) request(ctx context.Context, submit func(id uint64) loop.Output) (loop.Reply, error) {
	if err := ctx.Err(); err != nil {
		// Its client is gone already (a request read from a connection
		// that then closed): it never runs.
		return loop.Reply{}, fmt.Errorf("%w: %w", loop.ErrCanceled, err)
	}
	id := n.nextReq.Add(1)
	ch := make(chan loop.Reply, 1)
	if !n.post(func() {
		n.eventKind = "request"
		n.waiters[id] = ch
		n.handle(submit(id))
	}) {
		return loop.Reply{}, ErrClosed
	}
	select {
	case r := <-ch:
		return r, r.Err
	case <-ctx.Done():
		// A request that has not run yet never will (a queued BEGIN must
		// not open a transaction after its client gave up): then it fails
		// with loop.ErrCanceled, a known outcome. A read that already ran
		// has its cursor closed (it would hold the WAL); a write already
		// executed goes on, its outcome unknown to this caller.
		never := make(chan bool, 1)
		if !n.post(func() {
			n.handle(n.loop.Cancel(id))
			select {
			case r := <-ch:
				if errors.Is(r.Err, loop.ErrCanceled) {
					never <- true
					return
				}
				n.release(r.Result)
			default:
			}
			never <- false
		}) {
			return loop.Reply{}, ErrClosed
		}
		select {
		case canceled := <-never:
			if canceled {
				return loop.Reply{}, fmt.Errorf("%w: %w", loop.ErrCanceled, ctx.Err())
			}
		case <-n.stop:
			return loop.Reply{}, ErrClosed
		}
		return loop.Reply{}, fmt.Errorf("node: request abandoned, outcome unknown: %w", ctx.Err())
	case <-n.stop:
		return loop.Reply{}, ErrClosed
	}
}

// DefaultDatabase is the database of Node.Exec, Query and Begin (clients
// of the wire protocol name theirs in OPEN).
const DefaultDatabase = "db"

// Database is one of the cluster's databases, for the embedding API.
type Database struct {
	n    *Node
	name string
}

// Database returns the database name (created by its first write, or by a
// wire client's OPEN; see fsm.CheckDatabaseName for the names allowed).
func (n *Node) Database(name string) *Database { return &Database{n: n, name: name} }

// Name is the database's name.
func (db *Database) Name() string { return db.name }

// Exec runs a write on the default database (see Database.Exec).
func (n *Node) Exec(ctx context.Context, sql string, args ...any) (fsm.Result, error) {
	return n.Database(DefaultDatabase).Exec(ctx, sql, args...)
}

// Exec runs a write on this node, which must be the leader. sql may hold
// several statements (parameters are consumed in order); the request is
// atomic, and BEGIN ... COMMIT may wrap it, but a transaction cannot span
// requests.
func (db *Database) Exec(ctx context.Context, sql string, args ...any) (fsm.Result, error) {
	params, err := toValues(args)
	if err != nil {
		return fsm.Result{}, err
	}
	return db.n.execIn(ctx, 0, &fsm.BatchItem{Database: db.name, SQL: sql, Params: params})
}

// execIn runs a write from a client session (0: none; see tx.go).
func (n *Node) execIn(ctx context.Context, session uint64, item *fsm.BatchItem) (fsm.Result, error) {
	r, err := n.request(ctx, func(id uint64) loop.Output {
		n.vfs.SetTime(time.Now().UnixMilli())
		return n.loop.SubmitWrite(n.writeRequest(id, session, item))
	})
	if err != nil {
		return fsm.Result{}, err
	}
	res, _ := r.Result.(fsm.Result)
	return res, nil
}

// queryBatchRows and queryBatchTime bound the rows a query steps through in
// one loop event, so a long query never holds the loop (and its heartbeats)
// for long.
const (
	queryBatchRows = 256
	queryBatchTime = 2 * time.Millisecond
)

// maxQueryRows bounds a result held in memory. A variable only so tests can
// lower it; nothing else changes it.
var maxQueryRows = 1 << 20

// ErrTooManyRows is returned when a query's result exceeds maxQueryRows.
var ErrTooManyRows = errors.New("node: query result too large")

// Query runs a read on the default database (see Database.Query).
func (n *Node) Query(ctx context.Context, sql string, args ...any) ([][]any, error) {
	return n.Database(DefaultDatabase).Query(ctx, sql, args...)
}

// Query runs a linearizable read on this node, which must be the leader. It
// reads one consistent snapshot, stepped in short batches between the loop's
// other events. A statement that writes (INSERT ... RETURNING) runs as a
// write, and its rows come once it committed.
func (db *Database) Query(ctx context.Context, sql string, args ...any) ([][]any, error) {
	return db.n.queryIn(ctx, 0, db.name, sql, args)
}

// ReadOptions choose where a query may be served and what it promises
// (see docs/CONSISTENCY.md): Node.Query and Database.Query read them from
// the context (WithReadOptions); the default is loop.ReadLeader.
type ReadOptions = loop.ReadOptions

type readOptionsKey struct{}

// WithReadOptions returns a context whose queries use o.
func WithReadOptions(ctx context.Context, o ReadOptions) context.Context {
	return context.WithValue(ctx, readOptionsKey{}, o)
}

func readOptionsOf(ctx context.Context) ReadOptions {
	o, _ := ctx.Value(readOptionsKey{}).(ReadOptions)
	return o
}

func (n *Node) queryIn(ctx context.Context, session uint64, db, sql string, args []any) ([][]any, error) {
	ro := readOptionsOf(ctx)
	r, err := n.request(ctx, func(id uint64) loop.Output {
		return n.loop.ReadWith(id, session, ro, func() (any, error) { return n.openCursor(session, db, sql, args) })
	})
	if errors.Is(err, fsm.ErrWrites) {
		params, verr := toValues(args)
		if verr != nil {
			return nil, verr
		}
		res, err := n.execIn(ctx, session, &fsm.BatchItem{Database: db, SQL: sql, Params: params, Rows: true})
		if err != nil {
			return nil, err
		}
		if res.Rows == nil {
			return nil, nil
		}
		return res.Rows.Values, nil
	}
	if err != nil {
		return nil, err
	}
	cur := r.Result.(*vfs.Stmt)
	var rows [][]any
	for {
		done := false
		var stepErr error
		ok := n.do(func() {
			start := time.Now()
			for k := 0; k < queryBatchRows && time.Since(start) < queryBatchTime; k++ {
				more, err := cur.Step()
				if err != nil || !more {
					done, stepErr = true, n.txStepErr(session, err)
					break
				}
				n.loop.TxActive(session)
				row := make([]any, cur.ColumnCount())
				for i := range row {
					row[i] = cur.Column(i)
				}
				rows = append(rows, row)
				if len(rows) > maxQueryRows {
					done, stepErr = true, ErrTooManyRows
					break
				}
			}
			if done {
				n.db.CloseCursor(cur)
			}
		})
		if !ok {
			return nil, ErrClosed
		}
		if done {
			return rows, stepErr
		}
		if err := ctx.Err(); err != nil {
			n.do(func() { n.db.CloseCursor(cur) })
			return nil, err
		}
	}
}

// release frees what a reply nobody will read holds. Called in the loop.
func (n *Node) release(result any) {
	switch v := result.(type) {
	case *vfs.Stmt:
		n.db.CloseCursor(v)
	case *cursor:
		if !v.closed {
			v.closed = true
			n.db.CloseCursor(v.st)
		}
	}
}

// toValues converts the embedding API's arguments.
func toValues(args []any) ([]fsm.Value, error) {
	out := make([]fsm.Value, len(args))
	for i, a := range args {
		switch x := a.(type) {
		case nil:
			out[i] = fsm.Value{Type: fsm.TypeNull}
		case int:
			out[i] = fsm.Value{Type: fsm.TypeInteger, Int: int64(x)}
		case int64:
			out[i] = fsm.Value{Type: fsm.TypeInteger, Int: x}
		case float64:
			out[i] = fsm.Value{Type: fsm.TypeFloat, Float: x}
		case string:
			out[i] = fsm.Value{Type: fsm.TypeText, Text: x}
		case []byte:
			out[i] = fsm.Value{Type: fsm.TypeBlob, Blob: x}
		case bool:
			v := int64(0)
			if x {
				v = 1
			}
			out[i] = fsm.Value{Type: fsm.TypeInteger, Int: v}
		default:
			return nil, fmt.Errorf("node: parameter %d: unsupported type %T", i+1, a)
		}
	}
	return out, nil
}
