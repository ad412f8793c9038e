package vfs

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"testing"
)

// memFiles is a Files whose main files are in memory: it counts the
// writes and fails those fail picks.
type memFiles struct {
	mu     sync.Mutex
	files  map[string]*memFile
	writes int
	fail   func(off int64, n int) bool
}

type memFile struct {
	fs   *memFiles
	data []byte
}

func (fs *memFiles) OpenDatabase(name string) (File, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.files == nil {
		fs.files = map[string]*memFile{}
	}
	f := fs.files[name]
	if f == nil {
		f = &memFile{fs: fs}
		fs.files[name] = f
	}
	return f, nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.writes++
	if f.fs.fail != nil && f.fs.fail(off, len(p)) {
		return 0, syscall.EIO
	}
	if end := off + int64(len(p)); end > int64(len(f.data)) {
		f.data = append(f.data, make([]byte, end-int64(len(f.data)))...)
	}
	copy(f.data[off:], p)
	return len(p), nil
}

func (f *memFile) Sync() error { return nil }
func (f *memFile) Truncate(size int64) error {
	if size < int64(len(f.data)) {
		f.data = f.data[:size]
	}
	return nil
}
func (f *memFile) Size() (int64, error) { return int64(len(f.data)), nil }
func (f *memFile) Close() error         { return nil }

func newFilesVFS(t *testing.T, fs *memFiles) *VFS {
	t.Helper()
	v, err := NewFiles(fmt.Sprintf("test-files-%d", vfsSeq.Add(1)), 1, fs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

// insertBlobs writes rows lo..hi of t (1,000 random bytes each) as one
// transaction and applies it.
func insertBlobs(t *testing.T, v *VFS, c *Conn, lo, hi int) {
	t.Helper()
	exec(t, c, fmt.Sprintf("WITH RECURSIVE n(i) AS (SELECT %d UNION ALL SELECT i+1 FROM n WHERE i < %d) "+
		"INSERT INTO t SELECT i, randomblob(1000) FROM n", lo, hi))
	commit(t, v, "db")
}

// fromFileOnly opens the database as its main file holds it, with no WAL
// (a fresh VFS over the same files), and returns its row count.
func fromFileOnly(t *testing.T, fs *memFiles) int64 {
	t.Helper()
	fs.fail = nil
	c := open(t, newFilesVFS(t, fs), "db", 4096)
	if r := query(t, c, "PRAGMA quick_check"); r[0][0] != "ok" {
		t.Fatalf("the file alone: quick_check %v", r)
	}
	return count(t, c, "t")
}

// newBlobTable is a VFS over memFiles with table t holding rows 1..2000
// (applied, not checkpointed) and the connection that wrote them.
func newBlobTable(t *testing.T) (*memFiles, *VFS, *Conn) {
	t.Helper()
	fs := &memFiles{}
	v := newFilesVFS(t, fs)
	c := open(t, v, "db", 4096)
	exec(t, c, "CREATE TABLE t (k INTEGER PRIMARY KEY, b BLOB)")
	commit(t, v, "db")
	insertBlobs(t, v, c, 1, 2000)
	return fs, v, c
}

// TestCheckpointWritesCoalesced: a checkpoint of 2,000 rows (about 520
// pages, appended in page order) reaches the file in a few writes of up to
// 1 MiB, not one per page, and the file alone then holds every row.
func TestCheckpointWritesCoalesced(t *testing.T) {
	fs, v, c := newBlobTable(t)
	fs.writes = 0
	if err := c.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if fs.writes == 0 || fs.writes > 8 {
		t.Fatalf("the checkpoint made %d writes to the file, want 1 to 8 (about 2 MiB in writes of up to 1 MiB)", fs.writes)
	}
	if n := v.WALSize("db"); n != 0 {
		t.Fatalf("the WAL holds %d bytes after the checkpoint", n)
	}
	if n := fromFileOnly(t, fs); n != 2000 {
		t.Fatalf("the file alone holds %d rows, want 2000", n)
	}
}

// TestCheckpointLastWriteFails: the checkpoint's last coalesced write (the
// one written after the last page, which SQLite cannot hear of) fails.
// Then the checkpoint fails and records nothing: the WAL keeps its frames,
// every row reads back, and a later checkpoint completes the file.
func TestCheckpointLastWriteFails(t *testing.T) {
	fs, v, c := newBlobTable(t)
	end := query(t, c, "PRAGMA page_count")[0][0].(int64) * 4096
	fs.fail = func(off int64, n int) bool { return off+int64(n) == end }
	if err := c.Checkpoint(); err == nil {
		t.Fatal("the checkpoint succeeded without its last write")
	}
	if v.WALSize("db") == 0 {
		t.Fatal("the failed checkpoint emptied the WAL")
	}
	fs.fail = nil
	r := open(t, v, "db", 4096)
	if n := count(t, r, "t"); n != 2000 {
		t.Fatalf("%d rows after the failed checkpoint, want 2000", n)
	}
	if q := query(t, r, "PRAGMA quick_check"); q[0][0] != "ok" {
		t.Fatalf("quick_check after the failed checkpoint: %v", q)
	}
	r.Close()
	if err := c.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if n := fromFileOnly(t, fs); n != 2000 {
		t.Fatalf("the file alone holds %d rows, want 2000", n)
	}
}

// TestPartialCheckpointLastWriteFails: a passive checkpoint held back by an
// older reader copies only the frames that reader sees, and SQLite records
// how far it got without another file operation in between. When its last
// write fails, the backfill count is put back: readers keep taking those
// pages from the WAL, never the stale ones from the file.
func TestPartialCheckpointLastWriteFails(t *testing.T) {
	fs, v, c := newBlobTable(t)
	end := query(t, c, "PRAGMA page_count")[0][0].(int64) * 4096
	old := open(t, v, "db", 4096)
	exec(t, old, "BEGIN")
	if n := count(t, old, "t"); n != 2000 {
		t.Fatalf("%d rows, want 2000", n)
	}
	insertBlobs(t, v, c, 2001, 4000) // the old reader holds these back
	fs.fail = func(off int64, n int) bool { return off+int64(n) == end }
	ck := open(t, v, "db", 4096)
	frames, copied, err := ck.CheckpointPassive()
	if !errors.Is(err, ErrCheckpointWrite) {
		t.Fatalf("passive checkpoint without its last write: %d of %d frames copied, error %v; want ErrCheckpointWrite", copied, frames, err)
	}
	fs.fail = nil
	exec(t, old, "COMMIT")
	r := open(t, v, "db", 4096)
	if q := query(t, r, "PRAGMA quick_check"); q[0][0] != "ok" {
		t.Fatalf("quick_check after the failed checkpoint: %v", q)
	}
	if n := count(t, r, "t"); n != 4000 {
		t.Fatalf("%d rows after the failed checkpoint, want 4000", n)
	}
	r.Close()
	old.Close()
	ck.Close()
	if err := c.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if n := fromFileOnly(t, fs); n != 4000 {
		t.Fatalf("the file alone holds %d rows, want 4000", n)
	}
}
