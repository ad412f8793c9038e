package fsm_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/vfs"
)

// store is a raft.MemoryStorage with the loop's write methods.
type store struct{ *raft.MemoryStorage }

func (s store) SetHardState(hs raft.HardState) error   { s.MemoryStorage.SetHardState(hs); return nil }
func (s store) InstallSnapshot(sn raft.Snapshot) error { return s.ApplySnapshot(sn) }
func (s store) Append(e []raft.Entry) error            { return s.MemoryStorage.Append(e) }

var vfsSeq atomic.Int64

type node struct {
	id   raft.NodeID
	v    *vfs.VFS
	db   *fsm.DB
	s    store
	l    *loop.Loop
	down bool // messages to and from it are dropped
}

// cluster runs SQLite nodes in one goroutine; messages are delivered and
// writes completed synchronously by run.
type cluster struct {
	t       *testing.T
	nodes   []*node
	msgs    []raft.Message
	writes  map[raft.NodeID]*loop.WriteJob
	replies map[uint64]loop.Reply
	nextID  uint64
	// drop, when set, drops the messages it returns true for.
	drop func(m raft.Message) bool
}

func newCluster(t *testing.T, n int, mode fsm.Mode, snapEvery uint64) *cluster {
	return newClusterWith(t, n, mode, snapEvery, nil)
}

// newClusterWith is newCluster with each loop's configuration adjusted by
// opts (when not nil).
func newClusterWith(t *testing.T, n int, mode fsm.Mode, snapEvery uint64, opts func(*loop.Config)) *cluster {
	c := &cluster{t: t, writes: map[raft.NodeID]*loop.WriteJob{}, replies: map[uint64]loop.Reply{}}
	var m raft.Membership
	for i := 1; i <= n; i++ {
		m.Servers = append(m.Servers, raft.Server{ID: raft.NodeID(i), Role: raft.Voter})
	}
	for i := 1; i <= n; i++ {
		db, err := openMode(fmt.Sprintf("cluster-%d", vfsSeq.Add(1)), uint64(i), mode)
		if err != nil {
			t.Fatal(err)
		}
		v := db.VFS()
		v.SetTime(int64(1_700_000_000_000 + i*3_600_000)) // every node's clock differs
		s := store{raft.NewMemoryStorage()}
		if err := s.MemoryStorage.Append([]raft.Entry{raft.BootstrapEntry(m)}); err != nil {
			t.Fatal(err)
		}
		s.MemoryStorage.SetHardState(raft.HardState{Term: 1})
		lc := loop.Config{Raft: raft.Config{ID: raft.NodeID(i), ElectionTicks: 10, HeartbeatTicks: 1,
			MaxMsgBytes: 64 << 20, MaxSnapshotChunkBytes: 8192}, Storage: s, FSM: db,
			Rand: rand.New(rand.NewPCG(uint64(i), 1)), SnapshotThreshold: snapEvery, RequestTimeoutTicks: 1000,
			Batcher: db}
		if opts != nil {
			opts(&lc)
		}
		l, err := loop.New(lc)
		if err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, &node{id: raft.NodeID(i), v: v, db: db, s: s, l: l})
		t.Cleanup(func() { db.Close() })
	}
	return c
}

func (c *cluster) node(id raft.NodeID) *node { return c.nodes[id-1] }

func (c *cluster) take(n *node, out loop.Output) {
	c.msgs = append(c.msgs, out.Messages...)
	if out.Write != nil {
		c.writes[n.id] = out.Write
	}
	for _, r := range out.Replies {
		c.replies[r.ID] = r
	}
}

func (c *cluster) run() {
	for i := 0; i < 100000; i++ {
		moved := false
		for _, n := range c.nodes {
			if job := c.writes[n.id]; job != nil {
				delete(c.writes, n.id)
				c.take(n, n.l.WriteDone(job, n.s.Append(job.Entries)))
				moved = true
			}
		}
		msgs := c.msgs
		c.msgs = nil
		for _, m := range msgs {
			if c.node(m.To).down || c.node(m.From).down || (c.drop != nil && c.drop(m)) {
				continue
			}
			out, err := c.node(m.To).l.Step(m)
			if err != nil {
				c.t.Fatal(err)
			}
			c.take(c.node(m.To), out)
			moved = true
		}
		if !moved {
			return
		}
	}
	c.t.Fatal("cluster did not settle")
}

func (c *cluster) tick(n int) {
	for i := 0; i < n; i++ {
		for _, nd := range c.nodes {
			c.take(nd, nd.l.Tick())
		}
		c.run()
	}
}

func (c *cluster) leader() *node {
	for _, n := range c.nodes {
		if !n.down && n.l.Raft().Basic().State == raft.StateLeader {
			return n
		}
	}
	return nil
}

func (c *cluster) elect() *node {
	for i := 0; i < 200 && c.leader() == nil; i++ {
		c.tick(1)
	}
	c.tick(2)
	if c.leader() == nil {
		c.t.Fatal("no leader")
	}
	return c.leader()
}

// electOther ticks until a node other than old leads (old is cut off).
func (c *cluster) electOther(old *node) *node {
	c.t.Helper()
	for i := 0; i < 200; i++ {
		c.tick(1)
		for _, n := range c.nodes {
			if n != old && n.l.Raft().Basic().State == raft.StateLeader {
				return n
			}
		}
	}
	c.t.Fatal("no new leader")
	return nil
}

// exec submits a write to the leader and returns its request id.
func (c *cluster) exec(n *node, sql string) uint64 {
	c.nextID++
	id := c.nextID
	db := n.db
	c.take(n, n.l.SubmitWrite(loop.WriteRequest{ID: id,
		Execute: func() ([]byte, any, error) {
			cmd, res, err := db.Execute(0, 0, sql, nil)
			return cmd, res, err
		},
		Proposed: db.Proposed,
		Abort:    db.Abort,
	}))
	return id
}

func (c *cluster) mustExec(n *node, sql string) fsm.Result {
	id := c.exec(n, sql)
	c.run()
	r, ok := c.replies[id]
	if !ok || r.Err != nil {
		c.t.Fatalf("%s: %+v (replied %v)", sql, r, ok)
	}
	res, _ := r.Result.(fsm.Result)
	return res
}

func query(t *testing.T, n *node, sql string) [][]any {
	t.Helper()
	rows, err := n.db.Conn().Query(sql)
	if err != nil {
		t.Fatalf("node %d: %s: %v", n.id, sql, err)
	}
	return rows
}

const nonDeterministic = "INSERT INTO t VALUES (random(), datetime('now'), randomblob(16))"

// TestFramesGiveIdenticalReplicas runs non-deterministic inserts through
// the cluster in frame mode: every replica holds the same rows.
func TestFramesGiveIdenticalReplicas(t *testing.T) {
	c := newCluster(t, 3, fsm.ModeFrames, 0)
	l := c.elect()
	c.mustExec(l, "CREATE TABLE t (a, b, c)")
	for i := 0; i < 100; i++ {
		if res := c.mustExec(l, nonDeterministic); res.LastInsertID != int64(i+1) || res.RowsAffected != 1 {
			t.Fatalf("insert %d: %+v", i, res)
		}
	}
	c.tick(3)
	want := query(t, l, "SELECT * FROM t ORDER BY rowid")
	if len(want) != 100 {
		t.Fatalf("leader has %d rows", len(want))
	}
	for _, n := range c.nodes {
		if got := query(t, n, "SELECT * FROM t ORDER BY rowid"); !reflect.DeepEqual(got, want) {
			t.Fatalf("node %d differs from the leader", n.id)
		}
	}
}

// TestStatementsDiverge runs the same inserts in statement mode: each node
// evaluates random() and its own clock, so the replicas differ. This is why
// frames are replicated.
func TestStatementsDiverge(t *testing.T) {
	c := newCluster(t, 3, fsm.ModeStatements, 0)
	l := c.elect()
	c.mustExec(l, "CREATE TABLE t (a, b, c)")
	for i := 0; i < 100; i++ {
		c.mustExec(l, nonDeterministic)
	}
	c.tick(3)
	a := query(t, c.nodes[0], "SELECT * FROM t ORDER BY rowid")
	b := query(t, c.nodes[1], "SELECT * FROM t ORDER BY rowid")
	if len(a) != 100 || len(b) != 100 {
		t.Fatalf("row counts %d %d", len(a), len(b))
	}
	if reflect.DeepEqual(a, b) {
		t.Fatal("statement replication gave identical replicas for non-deterministic SQL")
	}
}

// TestHeldTransactionInvisibleThenAborted cuts the followers off: the
// leader's captured write is invisible to another connection on the leader;
// when leadership is lost and another leader commits, the write fails with
// leadership-lost and no node ever shows it.
func TestHeldTransactionInvisibleThenAborted(t *testing.T) {
	c := newCluster(t, 3, fsm.ModeFrames, 0)
	l := c.elect()
	c.mustExec(l, "CREATE TABLE t (x)")
	c.tick(2)
	for _, n := range c.nodes {
		n.down = n != l
	}
	id := c.exec(l, "INSERT INTO t VALUES (42)")
	c.run()
	if _, done := c.replies[id]; done {
		t.Fatal("write answered without a quorum")
	}
	other, err := l.v.Open("db", 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if rows, _ := other.Query("SELECT count(*) FROM t"); rows[0][0] != int64(0) {
		t.Fatalf("held write visible to another connection: %v", rows)
	}
	// The majority elects a new leader and commits something else; the
	// old leader steps down (check-quorum), then rejoins.
	l.down = true
	for _, n := range c.nodes {
		if n != l {
			n.down = false
		}
	}
	nl := c.electOther(l)
	c.tick(2)
	c.mustExec(nl, "INSERT INTO t VALUES (7)")
	l.down = false
	c.tick(30)
	r, ok := c.replies[id]
	if !ok || !errors.Is(r.Err, loop.ErrLeadershipLost) {
		t.Fatalf("held write's reply: %+v %v", r, ok)
	}
	for _, n := range c.nodes {
		if rows := query(t, n, "SELECT x FROM t"); !reflect.DeepEqual(rows, [][]any{{int64(7)}}) {
			t.Fatalf("node %d shows %v", n.id, rows)
		}
	}
}

// TestSnapshotCatchUpAndRestart lets a node fall behind past the leader's
// compacted log: it receives the database image, catches up and matches.
func TestSnapshotCatchUp(t *testing.T) {
	c := newCluster(t, 3, fsm.ModeFrames, 10)
	l := c.elect()
	lag := c.nodes[0]
	if lag == l {
		lag = c.nodes[1]
	}
	c.mustExec(l, "CREATE TABLE t (x)")
	lag.down = true
	for i := 0; i < 40; i++ {
		c.mustExec(l, fmt.Sprintf("INSERT INTO t VALUES (%d)", i))
	}
	c.tick(3) // the compaction waits for the ticks' checkpoints (CheckpointSoon)
	c.mustExec(l, "INSERT INTO t VALUES (40)")
	if l.s.Snapshot().Index == 0 {
		t.Fatal("leader took no snapshot")
	}
	lag.down = false
	c.tick(10)
	if lag.s.Snapshot().Index == 0 {
		t.Fatal("lagging node did not get a snapshot")
	}
	want := query(t, l, "SELECT count(*), sum(x) FROM t")
	if got := query(t, lag, "SELECT count(*), sum(x) FROM t"); !reflect.DeepEqual(got, want) {
		t.Fatalf("lagging node %v, leader %v", got, want)
	}
}

// TestBatchedWritesGroupCommit submits several writes at once: they run as
// one transaction and one entry, a failing one is rolled back alone and gets
// its error, and every replica ends the same.
func TestBatchedWritesGroupCommit(t *testing.T) {
	c := newCluster(t, 3, fsm.ModeFrames, 0)
	l := c.elect()
	c.mustExec(l, "CREATE TABLE t (x INTEGER PRIMARY KEY)")
	before := l.l.Raft().Basic().LastIndex
	var ids []uint64
	for _, sql := range []string{"INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"} {
		c.nextID++
		ids = append(ids, c.nextID)
		c.take(l, l.l.SubmitWrite(loop.WriteRequest{ID: c.nextID, Batch: &fsm.BatchItem{SQL: sql}}))
	}
	c.run()
	c.tick(2)
	if r := c.replies[ids[1]]; r.Err == nil || !strings.Contains(r.Err.Error(), "UNIQUE") {
		t.Fatalf("duplicate key in a batch: %+v", r)
	}
	for _, id := range []uint64{ids[0], ids[2]} {
		if r := c.replies[id]; r.Err != nil {
			t.Fatalf("write %d: %v", id, r.Err)
		}
	}
	// The first write ran alone (the slot was free); the other two were
	// queued behind it and merged: two entries, not three.
	if got := l.l.Raft().Basic().LastIndex - before; got != 2 {
		t.Fatalf("%d entries for 3 writes", got)
	}
	for _, n := range c.nodes {
		if rows := query(t, n, "SELECT x FROM t ORDER BY x"); !reflect.DeepEqual(rows, [][]any{{int64(1)}, {int64(2)}}) {
			t.Fatalf("node %d: %v", n.id, rows)
		}
	}
}

// TestLocalCheckpointsBoundTheWAL writes far more frames than the
// checkpoint threshold (and no snapshot is taken), with a tick after each
// write: every node checkpoints on its own at its ticks, so no WAL grows
// past the threshold much, and every replica ends with the same rows.
func TestLocalCheckpointsBoundTheWAL(t *testing.T) {
	c := newCluster(t, 3, fsm.ModeFrames, 0)
	l := c.elect()
	c.mustExec(l, "CREATE TABLE t (x)")
	limit := int64(1000+4) * (4096 + 24)
	var peak int64
	for i := 0; i < 1500; i++ {
		c.mustExec(l, "INSERT INTO t VALUES (randomblob(1000))")
		c.tick(1)
		for _, n := range c.nodes {
			peak = max(peak, n.db.WALSize())
		}
	}
	c.tick(3)
	if peak > limit {
		t.Fatalf("a WAL reached %d bytes, past the checkpoint threshold (%d)", peak, limit)
	}
	want := query(t, l, "SELECT count(*), sum(length(x)), hex(max(x)) FROM t")
	for _, n := range c.nodes {
		if got := query(t, n, "SELECT count(*), sum(length(x)), hex(max(x)) FROM t"); !reflect.DeepEqual(got, want) {
			t.Fatalf("node %d: %v, leader %v", n.id, got, want)
		}
	}
}
