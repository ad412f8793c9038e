package sim

import (
	"fmt"
	"hash/fnv"
	"sync/atomic"
	"time"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/vfs"
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

// openSQL gives a (re)starting node a fresh in-memory SQLite: what a real
// node rebuilds from its snapshot and log after a restart.
func (s *Sim) openSQL(n *node) error {
	s.closeSQL(n)
	v, err := vfs.New(fmt.Sprintf("sim-%d-%d", simVFSSeq.Add(1), n.id), s.opts.Seed, false)
	if err != nil {
		return err
	}
	v.SetTime(simClock + s.now.Milliseconds())
	db, err := fsm.Open(v, "db", 4096, fsm.ModeFrames)
	if err != nil {
		v.Close()
		return err
	}
	n.vfs, n.db = v, db
	return nil
}

func (s *Sim) closeSQL(n *node) {
	if n.db != nil {
		n.db.Close()
		n.db = nil
	}
	if n.vfs != nil {
		n.vfs.Close()
		n.vfs = nil
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

func (s *Sim) sqlGet(n *node, req uint64, key string) {
	db := n.db
	s.take(n, n.loop.Read(req, func() (any, error) {
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

// bankStep is the bank client: it alternates transfers and total checks.
func (s *Sim) bankStep(c *client) {
	if !s.clientsOn || c.pending != nil {
		return
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
	p := &pendingOp{req: s.nextReq, call: s.now}
	c.pending = p
	s.reqOwner[p.req] = c
	s.after(clientTimeout, &event{kind: evClient, fn: func() { s.bankDone(c, p) }})
	c.n++
	if !s.schemaDone {
		s.take(n, n.loop.SubmitWrite(loop.WriteRequest{ID: p.req, Batch: &fsm.BatchItem{SQL: schemaSQL}}))
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
	if r.Err == nil {
		if !s.schemaDone && c.n == 1 {
			s.schemaDone = true
		}
		if rows, ok := r.Result.([][]any); ok && len(rows) == 1 {
			count, total := rows[0][0], rows[0][1]
			if count == int64(bankAccounts) {
				s.count("bank-check")
				if total != int64(bankAccounts*bankInitial) {
					s.violate("bank: total is %v, not %d (read on node %d)", total, bankAccounts*bankInitial, n.id)
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

func (s *Sim) bankDone(c *client, p *pendingOp) {
	if c.pending != p {
		return
	}
	delete(s.reqOwner, p.req)
	c.pending = nil
	s.after(s.randDuration(time.Millisecond, 20*time.Millisecond), &event{kind: evClient, fn: func() { s.bankStep(c) }})
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
	return h.Sum64(), nil
}
