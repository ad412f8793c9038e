package sim

import (
	"fmt"
	"hash/fnv"
	"sync/atomic"
	"time"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/sqltext"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
)

// SQLite mode: every node runs the real replicated SQLite state machine
// (fsm.DB over its own in-memory VFS instance) instead of the key-value map.
// Clients write through the leader's writer slot (with group commit) and read
// through ReadIndex; a bank workload moves money between accounts whose
// total must never change.

const (
	bankAccounts = 5
	bankInitial  = 100
	// simClock is the Unix time (ms) the simulated clock starts at.
	simClock = 1_700_000_000_000
)

const schemaSQL = `CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS bank (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);
INSERT OR IGNORE INTO bank (id, bal) VALUES (0, 100), (1, 100), (2, 100), (3, 100), (4, 100);`

var simVFSSeq atomic.Uint64

// sqlHook wraps a node's fsm.DB to feed the state machine safety oracle.
type sqlHook struct {
	s *Sim
	n *node
}

func (h sqlHook) Apply(e raft.Entry) (any, error) {
	h.s.checkApply(h.n.id, e)
	return h.n.db.Apply(e)
}
func (h sqlHook) Snapshot() ([]byte, error) { return h.n.db.Snapshot() }
func (h sqlHook) Restore(data []byte) error { return h.n.db.Restore(data) }
func (h sqlHook) RestoreAt(index uint64, data []byte) error {
	return h.n.db.RestoreAt(index, data)
}
func (h sqlHook) Covers(index uint64) bool {
	ok := h.n.db.Covers(index)
	if ok && index > 0 {
		h.s.count("restart-from-files")
	}
	return ok
}
func (h sqlHook) AppliedTo(index uint64) { h.n.db.AppliedTo(index) }

// The streamed snapshots (loop.StreamingStateMachine).
func (h sqlHook) Streams() bool        { return h.n.db.Streams() }
func (h sqlHook) DurableIndex() uint64 { return h.n.db.DurableIndex() }
func (h sqlHook) Marker() []byte       { return h.n.db.Marker() }
func (h sqlHook) OpenView() (uint64, error) {
	before, _ := h.n.db.StreamStats()
	idx, err := h.n.db.OpenView()
	if err != nil {
		h.s.count("snapshot-view-later")
	}
	if after, _ := h.n.db.StreamStats(); after > before {
		h.s.count("snapshot-view-opened")
	}
	return idx, err
}
func (h sqlHook) ReadView(index, offset uint64, maxBytes int) ([]byte, bool, error) {
	return h.n.db.ReadView(index, offset, maxBytes)
}
func (h sqlHook) CloseView()               { h.n.db.CloseView() }
func (h sqlHook) ViewOpen() (uint64, bool) { return h.n.db.ViewOpen() }
func (h sqlHook) InstallReceived(index uint64) error {
	err := h.n.db.InstallReceived(index)
	if err == nil {
		h.s.count("snapshot-stream-installed")
	}
	return err
}
func (h sqlHook) WriteSnapshotChunk(meta raft.SnapshotMeta, offset uint64, data []byte, done bool) error {
	return h.n.db.WriteSnapshotChunk(meta, offset, data, done)
}
func (h sqlHook) AbortSnapshot() { h.n.db.AbortSnapshot() }

// openSQL opens a (re)starting node's databases from its disk, as a real
// node does: the files hold the state up to their recorded index, and the
// loop replays the log after it.
func (s *Sim) openSQL(n *node) error {
	s.closeSQL(n)
	mode := fsm.ModeFrames
	if s.opts.Statements {
		mode = fsm.ModeStatements
	}
	db, err := fsm.OpenFiles(n.fs, fmt.Sprintf("sim-%d-%d", simVFSSeq.Add(1), n.id), s.opts.Seed, "db", 4096, mode)
	if err != nil {
		return err
	}
	db.VFS().SetTime(simClock + s.now.Milliseconds())
	// The simulated workloads write a few pages per entry: a low
	// threshold makes the loop's tick checkpoint them (with its record
	// of the file's index), as a real node's 1000 frames do.
	db.SetCheckpointFrames(simCheckpointFrames)
	n.vfs, n.db = db.VFS(), db
	return nil
}

// simCheckpointFrames is the simulated nodes' checkpoint threshold.
const simCheckpointFrames = 8

func (s *Sim) closeSQL(n *node) {
	if n.db != nil {
		n.db.Close() // and its VFS
		n.db, n.vfs = nil, nil
	}
}

// sqlPut and sqlGet submit a client's key-value operation.
func (s *Sim) sqlPut(n *node, req uint64, key, value string) {
	s.sqlWrite(n, req, "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", key, value)
}

func (s *Sim) sqlWrite(n *node, req uint64, sql, key, value string) {
	n.vfs.SetTime(simClock + s.now.Milliseconds())
	s.take(n, n.loop.SubmitWrite(loop.WriteRequest{ID: req, Batch: &fsm.BatchItem{
		SQL:    sql,
		Params: []fsm.Value{{Type: fsm.TypeText, Text: key}, {Type: fsm.TypeText, Text: value}}}}))
}

func (s *Sim) sqlGet(n *node, req uint64, key string, ro loop.ReadOptions) {
	db := n.db
	s.take(n, n.loop.ReadWith(req, 0, ro, func() (any, error) {
		rows, err := db.Conn().Query("SELECT v FROM kv WHERE k = ?", key)
		if err != nil {
			return nil, err
		}
		if len(rows) == 0 {
			return "", nil
		}
		v, _ := rows[0][0].(string)
		return v, nil
	}))
}

// bankTx is a transfer in a transaction spanning requests: BEGIN, read
// both balances, write back values the client computed, COMMIT (or
// ROLLBACK when the balance is short). A lost update or a non-serializable
// interleaving would change the bank's total.
type bankTx struct {
	node       raft.NodeID
	session    uint64
	step       int // the request in flight: txBegin, txRead, txWrite, txEnd
	a, b       int
	amt        int64
	balA, balB int64
	rollback   bool
}

const (
	txBegin = iota
	txRead
	txWrite
	txEnd
)

// txRequest submits a request of a transaction spanning requests.
func (s *Sim) txRequest(n *node, req, session uint64, sql string, params ...fsm.Value) {
	db := n.db
	ctl := sqltext.LoneTxControl(sql)
	n.vfs.SetTime(simClock + s.now.Milliseconds())
	s.take(n, n.loop.SubmitWrite(loop.WriteRequest{ID: req, Tx: session,
		ExecuteTx: func() ([]byte, any, bool, error) { return db.ExecuteTx("", sql, params, false) },
		Proposed:  db.Proposed, Abort: db.Abort,
		EndsTx: ctl == "COMMIT" || ctl == "ROLLBACK", Rollback: ctl == "ROLLBACK"}))
}

// bankTxStep sends the transaction's next request.
func (s *Sim) bankTxStep(n *node, c *client, req uint64) {
	t := c.tx
	integer := func(v int64) fsm.Value { return fsm.Value{Type: fsm.TypeInteger, Int: v} }
	switch t.step {
	case txBegin:
		s.txRequest(n, req, t.session, "BEGIN")
	case txRead:
		db, l, session := n.db, n.loop, t.session
		s.take(n, n.loop.ReadIn(req, session, func() (any, error) {
			if !l.TxOpen(session) {
				return nil, fsm.ErrNoOpenTx
			}
			return db.Conn().Query("SELECT id, bal FROM bank WHERE id IN (?, ?) ORDER BY id = ?", t.a, t.b, t.b)
		}))
	case txWrite:
		s.txRequest(n, req, t.session, "UPDATE bank SET bal = ? WHERE id = ?; UPDATE bank SET bal = ? WHERE id = ?",
			integer(t.balA-t.amt), integer(int64(t.a)), integer(t.balB+t.amt), integer(int64(t.b)))
	case txEnd:
		if t.rollback {
			s.txRequest(n, req, t.session, "ROLLBACK")
		} else {
			s.txRequest(n, req, t.session, "COMMIT")
		}
	}
}

// bankTxReply advances the transaction with its request's reply; the
// client's tx is nil once it ended (committed, rolled back or given up).
func (s *Sim) bankTxReply(n *node, c *client, r loop.Reply) {
	t := c.tx
	if r.Err != nil {
		s.abandonTx(c)
		return
	}
	switch t.step {
	case txRead:
		rows, ok := r.Result.([][]any)
		if !ok || len(rows) != 2 {
			s.violate("bank", "a transaction read %v for accounts %d and %d", r.Result, t.a, t.b)
			s.abandonTx(c)
			return
		}
		t.balA, t.balB = rows[0][1].(int64), rows[1][1].(int64)
		if t.balA < t.amt {
			t.rollback = true
			t.step = txEnd
			return
		}
	case txEnd:
		if !t.rollback {
			s.count("bank-tx-commit")
		}
		c.tx = nil
		return
	}
	t.step++
}

// abandonTx gives up the client's transaction; its session ends (as when a
// connection closes), which rolls it back if it is still open.
func (s *Sim) abandonTx(c *client) {
	t := c.tx
	c.tx = nil
	if n := s.nodes[t.node]; n != nil && n.up && !n.paused && n.loop != nil {
		s.take(n, n.loop.EndSession(t.session))
	}
}

// bankStep is the bank client: it alternates transfers (single requests, or
// transactions spanning requests) and total checks.
func (s *Sim) bankStep(c *client) {
	if !s.clientsOn || c.pending != nil {
		return
	}
	if c.tx != nil {
		n := s.nodes[c.tx.node]
		if n == nil || !n.up || n.removed || n.paused {
			s.abandonTx(c)
		}
	}
	n := s.nodes[c.target]
	if n == nil || !n.up || n.removed || n.paused {
		n = s.pickLive()
		if n == nil {
			s.after(20*time.Millisecond, &event{kind: evClient, fn: func() { s.bankStep(c) }})
			return
		}
		c.target = n.id
	}
	s.nextReq++
	p := &pendingOp{req: s.nextReq, call: s.now, node: n.id}
	c.pending = p
	s.reqOwner[p.req] = c
	s.after(clientTimeout, &event{kind: evClient, fn: func() {
		if c.pending == p && c.tx != nil {
			s.abandonTx(c) // timed out inside the transaction: give it up
		}
		s.bankDone(c, p)
	}})
	c.n++
	if !s.schemaDone {
		s.take(n, n.loop.SubmitWrite(loop.WriteRequest{ID: p.req, Batch: &fsm.BatchItem{SQL: schemaSQL}}))
		return
	}
	if c.tx == nil && c.n%6 == 0 {
		a, b := s.rng.IntN(bankAccounts), s.rng.IntN(bankAccounts-1)
		if b >= a {
			b++
		}
		s.nextSession++
		c.tx = &bankTx{node: n.id, session: s.nextSession, a: a, b: b, amt: int64(1 + s.rng.IntN(20))}
	}
	if c.tx != nil {
		s.bankTxStep(s.nodes[c.tx.node], c, p.req)
		return
	}
	if c.n%2 == 0 {
		a, b := s.rng.IntN(bankAccounts), s.rng.IntN(bankAccounts)
		amt := int64(1 + s.rng.IntN(20))
		s.take(n, n.loop.SubmitWrite(loop.WriteRequest{ID: p.req, Batch: &fsm.BatchItem{
			SQL: "UPDATE bank SET bal = bal - ? WHERE id = ?; UPDATE bank SET bal = bal + ? WHERE id = ?",
			Params: []fsm.Value{{Type: fsm.TypeInteger, Int: amt}, {Type: fsm.TypeInteger, Int: int64(a)},
				{Type: fsm.TypeInteger, Int: amt}, {Type: fsm.TypeInteger, Int: int64(b)}}}}))
		return
	}
	db := n.db
	s.take(n, n.loop.Read(p.req, func() (any, error) {
		return db.Conn().Query("SELECT count(*), coalesce(sum(bal), 0) FROM bank")
	}))
}

// bankReply handles the answer to a bank client's request.
func (s *Sim) bankReply(n *node, c *client, r loop.Reply) {
	p := c.pending
	if c.tx != nil && n.id == c.tx.node {
		s.bankTxReply(n, c, r)
		if r.Err != nil {
			c.target = n.loop.Raft().Basic().Lead
		}
		s.bankDone(c, p)
		return
	}
	if r.Err == nil {
		if !s.schemaDone && c.n == 1 {
			s.schemaDone = true
		}
		if rows, ok := r.Result.([][]any); ok && len(rows) == 1 {
			count, total := rows[0][0], rows[0][1]
			if count == int64(bankAccounts) {
				s.count("bank-check")
				if total != int64(bankAccounts*bankInitial) {
					s.violate("bank", "total is %v, not %d (read on node %d)", total, bankAccounts*bankInitial, n.id)
				}
			}
		}
	} else {
		// Try the leader this node knows, or another node.
		c.target = n.loop.Raft().Basic().Lead
	}
	if !s.schemaDone && r.Err == nil {
		s.schemaDone = true
	}
	s.bankDone(c, p)
}

func (s *Sim) bankDone(c *client, p *pendingOp) { s.opDone(c, p, s.bankStep) }

// opDone ends a client's request p (if it is still the one pending) and
// schedules the client's next step.
func (s *Sim) opDone(c *client, p *pendingOp, next func(*client)) {
	if c.pending != p {
		return
	}
	delete(s.reqOwner, p.req)
	c.pending = nil
	s.after(s.randDuration(time.Millisecond, 20*time.Millisecond), &event{kind: evClient, fn: func() { next(c) }})
}

// sqlState hashes a node's tables, for convergence.
func sqlState(n *node) (uint64, error) {
	h := fnv.New64a()
	for _, q := range []string{"SELECT k, v FROM kv ORDER BY k", "SELECT id, bal FROM bank ORDER BY id"} {
		rows, err := n.db.Conn().Query(q)
		if err != nil {
			return 0, err
		}
		fmt.Fprint(h, rows)
	}
	// The counter's database, which a node lacks until an increment
	// reached it (and may hold without the table only if the increment
	// failed: then the table's absence is the state).
	fmt.Fprint(h, n.db.Names())
	if c := n.db.ConnOf(counterDB); c != nil {
		rows, err := c.Query("SELECT name FROM sqlite_master WHERE name = 'counter'")
		if err != nil {
			return 0, err
		}
		if len(rows) > 0 {
			if rows, err = c.Query("SELECT id, n FROM counter"); err != nil {
				return 0, err
			}
		}
		fmt.Fprint(h, rows)
	}
	return h.Sum64(), nil
}

func (h sqlHook) ReplayBound() uint64 { return h.n.db.ReplayBound() }
func (h sqlHook) FinishReplay() error { return h.n.db.FinishReplay() }
func (h sqlHook) Maintain() error     { return h.n.db.Maintain() }
func (h sqlHook) CheckpointSoon()     { h.n.db.CheckpointSoon() }
func (h sqlHook) Checkpoints() uint64 { return h.n.db.Checkpoints() }
func (h sqlHook) RunHeldCheckpoints() (bool, error) {
	return h.n.db.RunHeldCheckpoints()
}

var _ loop.StreamingStateMachine = sqlHook{}
