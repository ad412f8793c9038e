package vfs

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"sync"
	"syscall"
	"testing"
)

// gatedFile is a File whose writes wait at a gate and may fail, and an
// Allocator that may refuse space.
type gatedFile struct {
	mu        sync.Mutex
	data      []byte
	gate      chan struct{} // each WriteAt takes one token (nil: no gate)
	started   chan struct{} // each WriteAt sends one token when it starts
	writeErr  error
	allocErr  error
	allocated int64
	syncs     int
}

func (f *gatedFile) WriteAt(p []byte, off int64) (int, error) {
	if f.started != nil {
		f.started <- struct{}{}
	}
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.writeErr != nil {
		return 0, f.writeErr
	}
	if end := off + int64(len(p)); end > int64(len(f.data)) {
		f.data = append(f.data, make([]byte, end-int64(len(f.data)))...)
	}
	copy(f.data[off:], p)
	return len(p), nil
}

func (f *gatedFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *gatedFile) Allocate(off, n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.allocErr != nil {
		return f.allocErr
	}
	f.allocated = max(f.allocated, off+n) // the size stays
	return nil
}

func (f *gatedFile) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs++
	return nil
}

func (f *gatedFile) Truncate(size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if size < int64(len(f.data)) {
		f.data = f.data[:size]
	} else {
		f.data = append(f.data, make([]byte, size-int64(len(f.data)))...)
	}
	return nil
}

func (f *gatedFile) Size() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.data)), nil
}

func (f *gatedFile) Close() error { return nil }

func newBehind(t *testing.T, f *gatedFile) *behindFile {
	t.Helper()
	b, err := newBehindFile(f, f, nil, func(run func()) { go run() })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if f.gate != nil {
			close(f.gate)
		}
		b.Close()
	})
	return b
}

func readAll(t *testing.T, b *behindFile) []byte {
	t.Helper()
	size, err := b.Size()
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, size)
	if n, err := b.ReadAt(p, 0); n != len(p) || err != nil {
		t.Fatalf("read %d of %d bytes: %v", n, len(p), err)
	}
	return p
}

// TestBehindFileServesQueuedWrites: while the goroutine is held at its
// first write, reads and the size already show every queued write (the
// later one over the earlier where they overlap), the space is reserved,
// and syncDone says the sync is not done; once the writes are let through,
// the sync completes and the file holds the same bytes.
func TestBehindFileServesQueuedWrites(t *testing.T) {
	f := &gatedFile{gate: make(chan struct{}), started: make(chan struct{}, 16)}
	b := newBehind(t, f)
	want := make([]byte, 3*4096)
	for i, w := range []struct {
		off int64
		b   byte
		n   int
	}{{0, 'a', 8192}, {4096, 'b', 8192}, {2048, 'c', 1024}} {
		p := bytes.Repeat([]byte{w.b}, w.n)
		copy(want[w.off:], p)
		if _, err := b.WriteAt(p, w.off); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	<-f.started // the goroutine holds the first write at the gate
	if got := readAll(t, b); !bytes.Equal(got, want) {
		t.Fatalf("reads do not show the queued writes: got %q...", got[:64])
	}
	if f.allocated < int64(len(want)) || len(f.data) > 8192 {
		t.Fatalf("%d bytes reserved, file of %d bytes with two writes held: want at least %d reserved", f.allocated, len(f.data), len(want))
	}
	n := b.startSync(0, nil)
	if done, err := b.syncDone(n); done || err != nil {
		t.Fatalf("sync done %v (%v) with writes still queued", done, err)
	}
	for range 3 {
		f.gate <- struct{}{}
	}
	if err := b.waitSync(n); err != nil {
		t.Fatal(err)
	}
	if done, err := b.syncDone(n); !done || err != nil {
		t.Fatalf("sync done %v (%v) after waiting for it", done, err)
	}
	if f.syncs != 1 || !bytes.Equal(f.data, want) {
		t.Fatalf("after the sync the file holds %q... (%d syncs)", f.data[:64], f.syncs)
	}
}

// TestBehindFileFullDisk: a write the disk has no space for fails at once
// (SQLite hears of it: the checkpoint fails and the WAL keeps its frames)
// and queues nothing; once space returns, writes go through, and the
// goroutine reserves room ahead of them (so the loop need not).
func TestBehindFileFullDisk(t *testing.T) {
	f := &gatedFile{}
	b := newBehind(t, f)
	f.mu.Lock()
	f.allocErr = syscall.ENOSPC // the disk fills after the file opened
	f.mu.Unlock()
	if _, err := b.WriteAt(make([]byte, 4096), 0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write without space: %v, want ENOSPC", err)
	}
	if size, _ := b.Size(); size != 0 {
		t.Fatalf("size %d after the refused write, want 0", size)
	}
	f.mu.Lock()
	f.allocErr = nil
	f.mu.Unlock()
	if _, err := b.WriteAt([]byte("page"), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if string(f.data) != "page" {
		t.Fatalf("the file holds %q", f.data)
	}
	f.mu.Lock()
	allocated := f.allocated
	f.mu.Unlock()
	if allocated < 4+minReserveAhead {
		t.Fatalf("%d bytes reserved after the goroutine ran, want the write's and %d ahead", allocated, minReserveAhead)
	}
}

// TestBehindFileWriteFailureSticks: a write that fails in the goroutine
// (after SQLite was told it succeeded) fails the sync asked for after it,
// and every later read, write and size: nothing is served from a file
// that misses a checkpoint's pages.
func TestBehindFileWriteFailureSticks(t *testing.T) {
	f := &gatedFile{writeErr: syscall.EIO}
	b := newBehind(t, f)
	if _, err := b.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("queued write: %v", err)
	}
	if err := b.waitSync(b.startSync(0, nil)); !errors.Is(err, ErrWriteBehind) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("sync after a failed write: %v, want ErrWriteBehind with EIO", err)
	}
	if _, err := b.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrWriteBehind) {
		t.Fatalf("read after a failed write: %v", err)
	}
	if _, err := b.WriteAt(make([]byte, 10), 0); !errors.Is(err, ErrWriteBehind) {
		t.Fatalf("write after a failed write: %v", err)
	}
	if _, err := b.Size(); !errors.Is(err, ErrWriteBehind) {
		t.Fatalf("size after a failed write: %v", err)
	}
}

// TestBehindFileTruncate: truncating to the size the file will have does
// nothing (SQLite does it after every full checkpoint, and it must not
// wait for the queue); shrinking waits for the queue and cuts the file.
func TestBehindFileTruncate(t *testing.T) {
	f := &gatedFile{gate: make(chan struct{}), started: make(chan struct{}, 16)}
	b := newBehind(t, f)
	if _, err := b.WriteAt(bytes.Repeat([]byte{'x'}, 8192), 0); err != nil {
		t.Fatal(err)
	}
	<-f.started
	if err := b.Truncate(8192); err != nil { // returns with the write held at the gate
		t.Fatal(err)
	}
	f.gate <- struct{}{}
	if err := b.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	if size, _ := b.Size(); size != 4096 || len(f.data) != 4096 {
		t.Fatalf("size %d, file %d bytes after truncating to 4096", size, len(f.data))
	}
	if got := readAll(t, b); !bytes.Equal(got, bytes.Repeat([]byte{'x'}, 4096)) {
		t.Fatalf("after the truncate the file reads %q...", got[:16])
	}
}

// TestBehindFileSyncNotHeldBackByLaterWrites: a sync asked for after two
// writes is carried out once those two are written, while writes queued
// after it still wait (a steady stream of checkpoints must not keep the
// file's recorded index from advancing).
func TestBehindFileSyncNotHeldBackByLaterWrites(t *testing.T) {
	f := &gatedFile{gate: make(chan struct{}), started: make(chan struct{}, 16)}
	b := newBehind(t, f)
	page := bytes.Repeat([]byte{'p'}, 4096)
	for i := range 2 {
		if _, err := b.WriteAt(page, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	n := b.startSync(0, nil)
	for i := 2; i < 5; i++ {
		if _, err := b.WriteAt(page, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	f.gate <- struct{}{}
	f.gate <- struct{}{} // the two writes before the sync, no more
	if err := b.waitSync(n); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	written, syncs := len(f.data), f.syncs
	f.mu.Unlock()
	if written != 2*4096 || syncs != 1 {
		t.Fatalf("the sync came with %d bytes written (%d syncs), want right after the first 8192", written, syncs)
	}
	for range 3 {
		f.gate <- struct{}{}
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if len(f.data) != 5*4096 {
		t.Fatalf("%d bytes written, want %d", len(f.data), 5*4096)
	}
}

// TestBehindFileWithoutReservations: a file whose filesystem cannot
// reserve space gets no goroutine (its writes then go to it at once).
func TestBehindFileWithoutReservations(t *testing.T) {
	f := &gatedFile{allocErr: syscall.EOPNOTSUPP}
	if _, err := newBehindFile(f, f, nil, func(run func()) { go run() }); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Fatalf("wrapping a file that cannot reserve space: %v, want EOPNOTSUPP", err)
	}
}

// TestBehindFileShrinkDropsReservation: after a shrink, the goroutine does
// not reserve the freed space again.
func TestBehindFileShrinkDropsReservation(t *testing.T) {
	f := &gatedFile{}
	b := newBehind(t, f)
	if _, err := b.WriteAt(make([]byte, 8<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := b.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.allocated = 0 // what the shrink freed
	f.mu.Unlock()
	if _, err := b.WriteAt(make([]byte, 4096), 4096); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.allocated > 8192+maxReserveAhead/8 {
		t.Fatalf("after shrinking to 4 KiB and writing 4 KiB, %d bytes are reserved again", f.allocated)
	}
}

// TestBehindFileReusesChunkBuffers: a checkpoint's chunk, once written,
// leaves its buffer for the next one (no fresh megabyte a chunk), the
// file holds every chunk's bytes, and idle ticks give the buffers back.
func TestBehindFileReusesChunkBuffers(t *testing.T) {
	f := &gatedFile{data: make([]byte, 4*behindChunkBytes)}
	b := newBehind(t, f)
	chunk := make([]byte, behindChunkBytes)
	n := 0
	write := func() {
		off := int64(n%4) * behindChunkBytes
		chunk[0], chunk[len(chunk)-1] = byte(n), byte(n)+1
		if _, err := b.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
		if err := b.flush(); err != nil {
			t.Fatal(err)
		}
		n++
	}
	write()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	for i := 0; i < 20; i++ {
		write()
	}
	runtime.ReadMemStats(&ms1)
	if grown := ms1.TotalAlloc - ms0.TotalAlloc; grown > behindChunkBytes {
		t.Errorf("20 chunks of 1 MiB allocated %d bytes: their buffers were not reused", grown)
	}
	got := readAll(t, b)
	for i := n - 4; i < n; i++ {
		off := (i % 4) * behindChunkBytes
		if got[off] != byte(i) || got[off+behindChunkBytes-1] != byte(i)+1 {
			t.Fatalf("chunk %d: %d..%d", i, got[off], got[off+behindChunkBytes-1])
		}
	}
	b.trim(3) // a tick after writes: not idle yet
	if b.free == nil {
		t.Fatal("the buffers dropped at a tick after writes")
	}
	for i := 0; i < 3; i++ {
		b.trim(3)
	}
	if b.free != nil {
		t.Errorf("%d buffers kept after 3 idle ticks", len(b.free))
	}
}
