package fsm_test

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/faultfs"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wal"
)

// countingFS is a real directory whose database files count their syncs
// and write-backs.
type countingFS struct {
	*wal.OSFS
	syncs, writeBacks map[string]int
}

type countingFile struct {
	wal.File
	fs   *countingFS
	name string
}

func (fs *countingFS) wrap(name string, f wal.File, err error) (wal.File, error) {
	if err != nil || !strings.HasSuffix(name, ".db") {
		return f, err
	}
	return &countingFile{File: f, fs: fs, name: name}, nil
}

func (fs *countingFS) Create(name string) (wal.File, error) {
	f, err := fs.OSFS.Create(name)
	return fs.wrap(name, f, err)
}

func (fs *countingFS) Open(name string) (wal.File, error) {
	f, err := fs.OSFS.Open(name)
	return fs.wrap(name, f, err)
}

func (f *countingFile) Sync() error {
	f.fs.syncs[f.name]++
	return f.File.Sync()
}

func (f *countingFile) WriteBack(off, n int64) error {
	f.fs.writeBacks[f.name]++
	return f.File.(wal.WriteBacker).WriteBack(off, n)
}

// TestStreamReceiveWritesBack: a node receiving a database of 20 MB into
// real files has the kernel write it back as it comes (several
// write-backs) and syncs it once, at the end, not every 16 MiB on the
// loop; the install then holds every row.
func TestStreamReceiveWritesBack(t *testing.T) {
	l := newFileNode(t)
	l.write("CREATE TABLE t(b)")
	l.write("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 20000) INSERT INTO t SELECT randomblob(1000) FROM n")
	idx, err := l.db.OpenView()
	if err != nil {
		t.Fatal(err)
	}
	osfs, err := wal.NewOSFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfs := &countingFS{OSFS: osfs, syncs: map[string]int{}, writeBacks: map[string]int{}}
	db, err := fsm.OpenFiles(cfs, fmt.Sprintf("files-%d", vfsSeq.Add(1)), 2, "db", 4096, fsm.ModeFrames)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	stream(t, l.db, db, idx, 1<<20)
	if err := db.InstallReceived(idx); err != nil {
		t.Fatal(err)
	}
	if len(cfs.writeBacks) != 1 {
		t.Fatalf("write-backs %v, syncs %v: want one received file", cfs.writeBacks, cfs.syncs)
	}
	for name, n := range cfs.writeBacks {
		if n < 2 || cfs.syncs[name] != 1 {
			t.Fatalf("%s: %d write-backs and %d syncs, want at least 2 and 1", name, n, cfs.syncs[name])
		}
	}
	rows, err := db.Conn().Query("SELECT count(*) FROM t")
	if err != nil || rows[0][0].(int64) != 20000 {
		t.Fatalf("installed %v rows (%v), want 20000", rows, err)
	}
}

// TestWALMemoryReturned: a 20 MB transaction grows its database's WAL
// buffer past 20 MB (to 32 MiB). The checkpoint that empties the WAL keeps
// that room, and the capture's, for the next large write, which then finds
// it mapped already; once the database has been idle for walKeepTicks
// ticks the memory goes back (at most 4 MiB stays), instead of being kept
// for good.
func TestWALMemoryReturned(t *testing.T) {
	l := newFileNode(t)
	l.write("CREATE TABLE t(b)")
	const big = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 20000) INSERT INTO t SELECT randomblob(1000) FROM n"
	l.write(big)
	if err := l.db.CheckpointAll(); err != nil {
		t.Fatal(err)
	}
	if s, m := l.db.WALSize(), l.db.WALMemory(); s != 0 || m < 40<<20 {
		t.Fatalf("after the checkpoint the WAL holds %d bytes in %d of memory, want 0 in the room of the last write and its capture (over 40 MiB)", s, m)
	}
	l.write(big) // reuses the room (write runs one tick)
	if err := l.db.CheckpointAll(); err != nil {
		t.Fatal(err)
	}
	kept := l.db.WALMemory()
	ticks := 0
	for ; l.db.WALMemory() > 4<<20; ticks++ {
		if ticks > 100 {
			t.Fatalf("after %d idle ticks the WAL holds %d bytes of memory, want at most 4 MiB", ticks, l.db.WALMemory())
		}
		if err := l.db.Maintain(); err != nil {
			t.Fatal(err)
		}
	}
	if ticks < 10 {
		t.Fatalf("the room of %d bytes was given back after %d idle ticks: a run of large writes would fault it in again each time", kept, ticks)
	}
	if got := l.count(); got != 40000 {
		t.Fatalf("%d rows, want 40000", got)
	}
	l.write("INSERT INTO t VALUES (randomblob(1000))") // the WAL grows again from nothing
	if got := l.count(); got != 40001 {
		t.Fatalf("%d rows, want 40001", got)
	}
}

// TestCheckpointRetriedAfterHeldBack: a checkpoint made due by an entry but
// held back (here by an open query) is tried again at a later tick without
// a new entry: a WAL left long when the writes stop is checkpointed, and
// the file's recorded index reaches the last entry.
func TestCheckpointRetriedAfterHeldBack(t *testing.T) {
	l := newFileNode(t)
	l.db.SetCheckpointFrames(4)
	l.write("CREATE TABLE t(b)")
	l.write("INSERT INTO t VALUES (1)")
	cur, err := l.db.OpenCursor("db", "SELECT b FROM t")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cur.Step(); err != nil {
		t.Fatal(err)
	}
	l.write("INSERT INTO t SELECT randomblob(1000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 100) SELECT i FROM n)")
	if l.db.WALSize() == 0 {
		t.Fatal("the open query did not hold the checkpoint back")
	}
	last := uint64(len(l.log))
	l.db.CloseCursor(cur)
	if err := l.db.Maintain(); err != nil { // a tick, no new entry
		t.Fatal(err)
	}
	if s := l.db.WALSize(); s != 0 {
		t.Fatalf("the WAL holds %d bytes after a tick with nothing holding it", s)
	}
	if err := l.db.Maintain(); err != nil { // the next tick syncs and records
		t.Fatal(err)
	}
	if got := l.db.DurableIndex(); got != last {
		t.Fatalf("the file is recorded at %d, the last entry is %d", got, last)
	}
}

// TestCheckpointSyncAtNextTick: a checkpoint at a tick copies the WAL into
// the file and leaves the sync and the record to the next tick, so no tick
// both copies and waits for the disk. Until that tick the record keeps the
// older index: a crash in between (the copied pages lost with the unsynced
// data) replays the log from it and loses nothing.
func TestCheckpointSyncAtNextTick(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%v", crash), func(t *testing.T) {
			l := newFileNode(t)
			l.db.SetCheckpointFrames(4)
			l.write("CREATE TABLE t(b)")
			l.write("INSERT INTO t VALUES (randomblob(1000))")
			if err := l.db.Maintain(); err != nil {
				t.Fatal(err)
			}
			before := l.db.DurableIndex()
			l.write("INSERT INTO t SELECT randomblob(1000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 100) SELECT i FROM n)")
			last := uint64(len(l.log))
			// write ran the tick that copied the WAL into the file.
			if s := l.db.WALSize(); s != 0 {
				t.Fatalf("the tick left %d bytes in the WAL", s)
			}
			if got := l.db.DurableIndex(); got != before {
				t.Fatalf("the copying tick recorded the file at %d (was %d): the record must wait for the sync", got, before)
			}
			if crash {
				l.restart(true, 0)
				if got := l.count(); got != 101 {
					t.Fatalf("%d rows after a crash between the copy and the sync, want 101", got)
				}
				return
			}
			if err := l.db.Maintain(); err != nil { // the next tick
				t.Fatal(err)
			}
			if got := l.db.DurableIndex(); got != last {
				t.Fatalf("after the next tick the file is recorded at %d, want %d", got, last)
			}
			l.restart(true, last)
			if got := l.count(); got != 101 {
				t.Fatalf("%d rows after a crash once recorded, want 101", got)
			}
		})
	}
}

// TestCheckpointBeforeWriteBoundsWAL: when every tick finds a write
// waiting to commit (back-to-back writes), the ticks' checkpoints are held
// back; a write to a database whose WAL holds heldBackCheckpoints (4)
// checkpoints' worth checkpoints it first, so the WAL stays bounded.
func TestCheckpointBeforeWriteBoundsWAL(t *testing.T) {
	l := newFileNode(t)
	const frames = 8
	l.db.SetCheckpointFrames(frames)
	l.write("CREATE TABLE t(b)")
	var maxWAL int64
	for i := 0; i < 40; i++ {
		cmd, _, errs := l.db.ExecuteBatch([]any{&fsm.BatchItem{SQL: "INSERT INTO t VALUES (randomblob(3000))"}})
		if errs[0] != nil {
			t.Fatal(errs[0])
		}
		e := raft.Entry{Index: uint64(len(l.log) + 1), Term: 1, Data: cmd}
		l.log = append(l.log, e)
		l.db.Proposed(e.Index, e.Term)
		if err := l.db.Maintain(); err != nil { // a tick that finds the write pending
			t.Fatal(err)
		}
		if _, err := l.db.Apply(e); err != nil {
			t.Fatal(err)
		}
		l.db.AppliedTo(e.Index)
		maxWAL = max(maxWAL, l.db.WALSize())
	}
	// Four checkpoints' worth, plus the pages of the write that found it so.
	if limit := int64(4*frames+4) * (4096 + 24); maxWAL > limit {
		t.Fatalf("the WAL reached %d bytes with every tick held back, want at most %d", maxWAL, limit)
	}
	if got := l.count(); got != 40 {
		t.Fatalf("%d rows, want 40", got)
	}
}

// TestCheckpointOnOSFilesInBackground: on real files a checkpoint's writes
// and the sync after them are carried out by the file's goroutine; the
// ticks record F once that sync is done, and the files alone then hold
// every row (a restart at F replays nothing).
func TestCheckpointOnOSFilesInBackground(t *testing.T) {
	fs, err := wal.NewOSFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l := &fileNode{t: t, os: nodeFS{fs, nil}}
	l.open()
	t.Cleanup(func() { l.db.Close() })
	l.write("CREATE TABLE t(b)")
	l.write("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 20000) INSERT INTO t SELECT randomblob(1000) FROM n")
	last := uint64(len(l.log))
	if l.db.WALSize() != 0 {
		t.Fatalf("the tick after the write left %d bytes in the WAL", l.db.WALSize())
	}
	deadline := time.Now().Add(time.Minute)
	for ticks := 0; l.db.DurableIndex() < last; ticks++ {
		if time.Now().After(deadline) {
			t.Fatalf("after %d ticks the file is recorded at %d, want %d", ticks, l.db.DurableIndex(), last)
		}
		if err := l.db.Maintain(); err != nil {
			t.Fatal(err)
		}
		runtime.Gosched()
	}
	l.restart(false, last)
	if got := l.count(); got != 20000 {
		t.Fatalf("%d rows from the files alone, want 20000", got)
	}
}

// nodeFS is a real directory as the node's: it runs the database files'
// writer goroutines (vfs.Spawner), and each database file's writes first
// call before (nil: none), which may wait or fail them.
type nodeFS struct {
	*wal.OSFS
	before func() error
}

func (nodeFS) Spawn(run func()) { go run() }

// hookedFile is a database file whose writes call before first. It keeps
// the OS file's Allocate, so the VFS writes it from a goroutine.
type hookedFile struct {
	wal.File
	before func() error
}

func (f hookedFile) Allocate(off, n int64) error {
	return f.File.(interface{ Allocate(off, n int64) error }).Allocate(off, n)
}

func (f hookedFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.before(); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

func (fs nodeFS) wrap(name string, f wal.File, err error) (wal.File, error) {
	if err != nil || fs.before == nil || !strings.HasSuffix(name, ".db") {
		return f, err
	}
	return hookedFile{f, fs.before}, nil
}

func (fs nodeFS) Create(name string) (wal.File, error) {
	f, err := fs.OSFS.Create(name)
	return fs.wrap(name, f, err)
}

func (fs nodeFS) Open(name string) (wal.File, error) {
	f, err := fs.OSFS.Open(name)
	return fs.wrap(name, f, err)
}

// slowDisk is nodeFS's hook for a slow disk: each write takes 20 ms, so a
// checkpoint's writes are still queued when a view opens.
func slowDisk() error {
	time.Sleep(20 * time.Millisecond) // the slow disk, not a wait for an event
	return nil
}

// TestViewAfterQueuedCheckpoint: a view opened while the checkpoint's
// writes are still queued for the file's goroutine streams the database
// as the checkpoint left it (the view reads the file itself), and the
// receiver installs every row.
func TestViewAfterQueuedCheckpoint(t *testing.T) {
	osfs, err := wal.NewOSFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l := &fileNode{t: t, os: nodeFS{osfs, slowDisk}}
	l.open()
	t.Cleanup(func() { l.db.Close() })
	l.write("CREATE TABLE t(b)")
	l.write("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 20000) INSERT INTO t SELECT randomblob(1000) FROM n")
	idx, err := l.db.OpenView()
	if err != nil {
		t.Fatal(err)
	}
	db, err := fsm.OpenFiles(faultfs.NewDisk(9), fmt.Sprintf("files-%d", vfsSeq.Add(1)), 2, "db", 4096, fsm.ModeFrames)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	stream(t, l.db, db, idx, 1<<20)
	if err := db.InstallReceived(idx); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Conn().Query("SELECT count(*), sum(length(b)) FROM t")
	if err != nil || rows[0][0].(int64) != 20000 || rows[0][1].(int64) != 20_000_000 {
		t.Fatalf("installed %v (%v), want 20000 rows of 1000 bytes", rows, err)
	}
}

// gate is nodeFS's hook for a disk that stalls (while the filesystem
// commits, say): writes wait while it is shut.
type gate struct {
	mu   sync.Mutex
	cond *sync.Cond
	shut bool
}

func (g *gate) set(shut bool) {
	g.mu.Lock()
	g.shut = shut
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *gate) wait() error {
	g.mu.Lock()
	for g.shut {
		g.cond.Wait()
	}
	g.mu.Unlock()
	return nil
}

// TestCheckpointWaitsForStalledDiskAtLaterTick: while the file's goroutine
// cannot write (the disk stalls), a checkpoint that would not fit its queue
// is left for a later tick instead of waiting in the loop event: here the
// one a long WAL makes a write run first. Once the disk moves again a tick
// checkpoints.
func TestCheckpointWaitsForStalledDiskAtLaterTick(t *testing.T) {
	osfs, err := wal.NewOSFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{}
	g.cond = sync.NewCond(&g.mu)
	l := &fileNode{t: t, os: nodeFS{osfs, g.wait}}
	l.open()
	t.Cleanup(func() {
		g.set(false) // let the goroutine finish if the test failed
		l.db.Close()
	})
	const rows = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 20000) INSERT INTO t SELECT randomblob(1000) FROM n"
	l.write("CREATE TABLE t(b)")
	g.set(true)
	l.write(rows) // its tick queues 20 MB for the stalled disk
	if l.db.WALSize() != 0 {
		t.Fatal("the first checkpoint did not run")
	}
	l.write(rows) // its tick waits for the first one's sync
	// The WAL is long enough for the write to checkpoint first, but 40 MB
	// would pass the queue's bound: the write must not wait for the disk.
	l.write(rows)
	if w := l.db.WALSize(); w < 40_000_000 {
		t.Fatalf("the WAL holds %d bytes, want the last two writes'", w)
	}
	g.set(false)
	deadline := time.Now().Add(time.Minute)
	for l.db.WALSize() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the WAL still holds %d bytes a minute after the disk moved again", l.db.WALSize())
		}
		if err := l.db.Maintain(); err != nil {
			t.Fatal(err)
		}
		runtime.Gosched()
	}
	if got := l.count(); got != 60000 {
		t.Fatalf("%d rows, want 60000", got)
	}
}

// TestBackgroundWriteFailureStopsNode: a snapshot view's passive checkpoint
// queues pages for the file's goroutine with no sync asked for after them;
// when their write fails, the next tick stops the node (FileSyncError)
// instead of retrying checkpoints on a file that misses pages.
func TestBackgroundWriteFailureStopsNode(t *testing.T) {
	osfs, err := wal.NewOSFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	failing := &atomic.Bool{}
	l := &fileNode{t: t, os: nodeFS{osfs, func() error {
		if failing.Load() {
			return syscall.EIO
		}
		return nil
	}}}
	l.open()
	t.Cleanup(func() { l.db.Close() })
	l.write("CREATE TABLE t(b)")
	l.write("INSERT INTO t SELECT randomblob(1000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 50) SELECT i FROM n)")
	if l.db.WALSize() == 0 {
		t.Fatal("the WAL is empty: the view would checkpoint nothing")
	}
	failing.Store(true)
	if _, err := l.db.OpenView(); err == nil {
		t.Fatal("the view opened on a file whose checkpoint writes failed")
	}
	var fe fsm.FileSyncError
	if err := l.db.Maintain(); !errors.As(err, &fe) {
		t.Fatalf("the tick after a failed background write: %v, want a FileSyncError (the node stops)", err)
	}
}
