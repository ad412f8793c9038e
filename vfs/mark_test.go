package vfs

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
)

// opLog records, in order, what files were asked to do.
type opLog struct {
	mu  sync.Mutex
	ops []string
}

func (l *opLog) add(s string) {
	l.mu.Lock()
	l.ops = append(l.ops, s)
	l.mu.Unlock()
}

func (l *opLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ops)
}

// loggedFile is an in-memory File (and Allocator) that logs its writes and
// syncs under its name.
type loggedFile struct {
	name     string
	log      *opLog
	mu       sync.Mutex
	data     []byte
	failSync bool // the next Sync fails, the one after succeeds (as Linux reports a write-back error once)
}

func (f *loggedFile) WriteAt(p []byte, off int64) (int, error) {
	f.log.add(fmt.Sprintf("%s write %d", f.name, off))
	f.mu.Lock()
	defer f.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(f.data)) {
		f.data = append(f.data, make([]byte, end-int64(len(f.data)))...)
	}
	copy(f.data[off:], p)
	return len(p), nil
}

func (f *loggedFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return copy(p, f.data[min(off, int64(len(f.data))):]), nil
}

func (f *loggedFile) Sync() error {
	if f.failSync {
		f.failSync = false
		f.log.add(f.name + " sync failed")
		return errors.New("EIO")
	}
	f.log.add(f.name + " sync")
	return nil
}
func (f *loggedFile) Truncate(size int64) error { return nil }
func (f *loggedFile) Size() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.data)), nil
}
func (f *loggedFile) Close() error                { return nil }
func (f *loggedFile) Allocate(off, n int64) error { return nil }

// TestBehindFileMarksInOrder: a file's goroutine carries out its mark
// writes in the order they were asked for among its writes: a mark queued
// after a checkpoint's first writes is written and synced after them and
// before the later ones reach the file, and a sync with a mark writes and
// syncs the mark after the file's sync, before syncDone says done.
func TestBehindFileMarksInOrder(t *testing.T) {
	log := &opLog{}
	main, mark := &loggedFile{name: "db", log: log}, &loggedFile{name: "mark", log: log}
	b, err := newBehindFile(main, main, mark, func(run func()) { go run() })
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	page := make([]byte, 4096)
	if _, err := b.WriteAt(page, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.queueMark(0, []byte("dirty")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteAt(page, 4096); err != nil {
		t.Fatal(err)
	}
	n := b.startSync(4096, []byte("index"))
	if err := b.waitSync(n); err != nil {
		t.Fatal(err)
	}
	want := []string{"db write 0", "mark write 0", "mark sync", "db write 4096", "db sync", "mark write 4096", "mark sync"}
	if got := log.all(); !slices.Equal(got, want) {
		t.Fatalf("carried out\n%q\nwant\n%q", got, want)
	}
	if got := string(mark.data[4096:4101]); got != "index" {
		t.Fatalf("the mark file holds %q at 4096", got)
	}
}

// TestMarkWaitsForAskedSync: on a file written at once (no goroutine), a
// mark written while a sync with a mark is asked for but not finished
// (StartSync, FinishSync still to come) comes after that sync and its
// mark: marks are durable in the order they were asked for, as the
// goroutine would carry them out. Before, the later mark went first, and
// it claimed an index whose pages were not synced yet (the simulator's
// seed 339: a restarted node skipped entries its file did not have).
func TestMarkWaitsForAskedSync(t *testing.T) {
	log := &opLog{}
	v := openMarked(t, &loggedFile{name: "db", log: log}, &loggedFile{name: "mark", log: log})
	if err := v.StartSync("db", 0, []byte("first")); err != nil {
		t.Fatal(err)
	}
	before := len(log.all())
	if err := v.WriteMark("db", 4096, []byte("second")); err != nil {
		t.Fatal(err)
	}
	want := []string{"db sync", "mark write 0", "mark sync", "mark write 4096", "mark sync"}
	if got := log.all()[before:]; !slices.Equal(got, want) {
		t.Fatalf("carried out\n%q\nwant\n%q", got, want)
	}
	if done, err := v.FinishSync("db"); !done || err != nil {
		t.Fatalf("FinishSync after the mark: %v, %v", done, err)
	}
	if got := log.all()[before+len(want):]; !slices.Equal(got, []string{"db sync"}) {
		t.Fatalf("FinishSync carried out %q: want one sync, the first mark written once", got)
	}
}

// openMarked opens a VFS whose database "db" is main, with mark as its mark
// file, and writes a table into it (its file written at once: no
// goroutine).
func openMarked(t *testing.T, main, mark *loggedFile) *VFS {
	t.Helper()
	v, err := NewFiles(fmt.Sprintf("marks-%p", main), 1, markedFiles{main: main, mark: mark})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	c, err := v.Open("db", 4096)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Exec("CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	return v
}

// markedFiles opens main, with mark as its mark file, for every database.
type markedFiles struct{ main, mark *loggedFile }

func (m markedFiles) OpenDatabase(name string) (File, error) {
	return markedLogged{m.main, m.mark}, nil
}

type markedLogged struct {
	*loggedFile
	mark *loggedFile
}

func (m markedLogged) MarkFile() File { return m.mark }

// TestFailedSyncNeverMarked: on a file written at once, a sync that fails
// leaves the file untrusted for good: the mark asked for after that sync
// is never written (a later sync succeeding, with the pages the failed one
// may have dropped, must not make it true), every later mark and sync
// fails, and FileFailed reports it, so the node stops at its next tick.
// The review of the marks found the mark written at the next successful
// sync instead.
func TestFailedSyncNeverMarked(t *testing.T) {
	log := &opLog{}
	main := &loggedFile{name: "db", log: log}
	v := openMarked(t, main, &loggedFile{name: "mark", log: log})
	if err := v.StartSync("db", 0, []byte("index")); err != nil {
		t.Fatal(err)
	}
	main.failSync = true
	if err := v.WriteMark("db", 4096, []byte("dirty")); err == nil {
		t.Fatal("a mark after a failed sync was written")
	}
	if done, err := v.FinishSync("db"); err == nil {
		t.Fatalf("FinishSync after a failed sync: done %v, no error", done)
	}
	if err := v.StartSync("db", 4096, []byte("later")); err == nil {
		t.Fatal("StartSync after a failed sync succeeded")
	}
	if v.FileFailed("db") == nil {
		t.Fatal("FileFailed does not report the failed sync")
	}
	for _, op := range log.all() {
		if op == "mark write 0" || op == "mark write 4096" {
			t.Fatalf("the mark file was written after the failed sync: %q", log.all())
		}
	}
}
