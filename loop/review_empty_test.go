package loop

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/faultfs"
	"github.com/dqlite-go/dqlite/raft"
)

var reviewVFSSeq atomic.Uint64

// reviewNode is one streaming node: a loop over fsm.OpenFiles on a faultfs
// disk and a memory log, driven by hand.
type reviewNode struct {
	t     *testing.T
	disk  *faultfs.Disk
	store *memStorage
	db    *fsm.DB
	l     *Loop
}

func (n *reviewNode) start(thresh uint64) error {
	db, err := fsm.OpenFiles(n.disk, fmt.Sprintf("review-%d", reviewVFSSeq.Add(1)), 1, "db", 4096, fsm.ModeFrames)
	if err != nil {
		return err
	}
	n.db = db
	l, err := New(Config{Raft: raft.Config{ID: 1, ElectionTicks: 10, HeartbeatTicks: 1},
		Storage: n.store, FSM: db, Rand: rand.New(rand.NewPCG(1, 7)), SnapshotThreshold: thresh, RequestTimeoutTicks: 50})
	if err != nil {
		db.Close()
		n.db = nil
		return err
	}
	n.l = l
	return nil
}

// newReviewNode is a single-voter node's bootstrapped memory log and a
// fresh disk (start opens the node on them).
func newReviewNode(t *testing.T) (*reviewNode, *memStorage) {
	var m raft.Membership
	m.Servers = append(m.Servers, raft.Server{ID: 1, Role: raft.Voter})
	s := &memStorage{MemoryStorage: raft.NewMemoryStorage()}
	if err := s.MemoryStorage.Append([]raft.Entry{raft.BootstrapEntry(m)}); err != nil {
		t.Fatal(err)
	}
	s.MemoryStorage.SetHardState(raft.HardState{Term: 1})
	return &reviewNode{t: t, disk: faultfs.NewDisk(3), store: s}, s
}

// elect ticks the single-voter node until it leads (bounded).
func (n *reviewNode) elect() {
	for i := 0; i < 40 && n.l.Raft().Status().State != raft.StateLeader; i++ {
		n.take(n.l.Tick())
	}
}

func (n *reviewNode) take(out Output) {
	for out.Write != nil {
		job := out.Write
		out = n.l.WriteDone(job, n.store.Append(job.Entries))
	}
}

// TestReviewRestartAfterCompactionWithoutDatabases: a node whose log was
// compacted while no database had been written (only the leader's no-op
// and configuration entries) records an empty file set and a snapshot
// whose data is the marker. On restart Covers reports false for an empty
// record, so the loop "restores" the marker as if it were a v02 image,
// which fails: the node cannot start again.
func TestReviewRestartAfterCompactionWithoutDatabases(t *testing.T) {
	n, s := newReviewNode(t)
	if err := n.start(1); err != nil {
		t.Fatal(err)
	}
	n.elect()
	if n.l.Raft().Status().State != raft.StateLeader {
		t.Fatal("no leader")
	}
	for i := 0; i < 5; i++ {
		n.take(n.l.Tick())
	}
	snap := s.Snapshot()
	t.Logf("log snapshot at %d (data %q), durable index %d", snap.Index, mustSnapData(t, s, snap.Index), n.db.DurableIndex())
	if snap.Index == 0 {
		t.Skip("no compaction happened")
	}
	// Clean restart (no crash even).
	n.db.Close()
	n.db, n.l = nil, nil
	if err := n.start(1); err != nil {
		t.Fatalf("restart after a compaction with no database written fails: %v", err)
	}
	n.db.Close()
}

func mustSnapData(t *testing.T, s *memStorage, index uint64) string {
	data, _, err := s.SnapshotChunk(index, 0, 1<<20)
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	return string(data)
}

// scratch is an in-memory frames-mode DB that makes frames commands (as a
// leader would capture them) for the node under test to apply.
type scratch struct {
	t   *testing.T
	db  *fsm.DB
	idx uint64
}

func newScratch(t *testing.T) *scratch {
	db, err := fsm.OpenFiles(faultfs.NewDisk(1), fmt.Sprintf("review-scratch-%d", reviewVFSSeq.Add(1)), 1, "db", 4096, fsm.ModeFrames)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &scratch{t: t, db: db}
}

func (s *scratch) cmd(database, sql string) []byte {
	s.t.Helper()
	cmd, _, errs := s.db.ExecuteBatch([]any{&fsm.BatchItem{Database: database, SQL: sql}})
	if errs[0] != nil {
		s.t.Fatal(errs[0])
	}
	s.idx++
	e := raft.Entry{Index: s.idx, Term: 1, Data: cmd}
	s.db.Proposed(e.Index, e.Term)
	if _, err := s.db.Apply(e); err != nil {
		s.t.Fatal(err)
	}
	return cmd
}

// TestReviewRestartWithUncheckpointedNewDatabase: the log was compacted
// (snapshot S, marker data) while the node had one database. Then entries
// create a second database "z"; a checkpoint of the first writes the
// record, which names z at F = 0 (a new file whose WAL is not empty).
// Here a query open on z keeps the compaction's CheckpointAll from
// checkpointing z (a crash between the two checkpoints, or a failed one,
// does the same). On restart Covers(S) is false (z's F < S), so the loop
// restores the marker as an image and the node cannot start.
func TestReviewRestartWithUncheckpointedNewDatabase(t *testing.T) {
	n, s := newReviewNode(t)
	const thresh = 10
	if err := n.start(thresh); err != nil {
		t.Fatal(err)
	}
	n.elect()
	sc := newScratch(t)
	id := uint64(0)
	propose := func(database, sql string) {
		id++
		n.take(n.l.Propose(id, sc.cmd(database, sql)))
	}
	propose("db", "CREATE TABLE t(x)")
	for i := 0; i < 2*thresh; i++ {
		propose("db", fmt.Sprintf("INSERT INTO t VALUES (%d)", i))
	}
	// The compaction waits for the ticks' checkpoints (CheckpointSoon),
	// then the next apply compacts.
	n.take(n.l.Tick())
	n.take(n.l.Tick())
	propose("db", "INSERT INTO t VALUES (-1)")
	snap := s.Snapshot().Index
	if snap == 0 {
		t.Fatal("no compaction")
	}
	propose("z", "CREATE TABLE u(a)")
	propose("z", "INSERT INTO u VALUES (1)")
	cur, err := n.db.OpenCursor("z", "SELECT a FROM u")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cur.Step(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < thresh; i++ { // the next compaction checkpoints db, not z
		propose("db", fmt.Sprintf("INSERT INTO t VALUES (%d)", 100+i))
	}
	n.take(n.l.Tick())
	n.take(n.l.Tick())
	propose("db", "INSERT INTO t VALUES (-2)")
	t.Logf("log snapshot %d (was %d); durable index %d", s.Snapshot().Index, snap, n.db.DurableIndex())
	n.db.CloseCursor(cur)
	n.db.Close()
	n.db, n.l = nil, nil
	if err := n.start(thresh); err != nil {
		t.Fatalf("clean restart fails: %v", err)
	}
	n.db.Close()
}
