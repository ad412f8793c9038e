package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/vfs"
	"github.com/dqlite-go/dqlite/wire"
)

// backend serves the dqlite wire protocol from a node.
type backend struct{ n *Node }

var _ wire.Backend = backend{}

// Leader names this node only once it serves (see waitServing): a client
// told so sends its requests here next.
func (b backend) Leader() (uint64, string) {
	n := b.n
	var lead raft.NodeID
	var voter bool
	know := func() bool {
		return n.do(func() {
			lead = n.loop.Raft().Basic().Lead
			m := n.loop.Raft().Status().Config
			s, ok := m.Get(n.cfg.ID)
			voter = ok && s.Role == raft.Voter
		})
	}
	if !know() {
		return 0, ""
	}
	if lead == n.cfg.ID && !n.waitServing() {
		// Not serving within an election timeout (its first entry cannot
		// commit): it names nobody rather than itself.
		if !know() || lead == n.cfg.ID {
			return 0, ""
		}
	}
	if !voter || lead == raft.None {
		return 0, ""
	}
	if lead == n.cfg.ID {
		return uint64(lead), n.cfg.Address
	}
	for _, s := range n.Cluster() {
		if s.ID == lead {
			return uint64(lead), s.Address
		}
	}
	return 0, ""
}

// IsLeader is the cached view of the last event (a request it lets through
// to a node that just lost leadership fails in the loop with not-leader),
// except on a new leader not serving yet: then it waits for its barrier
// (see waitServing).
func (b backend) IsLeader() bool { return b.n.waitServing() }

func (b backend) Exec(ctx context.Context, w *wire.Write) (int64, int64, error) {
	params := make([]fsm.Value, len(w.Params))
	for i, p := range w.Params {
		params[i] = fsmValue(p)
	}
	res, err := b.n.execIn(ctx, w.Session, &fsm.BatchItem{Database: w.Database, SQL: w.SQL, Params: params,
		Client: w.Client, Seq: w.Seq})
	return res.LastInsertID, res.RowsAffected, err
}

// Open creates database name on the leader if it does not exist yet (its
// first write replicates it).
func (b backend) Open(ctx context.Context, name string) error {
	var err error
	if !b.n.do(func() { err = b.n.db.Create(name) }) {
		return ErrClosed
	}
	return err
}

func fsmValue(v wire.Value) fsm.Value {
	switch x := v.V.(type) {
	case int64:
		return fsm.Value{Type: fsm.TypeInteger, Int: x}
	case float64:
		return fsm.Value{Type: fsm.TypeFloat, Float: x}
	case string:
		return fsm.Value{Type: fsm.TypeText, Text: x}
	case []byte:
		return fsm.Value{Type: fsm.TypeBlob, Blob: x}
	}
	return fsm.Value{Type: fsm.TypeNull}
}

func (b backend) Prepare(ctx context.Context, session uint64, db, sql string) (int, int, error) {
	var params, tail int
	var err error
	if !b.n.do(func() { params, tail, err = b.n.db.PrepareCheck(db, sql, b.n.loop.TxOpen(session)) }) {
		return 0, 0, ErrClosed
	}
	return params, tail, err
}

// Query starts a read; a statement that writes (INSERT ... RETURNING, or a
// CREATE TABLE sent as a query) runs as a write instead, deduplicated as
// w asks, and its rows are sent once it committed.
func (b backend) Query(ctx context.Context, w *wire.Write) (wire.Cursor, error) {
	args := make([]any, len(w.Params))
	for i, p := range w.Params {
		args[i] = p.V
	}
	n := b.n
	session := w.Session
	r, err := n.request(ctx, func(id uint64) loop.Output {
		return n.loop.ReadWith(id, session, wireReadOptions(w), func() (any, error) {
			st, err := n.openCursor(session, w.Database, w.SQL, args)
			if err != nil {
				return nil, err
			}
			c := &cursor{n: n, session: session, st: st}
			c.prefetch()
			return c, nil
		})
	})
	if errors.Is(err, fsm.ErrWrites) {
		return b.queryWrite(ctx, w)
	}
	if err != nil {
		return nil, err
	}
	return r.Result.(*cursor), nil
}

// queryWrite runs a query that writes.
func (b backend) queryWrite(ctx context.Context, w *wire.Write) (wire.Cursor, error) {
	params := make([]fsm.Value, len(w.Params))
	for i, p := range w.Params {
		params[i] = fsmValue(p)
	}
	res, err := b.n.execIn(ctx, w.Session, &fsm.BatchItem{Database: w.Database, SQL: w.SQL, Params: params,
		Client: w.Client, Seq: w.Seq, Rows: true})
	if err != nil {
		return nil, err
	}
	c := &rowsCursor{}
	if res.Rows != nil {
		c.cols, c.decl, c.rows = res.Rows.Columns, res.Rows.DeclTypes, res.Rows.Values
	}
	return c, nil
}

// rowsCursor streams the rows a write returned (held since it ran).
type rowsCursor struct {
	cols, decl []string
	rows       [][]any
}

func (c *rowsCursor) Columns() []string { return c.cols }

func (c *rowsCursor) Next(add func([]wire.Value) bool) (bool, error) {
	for len(c.rows) > 0 {
		row := make([]wire.Value, len(c.cols))
		for i := range row {
			row[i] = wire.ColumnValue(c.decl[i], c.rows[0][i])
		}
		c.rows = c.rows[1:]
		if !add(row) {
			return len(c.rows) == 0, nil
		}
	}
	return true, nil
}

func (c *rowsCursor) Close() { c.rows = nil }

// cursor steps a query in short batches of loop time. The first rows (up
// to prefetchBytes) are stepped in the loop event that opened it, and a
// statement done by then is closed there too: a point read costs one loop
// event, not three.
type cursor struct {
	n          *Node
	session    uint64
	st         *vfs.Stmt
	cols, decl []string
	closed     bool
	// ahead holds rows stepped before Next asked; done: the statement
	// ended (and err is how).
	ahead [][]wire.Value
	done  bool
	err   error
}

// prefetchBytes bounds the rows a cursor steps when it opens (about one
// ROWS message).
const prefetchBytes = wire.RowsBatchBytes

// prefetchTime bounds the time a cursor steps when it opens: many reads
// can open in one loop event (a heartbeat round releases them together).
const prefetchTime = 200 * time.Microsecond

// prefetch steps the first rows; called in the loop.
func (c *cursor) prefetch() {
	c.n.loop.TxActive(c.session)
	size := 0
	start := time.Now()
	for k := 0; k < queryBatchRows && size < prefetchBytes && (k == 0 || time.Since(start) < prefetchTime); k++ {
		more, e := c.st.Step()
		if k == 0 {
			// The columns as of the first step: a statement compiled
			// before a schema change (ALTER TABLE) is compiled again by
			// it, and names its columns as it then reads them.
			c.cols, c.decl = make([]string, c.st.ColumnCount()), make([]string, c.st.ColumnCount())
			for i := range c.cols {
				c.cols[i], c.decl[i] = c.st.ColumnName(i), c.st.ColumnDeclType(i)
			}
		}
		if e != nil || !more {
			c.done, c.err = true, c.n.txStepErr(c.session, e)
			c.closed = true
			c.n.db.CloseCursor(c.st)
			return
		}
		row := c.row()
		for _, v := range row {
			size += valueSize(v)
		}
		c.ahead = append(c.ahead, row)
	}
}

// row is the statement's current row; called in the loop.
func (c *cursor) row() []wire.Value {
	row := make([]wire.Value, len(c.cols))
	for i := range row {
		row[i] = wire.ColumnValue(c.decl[i], c.st.Column(i))
	}
	return row
}

// valueSize is about what a value takes in a ROWS message.
func valueSize(v wire.Value) int {
	switch x := v.V.(type) {
	case string:
		return 8 + len(x)
	case []byte:
		return 8 + len(x)
	}
	return 8
}

func (c *cursor) Columns() []string { return c.cols }

func (c *cursor) Next(add func([]wire.Value) bool) (bool, error) {
	for len(c.ahead) > 0 {
		row := c.ahead[0]
		c.ahead = c.ahead[1:]
		if !add(row) {
			return c.done && len(c.ahead) == 0, c.errIfDone()
		}
	}
	if c.done {
		return true, c.err
	}
	var done bool
	var err error
	if !c.n.do(func() {
		c.n.loop.TxActive(c.session)
		start := time.Now()
		for k := 0; k < queryBatchRows && time.Since(start) < queryBatchTime; k++ {
			more, e := c.st.Step()
			if e != nil || !more {
				done, err = true, c.n.txStepErr(c.session, e)
				return
			}
			if !add(c.row()) {
				return
			}
		}
	}) {
		return true, ErrClosed
	}
	return done, err
}

func (c *cursor) errIfDone() error {
	if c.done && len(c.ahead) == 0 {
		return c.err
	}
	return nil
}

func (c *cursor) Close() {
	if !c.closed {
		c.closed = true
		c.n.do(func() { c.n.db.CloseCursor(c.st) })
	}
}

func (b backend) EndSession(session uint64) { b.n.endSession(session) }

// Interrupt drops the session's requests that have not run yet (see
// loop.Interrupt).
func (b backend) Interrupt(session uint64) {
	b.n.post(func() { b.n.handle(b.n.loop.Interrupt(session)) })
}

func (b backend) Cluster() []wire.ServerInfo {
	servers := b.n.Cluster()
	out := make([]wire.ServerInfo, len(servers))
	for i, s := range servers {
		out[i] = wire.ServerInfo{ID: uint64(s.ID), Address: s.Address, Role: wireRole(s.Role)}
	}
	return out
}

func wireRole(r raft.Role) uint64 {
	switch r {
	case raft.Standby:
		return wire.RoleStandby
	case raft.Spare:
		return wire.RoleSpare
	}
	return wire.RoleVoter
}

func raftRole(r uint64) raft.Role {
	switch r {
	case wire.RoleStandby:
		return raft.Standby
	case wire.RoleSpare:
		return raft.Spare
	}
	return raft.Voter
}

func (b backend) Dump(ctx context.Context, name string) ([]byte, error) {
	// On the leader, a linearizable read point first, so the dump has every
	// committed write; elsewhere, the node's own applied state.
	if !b.n.IsLeader() {
		return b.n.Dump(name)
	}
	if _, err := b.n.request(ctx, func(id uint64) loop.Output {
		return b.n.loop.Read(id, func() (any, error) { return nil, nil })
	}); err != nil {
		return nil, err
	}
	return b.n.Dump(name)
}

// DumpStream sends a DUMP from the database's file (wire.DumpStreamer): the
// file is brought up to date and its checkpoints paused on the loop, and
// the connection's goroutine reads it. A database without a file of its
// own (statement mode, or never written) has its image sent (Dump).
func (b backend) DumpStream(ctx context.Context, name string) (int64, io.ReadCloser, error) {
	// On the leader, a linearizable read point first, as for Dump.
	if b.n.IsLeader() {
		if _, err := b.n.request(ctx, func(id uint64) loop.Output {
			return b.n.loop.Read(id, func() (any, error) { return nil, nil })
		}); err != nil {
			return 0, nil, err
		}
	}
	var u *fsm.Dump
	var err error
	if !b.n.do(func() { u, err = b.n.db.OpenDump(name) }) {
		return 0, nil, ErrClosed
	}
	if err != nil || u == nil {
		return 0, nil, err
	}
	return u.Size(), &dumpBody{n: b.n, u: u}, nil
}

// dumpBody reads a DUMP's file; Close resumes the database's checkpoints.
type dumpBody struct {
	n    *Node
	u    *fsm.Dump
	once sync.Once
}

func (d *dumpBody) Read(p []byte) (int, error) { return d.u.Read(p) }

func (d *dumpBody) Close() error {
	err := d.u.Close()
	d.once.Do(func() {
		d.n.post(func() {
			if d.n.db != nil {
				d.n.db.Release(d.u)
			}
		})
	})
	return err
}

func (b backend) Add(ctx context.Context, id uint64, address string) error {
	return b.n.Add(ctx, raft.NodeID(id), address)
}

func (b backend) Assign(ctx context.Context, id, role uint64) error {
	return b.n.Assign(ctx, raft.NodeID(id), raftRole(role))
}

func (b backend) Remove(ctx context.Context, id uint64) error {
	return b.n.Remove(ctx, raft.NodeID(id))
}

func (b backend) Transfer(ctx context.Context, id uint64) error {
	return b.n.Transfer(ctx, raft.NodeID(id))
}

func (b backend) Describe() (uint64, uint64) { return b.n.cfg.FailureDomain, b.n.weight.Load() }

func (b backend) SetWeight(w uint64) error { return b.n.SetWeight(w) }

func (b backend) Peer(c net.Conn, r *bufio.Reader, id uint64, address string) {
	b.n.servePeer(c, r, raft.NodeID(id), address)
}

// ErrorCode maps an error to the FAILURE code clients act on.
func (b backend) ErrorCode(err error) (uint64, string) {
	var se *vfs.Error
	switch {
	case errors.Is(err, loop.ErrTxAborted):
		// Before the SQLite error it may wrap, and before
		// ErrLeadershipLost: the transaction is gone (nothing of it
		// committed); retrying a statement alone would be wrong, so it is
		// not a code clients retry.
		return wire.CodeTxAborted, strings.TrimPrefix(err.Error(), "loop: ")
	case errors.As(err, &se):
		return uint64(se.Code), se.Msg
	case errors.Is(err, loop.ErrCanceled) && errors.Is(err, context.DeadlineExceeded):
		// Never ran: it waited for the node past the request timeout.
		return wire.CodeBusy, "timed out waiting for the node (never executed): " + err.Error()
	case errors.Is(err, loop.ErrCanceled):
		// Never ran: the client interrupted it (or went away).
		return wire.CodeInterrupt, "interrupted: " + strings.TrimPrefix(err.Error(), "loop: ")
	case errors.Is(err, raft.ErrTooStale):
		// Another node (or this one, later) may serve it.
		return wire.CodeNotLeader, strings.TrimPrefix(err.Error(), "raft: ")
	case errors.Is(err, loop.ErrNotLeader), errors.Is(err, raft.ErrTransferInProgress):
		// Refused before proposing: safe to send again to the (next) leader.
		return wire.CodeNotLeader, "not leader"
	case errors.Is(err, loop.ErrLeadershipLost), errors.Is(err, loop.ErrUnknownOutcome),
		errors.Is(err, loop.ErrTimeout), errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrClosed):
		return wire.CodeLeadershipLost, "leadership lost or request timed out: " + err.Error()
	case errors.Is(err, loop.ErrBusy), vfs.IsBusy(err), errors.Is(err, fsm.ErrTooManyQueries):
		return wire.CodeBusy, err.Error()
	case errors.Is(err, fsm.ErrNoDatabase):
		return wire.CodeNoDatabase, "database does not exist"
	case errors.Is(err, fsm.ErrDatabaseName), errors.Is(err, fsm.ErrTooManyDatabases),
		errors.Is(err, fsm.ErrWriteRowsTooLarge), errors.Is(err, fsm.ErrRowsStatementMode),
		errors.Is(err, fsm.ErrTxOtherDatabase):
		return wire.CodeError, strings.TrimPrefix(err.Error(), "fsm: ")
	case errors.Is(err, fsm.ErrNonemptyTail):
		return wire.CodeError, "nonempty statement tail" // the C server's text
	case errors.Is(err, fsm.ErrEmptyStatement), errors.Is(err, fsm.ErrOpenTransaction),
		errors.Is(err, fsm.ErrNoTransaction), errors.Is(err, fsm.ErrStaleSequence),
		errors.Is(err, fsm.ErrTxStatementMode), errors.Is(err, fsm.ErrNoOpenTx):
		return wire.CodeError, strings.TrimPrefix(err.Error(), "fsm: ")
	}
	return wire.CodeLeaderExec, err.Error()
}

// weightFile holds the node's weight (WEIGHT), in its data directory.
const weightFile = "weight"

// SetWeight records the node's weight (used by role management) durably.
func (n *Node) SetWeight(w uint64) error {
	path := filepath.Join(n.cfg.Dir, weightFile)
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	_, err = f.WriteString(strconv.FormatUint(w, 10))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("node: saving weight: %w", err)
	}
	n.weight.Store(w)
	return nil
}

func (n *Node) loadWeight() error {
	b, err := os.ReadFile(filepath.Join(n.cfg.Dir, weightFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	w, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return fmt.Errorf("node: weight file: %w", err)
	}
	n.weight.Store(w)
	return nil
}

// wireReadOptions is the read level a query asked for (SchemaRead).
func wireReadOptions(w *wire.Write) loop.ReadOptions {
	switch w.ReadLevel {
	case wire.ReadAny:
		return loop.ReadOptions{Level: loop.ReadLinearizable}
	case wire.ReadStale:
		return loop.ReadOptions{Level: loop.ReadStale, MaxStaleness: w.MaxStaleness}
	}
	return loop.ReadOptions{Level: loop.ReadLeader}
}
