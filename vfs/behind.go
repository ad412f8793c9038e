package vfs

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// MaxWriteBehindBytes bounds the writes a database file holds queued for
// its writer goroutine (see behindFile); a write that would pass it waits
// until the goroutine has written enough.
const MaxWriteBehindBytes = 32 << 20

// Allocator is a File that can reserve disk space for a range without
// changing its size, so that writes into it cannot fail for want of space
// (fallocate(2) with FALLOC_FL_KEEP_SIZE; OSFS's files are Allocators). A
// database file that is one has its writes carried out by a goroutine (see
// behindFile).
type Allocator interface {
	Allocate(off, n int64) error
}

// Space a growing database file reserves past what its writes need: an
// eighth of its size, within these bounds. Reserving waits for the file's
// lock (which a write throttled by a busy disk holds) and for the
// filesystem's journal (100-250 ms when it commits much data): the file's
// goroutine reserves ahead, and a write reserves only what the goroutine
// has not.
const (
	minReserveAhead = 1 << 20
	maxReserveAhead = 64 << 20
)

// Spawner is Files that can run a database file's writer goroutine (this
// package starts none: its owner, the node, does). Spawner returns nil
// when it cannot; then every file is written at once.
type Spawner interface {
	Spawner() func(run func())
}

// ErrWriteBehind wraps the failure of a write or sync that a database
// file's writer goroutine carried out: the file misses what a checkpoint
// wrote to it, so every later operation on it fails and the node must not
// trust it again.
var ErrWriteBehind = errors.New("vfs: a database file's background write failed")

// behindFile is a main File whose writes and syncs a goroutine carries out,
// so that a checkpoint (which writes tens of megabytes at a time on a busy
// disk, 50-100 ms) does not hold the loop: a write reserves its range's
// space at once (so a full disk fails it while SQLite can still hear of it),
// copies the bytes and returns. Reads see the queued writes. Sync waits for
// the queue; startSync and syncDone let the caller sync without waiting.
// Writes to the file's mark file (see Marked) go through the same queue,
// in order. A write or sync the goroutine fails makes every later
// operation fail.
type behindFile struct {
	f     File
	alloc Allocator
	mark  File // the mark file (nil: none)

	mu        sync.Mutex
	cond      *sync.Cond // the queue, the sync counters or closing changed
	queue     []behindChunk
	queued    int64
	size      int64 // the file's size once the queue is written
	allocated int64 // space reserved up to here
	// reserveWant is how far the goroutine is to reserve; reserveFailed
	// stops it after a failure until a write's own reservation succeeds.
	reserveWant   int64
	reserveFailed bool
	// syncAsked counts syncs asked for, syncFinished those carried out.
	// A sync is a queue item: it comes after every write queued before it
	// and before the writes queued since (so a steady stream of writes
	// does not hold it back).
	syncAsked, syncFinished uint64
	err                     error // the goroutine's first failure
	closing                 bool
	exited                  chan struct{}
	// free are written chunks' buffers kept for later writes: a
	// checkpoint queues tens of megabytes, and fresh memory for each
	// costs page faults and garbage collection inside the loop event
	// (5-45 ms for 20 MB measured under load). Queue and free together
	// stay within MaxWriteBehindBytes; trim drops them when idle.
	free      [][]byte
	wrote     bool // since the last trim
	idleTrims int
}

// Queued writes of at least behindPoolMin bytes (a checkpoint's, which the
// C side coalesces into chunks of behindChunkBytes) are copied into pooled
// buffers of behindChunkBytes.
const (
	behindChunkBytes = 1 << 20
	behindPoolMin    = 64 << 10
)

// behindChunk is a queue item: a write of data at off; with mark, a write
// of data at off to the mark file, then its sync; with sync (number n), a
// sync of the file, then (data not nil) the mark write and its sync.
type behindChunk struct {
	off        int64
	data       []byte
	mark, sync bool
	n          uint64
}

// newBehindFile wraps f (an Allocator) and has spawn run its writer
// goroutine, which Close stops.
func newBehindFile(f File, a Allocator, mark File, spawn func(func())) (*behindFile, error) {
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	// A filesystem that cannot reserve space (EOPNOTSUPP) gets no
	// goroutine: its writes go to the file at once, as before.
	if err := a.Allocate(size, 1); err != nil {
		return nil, err
	}
	b := &behindFile{f: f, alloc: a, mark: mark, size: size, allocated: size, exited: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	spawn(b.run)
	return b, nil
}

// run is the writer goroutine: the queued writes in order, then a sync
// asked for; it exits when Close asks, after the queue.
func (b *behindFile) run() {
	defer close(b.exited)
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		switch {
		case b.reserveWant > b.allocated && !b.reserveFailed && b.err == nil:
			from, n := b.allocated, b.reserveWant-b.allocated
			b.mu.Unlock()
			err := b.alloc.Allocate(from, n)
			b.mu.Lock()
			if err != nil {
				b.reserveFailed = true // the writes reserve for themselves
			} else {
				b.allocated = max(b.allocated, from+n)
			}
		case len(b.queue) > 0:
			c := b.queue[0]
			failed := b.err != nil
			b.mu.Unlock()
			var err error
			if !failed { // a file already missing a write is not written further
				err = b.carryOut(c)
			}
			b.mu.Lock()
			if err != nil && b.err == nil {
				b.err = err
			}
			b.queue[0] = behindChunk{}
			b.queue = b.queue[1:]
			if c.sync {
				b.syncFinished = c.n
			} else if !c.mark {
				b.queued -= int64(len(c.data))
				if cap(c.data) == behindChunkBytes && b.queued+int64(len(b.free)+1)*behindChunkBytes <= MaxWriteBehindBytes {
					b.free = append(b.free, c.data[:0])
				}
			}
			b.cond.Broadcast()
		case b.closing:
			return
		default:
			b.cond.Wait()
		}
	}
}

// carryOut carries out one queue item (on the goroutine, unlocked).
func (b *behindFile) carryOut(c behindChunk) error {
	if c.sync {
		if err := b.f.Sync(); err != nil {
			return fmt.Errorf("%w: sync: %w", ErrWriteBehind, err)
		}
		if c.data == nil {
			return nil
		}
	} else if !c.mark {
		if _, err := b.f.WriteAt(c.data, c.off); err != nil {
			return fmt.Errorf("%w: write of %d bytes at %d: %w", ErrWriteBehind, len(c.data), c.off, err)
		}
		return nil
	}
	if err := writeMark(b.mark, c.off, c.data); err != nil {
		return fmt.Errorf("%w: %w", ErrWriteBehind, err)
	}
	return nil
}

// writeMark writes p at off of the mark file m and syncs it.
func writeMark(m File, off int64, p []byte) error {
	if m == nil {
		return errors.New("mark write: the database file has no mark file")
	}
	if _, err := m.WriteAt(p, off); err != nil {
		return fmt.Errorf("mark write of %d bytes at %d: %w", len(p), off, err)
	}
	if err := m.Sync(); err != nil {
		return fmt.Errorf("mark sync: %w", err)
	}
	return nil
}

// queueMark queues a write of p at off to the mark file and its sync:
// after every write queued before, and durable before any queued after
// reaches the file.
func (b *behindFile) queueMark(off int64, p []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	if b.mark == nil {
		return errors.New("vfs: mark write: the database file has no mark file")
	}
	b.queue = append(b.queue, behindChunk{off: off, data: append([]byte(nil), p...), mark: true})
	b.wrote = true
	b.cond.Broadcast()
	return nil
}

// WriteAt reserves the range's space (a failure, ENOSPC say, is returned:
// nothing is queued), then queues a copy of p.
func (b *behindFile) WriteAt(p []byte, off int64) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.err == nil && len(b.queue) > 0 && b.queued+int64(len(p)) > MaxWriteBehindBytes {
		b.cond.Wait()
	}
	if b.err != nil {
		return 0, b.err
	}
	end := off + int64(len(p))
	if end > b.allocated {
		from := b.allocated // a gap before off too: it is allocated up to here
		if err := b.alloc.Allocate(from, end-from); err != nil {
			return 0, err
		}
		b.allocated, b.reserveFailed = end, false
	}
	if ahead := min(max(b.size/8, minReserveAhead), maxReserveAhead); b.allocated < max(b.size, end)+ahead/2 {
		b.reserveWant = max(b.reserveWant, max(b.size, end)+ahead)
	}
	b.queue = append(b.queue, behindChunk{off: off, data: b.copyOf(p)})
	b.wrote = true
	b.queued += int64(len(p))
	b.size = max(b.size, end)
	b.cond.Broadcast()
	return len(p), nil
}

// copyOf copies p for the queue, into a pooled buffer if it is a
// checkpoint's chunk.
func (b *behindFile) copyOf(p []byte) []byte {
	if len(p) < behindPoolMin || len(p) > behindChunkBytes {
		return append([]byte(nil), p...)
	}
	var buf []byte
	if k := len(b.free); k > 0 {
		buf, b.free[k-1] = b.free[k-1][:len(p)], nil
		b.free = b.free[:k-1]
	} else {
		buf = make([]byte, len(p), behindChunkBytes)
	}
	copy(buf, p)
	return buf
}

// trim drops the pooled buffers once idleTicks calls in a row (one a
// tick: VFS.Trim) found no write since the last.
func (b *behindFile) trim(idleTicks int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.wrote {
		b.wrote, b.idleTrims = false, 0
		return
	}
	if b.idleTrims++; b.idleTrims >= idleTicks {
		b.free = nil
	}
}

// ReadAt reads the file with the queued writes laid over it.
func (b *behindFile) ReadAt(p []byte, off int64) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	valid := min(max(b.size-off, 0), int64(len(p)))
	n, err := b.f.ReadAt(p[:valid], off)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, err
	}
	clear(p[n:valid]) // reserved but not written yet: zeros, unless queued
	for _, c := range b.queue {
		if c.mark || c.sync {
			continue
		}
		lo, hi := max(c.off, off), min(c.off+int64(len(c.data)), off+valid)
		if lo < hi {
			copy(p[lo-off:hi-off], c.data[lo-c.off:hi-c.off])
		}
	}
	if valid < int64(len(p)) {
		return int(valid), io.EOF
	}
	return len(p), nil
}

// Size is the file's size once the queued writes are written.
func (b *behindFile) Size() (int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	return b.size, nil
}

// Truncate to the size the file has (as SQLite does after every full
// checkpoint) does nothing; growing it extends the file at once; shrinking
// it waits for the queue first.
func (b *behindFile) Truncate(size int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	if size == b.size {
		return nil
	}
	if size < b.size {
		for b.err == nil && len(b.queue) > 0 {
			b.cond.Wait()
		}
		if b.err != nil {
			return b.err
		}
		b.allocated = min(b.allocated, size)
		b.reserveWant = min(b.reserveWant, size) // not the freed space again
	}
	if err := b.f.Truncate(size); err != nil {
		return err
	}
	b.size = size
	return nil
}

// hasRoom reports whether n more bytes fit the queue without waiting.
func (b *behindFile) hasRoom(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.queued == 0 || b.queued+n <= MaxWriteBehindBytes
}

// failed returns the goroutine's failure, if any.
func (b *behindFile) failed() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// flush waits until the queued writes are written (not synced).
func (b *behindFile) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.err == nil && len(b.queue) > 0 {
		b.cond.Wait()
	}
	return b.err
}

// Sync waits until the queued writes and a sync after them are done.
func (b *behindFile) Sync() error {
	return b.waitSync(b.startSync(0, nil))
}

// startSync asks for a sync after the writes queued so far and returns its
// number, for syncDone; with mark, the sync is followed by a write of mark
// at off to the mark file and its sync (both before syncDone says done).
func (b *behindFile) startSync(off int64, mark []byte) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.syncAsked++
	c := behindChunk{sync: true, n: b.syncAsked, off: off}
	if mark != nil {
		c.data = append([]byte(nil), mark...)
	}
	b.queue = append(b.queue, c)
	b.cond.Broadcast()
	return b.syncAsked
}

// syncDone reports whether sync number n is done, and its failure (or any
// earlier one of the goroutine's).
func (b *behindFile) syncDone(n uint64) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return true, b.err
	}
	return b.syncFinished >= n, nil
}

func (b *behindFile) waitSync(n uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.err == nil && b.syncFinished < n {
		b.cond.Wait()
	}
	return b.err
}

// Close writes the queue out, stops the goroutine and closes the file; it
// returns the goroutine's failure, if any.
func (b *behindFile) Close() error {
	b.mu.Lock()
	b.closing = true
	b.cond.Broadcast()
	b.mu.Unlock()
	<-b.exited
	err := b.f.Close()
	if b.err != nil {
		return b.err
	}
	return err
}
