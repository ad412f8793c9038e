package fsm_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/faultfs"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wal"
)

// armFS is a faultfs disk whose record writes can be made to fail (as if
// the node crashed at that point): after skip more record writes, every
// Create of the record's temporary file fails.
type armFS struct {
	*faultfs.Disk
	armed bool
	skip  int
}

func (a *armFS) Create(name string) (wal.File, error) {
	if a.armed && name == "fsm-databases.tmp" {
		if a.skip > 0 {
			a.skip--
		} else {
			return nil, faultfs.ErrCrashed
		}
	}
	return a.Disk.Create(name)
}

type reviewNode struct {
	t    tb
	fs   *armFS
	mode fsm.Mode
	db   *fsm.DB
	log  []raft.Entry
}

func (n *reviewNode) open() {
	n.t.Helper()
	db, err := fsm.OpenFiles(n.fs, fmt.Sprintf("review-%d", vfsSeq.Add(1)), 1, "db", 4096, n.mode)
	if err != nil {
		n.t.Fatal(err)
	}
	n.db = db
}

func (n *reviewNode) write(sql string) {
	n.t.Helper()
	cmd, _, errs := n.db.ExecuteBatch([]any{&fsm.BatchItem{SQL: sql}})
	if errs[0] != nil {
		n.t.Fatal(errs[0])
	}
	e := raft.Entry{Index: uint64(len(n.log) + 1), Term: 1, Data: cmd}
	n.log = append(n.log, e)
	n.db.Proposed(e.Index, e.Term)
	if _, err := n.db.Apply(e); err != nil {
		n.t.Fatal(err)
	}
	n.db.AppliedTo(e.Index)
	if err := n.db.Maintain(); err != nil {
		n.t.Fatal(err)
	}
}

func (n *reviewNode) rows() int64 {
	n.t.Helper()
	r, err := n.db.Conn().Query("SELECT count(*) FROM t")
	if err != nil {
		n.t.Fatal(err)
	}
	return r[0][0].(int64)
}

// TestReviewStatementReplayAfterUnrecordedCheckpoint: a checkpoint copies
// the WAL into the file and syncs it, and the node crashes before the
// record says so (F stays at the previous checkpoint, dirty is past it).
// The restart replays the entries after F. Frames rewrite whole pages:
// exact. Statements run again on a file that already holds their effect:
// every INSERT after F is applied twice.
//
// So statement mode journals the WAL before each checkpoint (redo.go);
// TestStatementModeCrashInCheckpoint crashes it at every write of a
// checkpoint. Frames mode is checked to be exact here.
func TestReviewStatementReplayAfterUnrecordedCheckpoint(t *testing.T) {
	for _, mode := range []fsm.Mode{fsm.ModeFrames} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			n := &reviewNode{t: t, fs: &armFS{Disk: faultfs.NewDisk(5)}, mode: mode}
			n.open()
			defer func() { n.db.Close() }()
			n.write("CREATE TABLE t(x)")
			for i := 0; i < 5; i++ {
				n.write(fmt.Sprintf("INSERT INTO t VALUES (%d)", i))
			}
			n.db.CheckpointAll()
			f := n.db.DurableIndex()
			for i := 5; i < 10; i++ {
				n.write(fmt.Sprintf("INSERT INTO t VALUES (%d)", i))
			}
			// markDirty's record write passes; the one after the sync
			// "crashes".
			n.fs.armed, n.fs.skip = true, 1
			n.db.CheckpointAll()
			_, last := n.db.CheckpointStats()
			t.Logf("F=%d before, %d after the cut-short checkpoint (%v)", f, n.db.DurableIndex(), last)
			n.db.Close()
			n.fs.armed = false
			n.fs.Crash()
			n.open()
			t.Logf("replay bound %d", n.db.ReplayBound())
			for _, e := range n.log[f:] {
				if _, err := n.db.Apply(e); err != nil && !strings.Contains(err.Error(), "UNIQUE") {
					t.Fatalf("replaying %d: %v", e.Index, err)
				}
				n.db.AppliedTo(e.Index)
			}
			if err := n.db.FinishReplay(); err != nil {
				t.Fatal(err)
			}
			if got := n.rows(); got != 10 {
				t.Errorf("%v: %d rows after the restart, want 10 (every write applied once)", mode, got)
			}
		})
	}
}

// syncFailFS fails the next Sync of a database file when armed (as if
// the node crashed just before it).
type syncFailFS struct {
	*faultfs.Disk
	failDBSync bool
}

type syncFailFile struct {
	wal.File
	fs   *syncFailFS
	name string
}

func (f syncFailFile) Sync() error {
	if f.fs.failDBSync && strings.HasSuffix(f.name, ".db") {
		f.fs.failDBSync = false
		return faultfs.ErrCrashed
	}
	return f.File.Sync()
}

func (s *syncFailFS) Open(name string) (wal.File, error) {
	f, err := s.Disk.Open(name)
	if err != nil {
		return nil, err
	}
	return syncFailFile{File: f, fs: s, name: name}, nil
}

func (s *syncFailFS) Create(name string) (wal.File, error) {
	f, err := s.Disk.Create(name)
	if err != nil {
		return nil, err
	}
	return syncFailFile{File: f, fs: s, name: name}, nil
}

// TestReviewAbortedCaptureAfterViewRaisesF: a view's passive checkpoint
// copies the WAL into the file without syncing it. The leader's next
// write restarts the WAL (every frame was backfilled): its capture hides
// the frames and leaves the WAL at size 0; the write is aborted
// (leadership lost). writeRecord takes "WAL empty" for "the synced file
// holds everything" and records F = the applied index before the file is
// synced (here by the markDirty of the next checkpoint; a checkpoint of
// any other database would do it too, and keep the window open). A crash
// before the sync loses pages the record says the file has.
func TestReviewAbortedCaptureAfterViewRaisesF(t *testing.T) {
	fs := &syncFailFS{Disk: faultfs.NewDisk(11)}
	open := func() *fsm.DB {
		db, err := fsm.OpenFiles(fs, fmt.Sprintf("review-%d", vfsSeq.Add(1)), 1, "db", 4096, fsm.ModeFrames)
		if err != nil {
			t.Fatal(err)
		}
		return db
	}
	db := open()
	var log []raft.Entry
	write := func(sql string, apply bool) {
		t.Helper()
		name := ""
		if strings.HasPrefix(sql, "z:") {
			name, sql = "z", sql[2:]
		}
		cmd, _, errs := db.ExecuteBatch([]any{&fsm.BatchItem{SQL: sql, Database: name}})
		if errs[0] != nil {
			t.Fatal(errs[0])
		}
		e := raft.Entry{Index: uint64(len(log) + 1), Term: 1, Data: cmd}
		db.Proposed(e.Index, e.Term)
		if !apply {
			return
		}
		log = append(log, e)
		if _, err := db.Apply(e); err != nil {
			t.Fatal(err)
		}
		db.AppliedTo(e.Index)
		_ = db.Maintain()
	}
	write("CREATE TABLE t(b)", true)
	for i := 0; i < 20; i++ {
		write("INSERT INTO t VALUES (randomblob(3000))", true)
	}
	db.CheckpointAll()
	f1 := db.DurableIndex()
	for i := 0; i < 20; i++ {
		write("INSERT INTO t VALUES (randomblob(3000))", true)
	}
	if _, err := db.OpenView(); err != nil {
		t.Fatal(err)
	}
	db.CloseView()
	write("INSERT INTO t VALUES (1)", false) // captured, never committed
	t.Logf("WAL %d bytes while the capture is pending", db.WALSize())
	db.Abort()
	t.Logf("WAL %d bytes after the abort; durable index %d", db.WALSize(), db.DurableIndex())
	// Any entry (here one for another database) moves the applied index
	// past the dirty index the view recorded, so the next checkpoint's
	// markDirty writes the record.
	write("z:CREATE TABLE u(a)", true)
	fs.failDBSync = true
	db.CheckpointAll()
	_, last := db.CheckpointStats()
	t.Logf("durable index %d (was %d) after a checkpoint whose sync crashed: %v", db.DurableIndex(), f1, last)
	db.Close()
	fs.Crash()
	db = open()
	defer func() { db.Close() }()
	if !db.Covers(uint64(len(log))) {
		t.Logf("record no longer claims %d", len(log))
	}
	for _, e := range log {
		if _, err := db.Apply(e); err != nil {
			t.Fatalf("replaying %d: %v", e.Index, err)
		}
		db.AppliedTo(e.Index)
		_ = db.Maintain()
	}
	if err := db.FinishReplay(); err != nil {
		t.Fatal(err)
	}
	check, err := db.Conn().Query("PRAGMA integrity_check")
	if err != nil || check[0][0] != "ok" {
		t.Fatalf("after the crash (replaying the whole log): integrity check %v %v", check, err)
	}
	rows, err := db.Conn().Query("SELECT count(*) FROM t")
	if err != nil {
		t.Fatal(err)
	}
	if got := rows[0][0].(int64); got != 40 {
		t.Fatalf("%d rows after the crash, want 40", got)
	}
}
