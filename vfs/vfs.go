package vfs

/*
#cgo CFLAGS: -O2 -Wall
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-in-object-files
#include <stdlib.h>
#include "sqlite3min.h"
#include "vfs.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/cgo"
	"unsafe"

	// The SQLite library itself: its amalgamation is compiled into every
	// binary that imports it, and our C code links against it.
	_ "github.com/mattn/go-sqlite3"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

// Error is an error returned by SQLite, with its extended result code.
type Error struct {
	Code int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("sqlite: %s (code %d)", e.Msg, e.Code) }

// Primary result codes callers test for.
const (
	CodeBusy      = 5
	CodeInterrupt = 9
)

// IsBusy reports whether err is SQLite's busy error (a write is pending).
func IsBusy(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code&0xff == CodeBusy
}

// ErrNoPending is returned by Poll, Apply and Abort when the database has no
// captured transaction.
var ErrNoPending = errors.New("vfs: no pending transaction")

// VFS is one node's SQLite file system: the databases' WALs and WAL
// indexes in memory, their main files in memory too or, with Files, in
// files of the node's data directory. Not safe for concurrent use: the
// node's loop calls it from one goroutine.
type VFS struct {
	c     *C.dq_vfs
	name  *C.char
	h     cgo.Handle // of v, for the file callbacks (with files)
	files *files
}

// New registers a VFS under name whose databases live in memory only.
// Randomness SQLite draws from it (when it is the default VFS at the
// process's first draw) comes from seed.
func New(name string, seed uint64, makeDefault bool) (*VFS, error) {
	return register(name, seed, makeDefault, nil)
}

// NewFiles registers a VFS under name whose databases' main files are
// opened through fs (see Files): the pages live there and in SQLite's page
// cache, not in this process's heap.
func NewFiles(name string, seed uint64, fs Files) (*VFS, error) {
	if fs == nil {
		return nil, errors.New("vfs: NewFiles without Files")
	}
	return register(name, seed, false, fs)
}

func register(name string, seed uint64, makeDefault bool, fs Files) (*VFS, error) {
	cname := C.CString(name)
	def := C.int(0)
	if makeDefault {
		def = 1
	}
	v := &VFS{name: cname}
	var gh C.uintptr_t
	if fs != nil {
		v.files = &files{open: fs, live: map[cgo.Handle]*storeFile{}}
		v.h = cgo.NewHandle(v)
		gh = C.uintptr_t(v.h)
	}
	c := C.dq_vfs_new(cname, C.ulonglong(seed), def, gh)
	if c == nil {
		C.free(unsafe.Pointer(cname))
		if v.h != 0 {
			v.h.Delete()
		}
		return nil, fmt.Errorf("vfs: registering %q failed", name)
	}
	v.c = c
	return v, nil
}

// Close unregisters the VFS, frees its databases and closes their files.
// Every connection must be closed first.
func (v *VFS) Close() {
	C.dq_vfs_destroy(v.c)
	C.free(unsafe.Pointer(v.name))
	v.closeFiles()
	if v.h != 0 {
		v.h.Delete()
	}
}

// SetTime sets the clock SQLite reads (datetime('now') and friends), in
// Unix milliseconds. The node sets it from its own clock before running
// statements, so replicas never depend on their own clocks.
func (v *VFS) SetTime(unixMs int64) { C.dq_vfs_set_time(v.c, C.longlong(unixMs)) }

// Frames is a write transaction's pages as captured from the WAL.
type Frames struct {
	PageSize    int
	DBSize      uint32 // database size in pages after the transaction
	PageNumbers []uint32
	Pages       [][]byte
	// Contiguous, when its length is len(Pages) pages, holds the same
	// pages one after another (a decoded entry's): ApplyFrames hands it to
	// C as it is.
	Contiguous []byte
}

func withName[T any](db string, f func(*C.char) T) T {
	c := C.CString(db)
	defer C.free(unsafe.Pointer(c))
	return f(c)
}

// Pending reports whether db holds a captured, not yet applied transaction.
func (v *VFS) Pending(db string) bool {
	return withName(db, func(c *C.char) bool { return C.dq_pending(v.c, c) != 0 })
}

// Poll returns (a copy of) the pending transaction's frames.
func (v *VFS) Poll(db string) (*Frames, error) { return v.poll(db, true) }

// PollView is Poll without the copy: the pages are the capture's memory,
// valid until the next Apply or Abort of db (or the VFS's Close). The
// leader encodes them into its entry at once.
func (v *VFS) PollView(db string) (*Frames, error) { return v.poll(db, false) }

func (v *VFS) poll(db string, copyPages bool) (*Frames, error) {
	var out C.dq_frames
	rc := withName(db, func(c *C.char) C.int { return C.dq_poll(v.c, c, &out) })
	if rc == 12 { // SQLITE_NOTFOUND
		return nil, ErrNoPending
	}
	if rc != 0 {
		return nil, fmt.Errorf("vfs: poll %s: malformed capture (code %d)", db, rc)
	}
	ps := int(out.page_size)
	n := int(out.count)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(out.frames)), n*(24+ps))
	f := &Frames{PageSize: ps, DBSize: uint32(out.db_size), PageNumbers: make([]uint32, n), Pages: make([][]byte, n)}
	for i := 0; i < n; i++ {
		h := raw[i*(24+ps):]
		f.PageNumbers[i] = uint32(h[0])<<24 | uint32(h[1])<<16 | uint32(h[2])<<8 | uint32(h[3])
		f.Pages[i] = h[24 : 24+ps : 24+ps]
		if copyPages {
			f.Pages[i] = append([]byte(nil), f.Pages[i]...)
		}
	}
	if n >= 2 && mutant.On(mutant.VFSCaptureDropsPage) {
		// The deliberate bug: the first frame is left out of what is
		// replicated (the local database keeps it: Apply uses the capture).
		f.PageNumbers, f.Pages = f.PageNumbers[1:], f.Pages[1:]
	}
	if mutant.On(mutant.VFSCaptureNoSize) {
		// The deliberate bug: the size is read from the first frame's
		// header, not the commit frame's (0 unless the transaction wrote
		// one page).
		f.DBSize = uint32(raw[4])<<24 | uint32(raw[5])<<16 | uint32(raw[6])<<8 | uint32(raw[7])
	}
	return f, nil
}

// Apply makes the pending transaction visible (after Raft committed it).
func (v *VFS) Apply(db string) error {
	return v.pendingOp(db, func(c *C.char) C.int { return C.dq_apply(v.c, c) })
}

// Abort drops the pending transaction: it was never visible.
func (v *VFS) Abort(db string) error {
	return v.pendingOp(db, func(c *C.char) C.int { return C.dq_abort(v.c, c) })
}

func (v *VFS) pendingOp(db string, f func(*C.char) C.int) error {
	switch rc := withName(db, f); rc {
	case 0:
		return nil
	case 12:
		return ErrNoPending
	default:
		return &Error{Code: int(rc), Msg: "applying pending transaction"}
	}
}

// ApplyFrames appends replicated frames to db's WAL (on a follower, or for
// a transaction this node did not originate) and makes them visible to the
// next transaction.
func (v *VFS) ApplyFrames(db string, f *Frames) error {
	n := len(f.Pages)
	if n == 0 || len(f.PageNumbers) != n {
		return fmt.Errorf("vfs: apply %d pages with %d page numbers", n, len(f.PageNumbers))
	}
	for i, p := range f.Pages {
		if len(p) != f.PageSize {
			return fmt.Errorf("vfs: page %d has %d bytes, page size %d", f.PageNumbers[i], len(p), f.PageSize)
		}
	}
	// The pages of a decoded entry lie one after another in it: C reads
	// them there (Go memory holding no Go pointers, not kept past the
	// call), instead of from two copies (8-22 ms of a 10 MB entry's apply
	// was mostly copying and the page faults of fresh buffers).
	var pages unsafe.Pointer
	if len(f.Contiguous) == n*f.PageSize {
		pages = unsafe.Pointer(&f.Contiguous[0])
	} else {
		all := make([]byte, 0, n*f.PageSize)
		for _, p := range f.Pages {
			all = append(all, p...)
		}
		pages = unsafe.Pointer(&all[0])
	}
	rc := withName(db, func(c *C.char) C.int {
		return C.dq_apply_frames(v.c, c, C.int(f.PageSize), C.int(n), (*C.uint32_t)(unsafe.Pointer(&f.PageNumbers[0])),
			(*C.uchar)(pages), C.uint32_t(f.DBSize))
	})
	runtime.KeepAlive(f)
	if rc != 0 {
		return &Error{Code: int(rc), Msg: "applying replicated frames"}
	}
	return nil
}

// Image returns db as of its last applied commit, as a database file: the
// main file with the committed WAL frames laid over it. No checkpoint is
// needed (one would stop part way while a reader holds an old snapshot).
// An empty image is a database never written.
func (v *VFS) Image(db string) ([]byte, error) {
	var size C.longlong
	p := withName(db, func(c *C.char) *C.uchar { return C.dq_image(v.c, c, &size) })
	if p == nil {
		if err := v.FileError(); err != nil {
			return nil, fmt.Errorf("vfs: image of %s: %w", db, err)
		}
		return nil, fmt.Errorf("vfs: image of %s: out of memory or no such database", db)
	}
	defer C.free(unsafe.Pointer(p))
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(p)), int64(size))...), nil
}

// AppendWAL appends db's WAL as SQLite wrote it to dst (nothing when it is
// empty): a redo journal of what the next checkpoint copies into the main
// file. ParseWAL reads it back. It fails while a write is pending.
func (v *VFS) AppendWAL(dst []byte, db string) ([]byte, error) {
	var p *C.uchar
	var size C.longlong
	rc := withName(db, func(c *C.char) C.int { return C.dq_wal_copy(v.c, c, &p, &size) })
	if rc != 0 {
		return dst, &Error{Code: int(rc), Msg: "copying the WAL of " + db}
	}
	if p == nil {
		return dst, nil
	}
	defer C.free(unsafe.Pointer(p))
	return append(dst, unsafe.Slice((*byte)(unsafe.Pointer(p)), int64(size))...), nil
}

// ImageBound is at least the size of db's image (Image): its main file's
// size plus its WAL's.
func (v *VFS) ImageBound(db string) (int64, error) {
	var size C.longlong
	rc := withName(db, func(c *C.char) C.int { return C.dq_image_bound(v.c, c, &size) })
	if rc != 0 {
		return 0, fmt.Errorf("vfs: size of %s: code %d", db, int(rc))
	}
	return int64(size), nil
}

// WALSize returns the size of db's WAL in bytes.
func (v *VFS) WALSize(db string) int64 {
	var size C.longlong
	withName(db, func(c *C.char) C.int { return C.dq_wal_size(v.c, c, &size) })
	return int64(size)
}

// WALMemory is the memory db's WAL holds allocated, with the room of its
// capture: at least WALSize. A database whose main file is a File keeps
// the room of its largest recent transaction until Trim finds it idle;
// otherwise a TRUNCATE checkpoint that empties the WAL leaves at most
// 4 MiB.
func (v *VFS) WALMemory(db string) int64 {
	var size C.longlong
	withName(db, func(c *C.char) C.int { return C.dq_wal_memory(v.c, c, &size) })
	return int64(size)
}

// Trim gives back the WAL and capture room that databases with a main
// File have kept (see WALMemory) once idleTicks calls in a row found no
// write and no replicated frames on them; an emptied WAL keeps at most
// 4 MiB. Files written by a goroutine drop their pooled buffers the same
// way. The node calls it once a tick. It returns the WAL bytes freed.
func (v *VFS) Trim(idleTicks int) int64 {
	if v.files != nil {
		v.files.mu.Lock()
		for _, s := range v.files.live {
			if bf, ok := s.f.(*behindFile); ok {
				bf.trim(idleTicks)
			}
		}
		v.files.mu.Unlock()
	}
	return int64(C.dq_trim(v.c, C.int(idleTicks)))
}

// Restore replaces db with an image. No connection may be inside a
// transaction; connections should be reopened afterwards.
func (v *VFS) Restore(db string, image []byte) error {
	if len(image) == 0 {
		return errors.New("vfs: restore of an empty image")
	}
	p := C.CBytes(image)
	defer C.free(p)
	rc := withName(db, func(c *C.char) C.int { return C.dq_restore(v.c, c, (*C.uchar)(p), C.longlong(len(image))) })
	if rc != 0 {
		return &Error{Code: int(rc), Msg: "restoring database image"}
	}
	return nil
}

// Clear empties db (its file and WAL), as a database never written. No
// connection may be open on it.
func (v *VFS) Clear(db string) error {
	rc := withName(db, func(c *C.char) C.int { return C.dq_clear(v.c, c) })
	if rc != 0 {
		return &Error{Code: int(rc), Msg: "clearing database"}
	}
	return nil
}

// LibVersion is the version of the linked SQLite.
func LibVersion() string { return C.GoString(C.sqlite3_libversion()) }
