package vfs

/*
#include <stdint.h>
typedef struct dq_vfs dq_vfs;
int dq_detach_store(dq_vfs *v, const char *name, uintptr_t *out);
*/
import "C"

import (
	"errors"
	"fmt"
	"io"
	"runtime/cgo"
	"sync"
	"syscall"
	"unsafe"
)

// File is a database's main file: one file of the node's data directory
// (the same interface as the Raft log's files, so the simulator's faulty
// disk covers both).
type File interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Truncate(size int64) error
	Size() (int64, error)
	Close() error
}

// Marked is a main File with a mark file: a small file of the caller's
// (package fsm keeps there how far the main file goes) that WriteMark and
// StartSync write in order with the main file's own writes. The main
// File's Close closes it too.
type Marked interface {
	MarkFile() File
}

// Files opens databases' main files for a VFS. OpenDatabase is called from
// inside SQLite (on the goroutine that opened a connection) the first time a
// database's main file is needed, and after Detach.
type Files interface {
	OpenDatabase(name string) (File, error)
}

// SQLite result codes the file callbacks return.
const (
	codeOK        = 0
	codeIOErr     = 10
	codeFull      = 13
	codeShortRead = 10 | 2<<8
	codeRead      = 10 | 1<<8
	codeWrite     = 10 | 3<<8
	codeFsync     = 10 | 4<<8
	codeTruncate  = 10 | 6<<8
	codeFstat     = 10 | 7<<8
)

// storeFile is an open main file and the VFS it belongs to.
type storeFile struct {
	v    *VFS
	name string
	f    File
	// unsynced: written or truncated since its last successful sync.
	unsynced bool
	// writes counts the writes; syncGen is the background sync StartSync
	// asked for (a behindFile's), after syncWrites writes.
	writes, syncWrites, syncGen uint64
	// mark is the file's mark file (see Marked; nil: none), and
	// syncMark the mark a file without a goroutine writes after its
	// next FinishSync's sync.
	mark        File
	syncMark    []byte
	syncMarkOff int64
	// failed is the first failed sync, write-back or mark write of a
	// file written at once: as for a goroutine's failure (behindFile),
	// the file is not trusted again, and every later sync and mark fails
	// with it (FileFailed reports it).
	failed error
}

// files is the part of a VFS that the C callbacks reach: the opener, the
// open main files, and the last error one of them returned (SQLite reports
// only a code).
type files struct {
	open Files
	mu   sync.Mutex // the callbacks run on the loop; Close may not
	live map[cgo.Handle]*storeFile
	last error
}

func (v *VFS) noteFileError(s *storeFile, op string, err error) {
	v.files.mu.Lock()
	v.files.last = fmt.Errorf("vfs: %s of database file %q: %w", op, s.name, err)
	v.files.mu.Unlock()
}

// FileError returns (and clears) the last error a database file returned
// to SQLite: SQLite's own error says only "disk I/O error" or "database or
// disk is full".
func (v *VFS) FileError() error {
	if v.files == nil {
		return nil
	}
	v.files.mu.Lock()
	defer v.files.mu.Unlock()
	err := v.files.last
	v.files.last = nil
	return err
}

func storeOf(h C.uintptr_t) *storeFile { return cgo.Handle(h).Value().(*storeFile) }

func ioCode(err error, code int) C.int {
	if errors.Is(err, syscall.ENOSPC) {
		return codeFull
	}
	return C.int(code)
}

//export dqStoreOpen
func dqStoreOpen(vh C.uintptr_t, name *C.char, out *C.uintptr_t) C.int {
	v := cgo.Handle(vh).Value().(*VFS)
	n := C.GoString(name)
	f, err := v.files.open.OpenDatabase(n)
	if err != nil {
		v.files.mu.Lock()
		v.files.last = fmt.Errorf("vfs: opening database file %q: %w", n, err)
		v.files.mu.Unlock()
		return codeIOErr
	}
	var mark File
	if m, ok := f.(Marked); ok {
		mark = m.MarkFile()
	}
	if a, ok := f.(Allocator); ok {
		if sp, ok := v.files.open.(Spawner); ok {
			if spawn := sp.Spawner(); spawn != nil {
				if bf, err := newBehindFile(f, a, mark, spawn); err == nil {
					f = bf // otherwise written at once, as files that are not Allocators
				}
			}
		}
	}
	s := &storeFile{v: v, name: n, f: f, mark: mark}
	h := cgo.NewHandle(s)
	v.files.mu.Lock()
	v.files.live[h] = s
	v.files.mu.Unlock()
	*out = C.uintptr_t(h)
	return codeOK
}

//export dqStoreRead
func dqStoreRead(h C.uintptr_t, p unsafe.Pointer, n C.int, off C.longlong) C.int {
	s := storeOf(h)
	b := unsafe.Slice((*byte)(p), int(n))
	k, err := s.f.ReadAt(b, int64(off))
	if k == len(b) {
		return codeOK
	}
	if err == nil || errors.Is(err, io.EOF) {
		clear(b[k:])
		return codeShortRead
	}
	s.v.noteFileError(s, "read", err)
	return codeRead
}

//export dqStoreWrite
func dqStoreWrite(h C.uintptr_t, p unsafe.Pointer, n C.int, off C.longlong) C.int {
	s := storeOf(h)
	s.unsynced = true // even a failed write may have changed the file
	s.writes++
	if _, err := s.f.WriteAt(unsafe.Slice((*byte)(p), int(n)), int64(off)); err != nil {
		s.v.noteFileError(s, "write", err)
		return ioCode(err, codeWrite)
	}
	return codeOK
}

//export dqStoreTruncate
func dqStoreTruncate(h C.uintptr_t, size C.longlong) C.int {
	s := storeOf(h)
	s.unsynced = true
	s.writes++ // a sync asked for before it does not cover it
	if err := s.f.Truncate(int64(size)); err != nil {
		s.v.noteFileError(s, "truncate", err)
		return ioCode(err, codeTruncate)
	}
	return codeOK
}

//export dqStoreSync
func dqStoreSync(h C.uintptr_t) C.int {
	s := storeOf(h)
	if err := s.f.Sync(); err != nil {
		s.v.noteFileError(s, "sync", err)
		return ioCode(err, codeFsync)
	}
	s.unsynced = false
	return codeOK
}

//export dqStoreSize
func dqStoreSize(h C.uintptr_t, out *C.longlong) C.int {
	s := storeOf(h)
	n, err := s.f.Size()
	if err != nil {
		s.v.noteFileError(s, "size", err)
		return codeFstat
	}
	*out = C.longlong(n)
	return codeOK
}

// closeFiles closes every open main file (the VFS is being destroyed).
func (v *VFS) closeFiles() {
	if v.files == nil {
		return
	}
	v.files.mu.Lock()
	defer v.files.mu.Unlock()
	for h, s := range v.files.live {
		_ = s.f.Close()
		h.Delete()
	}
	v.files.live = nil
}

// Detach closes db's main file and forgets it, and empties its WAL: the next
// connection opened on db asks Files for the file again (after the caller
// replaced it, say). No connection may be open on db.
func (v *VFS) Detach(db string) error {
	var h C.uintptr_t
	rc := withName(db, func(c *C.char) C.int { return C.dq_detach_store(v.c, c, &h) })
	if rc != 0 {
		return &Error{Code: int(rc), Msg: "detaching database file"}
	}
	if h == 0 || v.files == nil {
		return nil
	}
	v.files.mu.Lock()
	s := v.files.live[cgo.Handle(h)]
	delete(v.files.live, cgo.Handle(h))
	v.files.mu.Unlock()
	cgo.Handle(h).Delete()
	if s != nil {
		return s.f.Close()
	}
	return nil
}

// SyncFile makes db's main file durable (what checkpoints wrote to it).
func (v *VFS) SyncFile(db string) error {
	s := v.storeOf(db)
	if s == nil {
		return nil
	}
	if s.failed != nil {
		return s.failed
	}
	if err := s.f.Sync(); err != nil {
		err = fmt.Errorf("vfs: sync of database file %q: %w", db, err)
		if _, ok := s.f.(*behindFile); !ok {
			s.failed, s.syncMark = err, nil
		}
		return err
	}
	s.unsynced = false
	return nil
}

// WriteMark writes p at off of db's mark file (see Marked) and syncs it,
// after every write SQLite made to the main file so far and before any
// later one reaches it: a file whose writes a goroutine carries out queues
// it (a failure then stops the file, as a failed write does; FileFailed),
// another is written now.
func (v *VFS) WriteMark(db string, off int64, p []byte) error {
	s := v.storeOf(db)
	if s == nil {
		return fmt.Errorf("vfs: mark of database %q: its file is not open", db)
	}
	if bf, ok := s.f.(*behindFile); ok {
		return bf.queueMark(off, p)
	}
	if s.failed != nil {
		return s.failed
	}
	if s.syncMark != nil {
		// A sync StartSync asked for, with its mark, comes first (as a
		// file's goroutine would carry them out): marks are durable in
		// the order they were asked for.
		if _, err := v.FinishSync(db); err != nil {
			return err
		}
	}
	if err := writeMark(s.mark, off, p); err != nil {
		s.failed = fmt.Errorf("vfs: database file %q: %w", db, err)
		return s.failed
	}
	return nil
}

// StartSync starts making db's main file durable without waiting: a file
// whose writes a goroutine carries out (see behindFile) is synced by it
// after them; another starts the kernel writing its pages to the disk
// (where the file can: a WriteBack method, as wal.OSFS's files have), so
// that the sync FinishSync then makes has little left to do. With mark,
// the sync is followed by WriteMark(db, markOff, mark), and FinishSync
// says done only once that is durable too.
func (v *VFS) StartSync(db string, markOff int64, mark []byte) error {
	s := v.storeOf(db)
	if s == nil {
		return nil
	}
	if mark != nil && s.mark == nil {
		return fmt.Errorf("vfs: mark of database %q: its file has no mark file", db)
	}
	if bf, ok := s.f.(*behindFile); ok {
		s.syncGen, s.syncWrites = bf.startSync(markOff, mark), s.writes
		return nil
	}
	if s.failed != nil {
		return s.failed
	}
	if s.syncMark != nil {
		// The mark of a sync asked for before is written first, never
		// dropped: marks are durable in the order they were asked for.
		if _, err := v.FinishSync(db); err != nil {
			return err
		}
	}
	if wb, ok := s.f.(interface{ WriteBack(off, n int64) error }); ok {
		size, err := s.f.Size()
		if err != nil {
			return fmt.Errorf("vfs: size of database file %q: %w", db, err)
		}
		if err := wb.WriteBack(0, size); err != nil {
			s.failed = fmt.Errorf("vfs: write-back of database file %q: %w", db, err)
			return s.failed
		}
	}
	s.syncMark, s.syncMarkOff = nil, markOff
	if mark != nil {
		s.syncMark = append([]byte(nil), mark...)
	}
	return nil
}

// FileFailed returns the failure of a write or sync that db's main file's
// goroutine carried out, or of a sync, write-back or mark write of a file
// written at once (nil if none): the file then may miss pages SQLite was
// told it holds, and must not be trusted again.
func (v *VFS) FileFailed(db string) error {
	s := v.storeOf(db)
	if s == nil {
		return nil
	}
	if bf, ok := s.f.(*behindFile); ok {
		if err := bf.failed(); err != nil {
			return fmt.Errorf("vfs: database file %q: %w", db, err)
		}
	}
	return s.failed
}

// FileHasRoom reports whether writing n bytes to db's main file would not
// wait for its goroutine (always, for a file written at once).
func (v *VFS) FileHasRoom(db string, n int64) bool {
	s := v.storeOf(db)
	if s == nil {
		return true
	}
	if bf, ok := s.f.(*behindFile); ok {
		return bf.hasRoom(n)
	}
	return true
}

// FlushFile waits until what SQLite wrote to db's main file is in the file
// itself (a file whose writes a goroutine carries out may hold them
// queued), for a reader that opens the file on its own.
func (v *VFS) FlushFile(db string) error {
	s := v.storeOf(db)
	if s == nil {
		return nil
	}
	if bf, ok := s.f.(*behindFile); ok {
		if err := bf.flush(); err != nil {
			return fmt.Errorf("vfs: database file %q: %w", db, err)
		}
	}
	return nil
}

// FinishSync completes the sync StartSync started: done is false while a
// file's goroutine has not carried it out yet (ask again later); otherwise
// err is its failure. A file without a goroutine is synced now.
func (v *VFS) FinishSync(db string) (done bool, err error) {
	s := v.storeOf(db)
	if s == nil {
		return true, nil
	}
	bf, ok := s.f.(*behindFile)
	if !ok {
		if err := v.SyncFile(db); err != nil {
			return true, err
		}
		if mark := s.syncMark; mark != nil {
			s.syncMark = nil
			if err := writeMark(s.mark, s.syncMarkOff, mark); err != nil {
				s.failed = fmt.Errorf("vfs: database file %q: %w", db, err)
				return true, s.failed
			}
		}
		return true, nil
	}
	done, err = bf.syncDone(s.syncGen)
	if err != nil {
		return true, fmt.Errorf("vfs: sync of database file %q: %w", db, err)
	}
	if done && s.writes == s.syncWrites {
		s.unsynced = false
	}
	return done, nil
}

// FileUnsynced reports whether db's main file was written since its last
// successful sync (what a crash could lose).
func (v *VFS) FileUnsynced(db string) bool {
	s := v.storeOf(db)
	return s != nil && s.unsynced
}

// storeOf returns db's open main file, or nil.
func (v *VFS) storeOf(db string) *storeFile {
	if v.files == nil {
		return nil
	}
	v.files.mu.Lock()
	defer v.files.mu.Unlock()
	for _, s := range v.files.live {
		if s.name == db {
			return s
		}
	}
	return nil
}
