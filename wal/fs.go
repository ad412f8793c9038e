package wal

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"syscall"
)

// File is an open file of the log's directory.
type File interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Truncate(size int64) error
	Size() (int64, error)
	Close() error
}

// FS is every file operation the log does, all inside one directory. Names
// are plain file names. The simulator supplies an implementation with
// faults; OSFS is the real one.
type FS interface {
	// Create creates (or truncates) a file for reading and writing.
	Create(name string) (File, error)
	// Open opens an existing file for reading and writing.
	Open(name string) (File, error)
	Remove(name string) error
	Rename(oldName, newName string) error
	// List returns the names of the files in the directory, sorted.
	List() ([]string, error)
	// SyncDir makes creations, renames and removals durable.
	SyncDir() error
}

// OSFS is an FS over a real directory.
type OSFS struct{ Dir string }

// NewOSFS creates dir if needed and returns an FS over it.
func NewOSFS(dir string) (*OSFS, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("wal: creating data directory: %w", err)
	}
	return &OSFS{Dir: dir}, nil
}

type osFile struct{ *os.File }

func (f osFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Sync uses fdatasync: file sizes are covered by it, and metadata such as
// modification times do not matter here.
func (f osFile) Sync() error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if !errors.Is(err, syscall.EINTR) {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}

// Allocate reserves the disk space of [off, off+n) (fallocate(2) with
// FALLOC_FL_KEEP_SIZE: the file's size does not change), so that writes
// into it cannot fail for want of space.
func (f osFile) Allocate(off, n int64) error {
	const keepSize = 1 // FALLOC_FL_KEEP_SIZE
	for {
		err := syscall.Fallocate(int(f.Fd()), keepSize, off, n)
		if !errors.Is(err, syscall.EINTR) {
			if err != nil {
				return &os.PathError{Op: "fallocate", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}

// WriteBacker is a File that can have a range of its written data sent to
// the disk without waiting for it (a later Sync then has little left to
// write), as a receiver of a large file wants so that no single sync is
// long. OSFS's files are WriteBackers.
type WriteBacker interface {
	// WriteBack waits until the data before off that earlier calls
	// started is on its way (so at most two ranges are in flight), then
	// starts writing [off, off+n). It promises no durability: Sync does.
	WriteBack(off, n int64) error
}

// WriteBack uses sync_file_range(2): SYNC_FILE_RANGE_WAIT_BEFORE|WRITE|
// WAIT_AFTER over [0, off), then SYNC_FILE_RANGE_WRITE over [off, off+n).
func (f osFile) WriteBack(off, n int64) error {
	const (
		waitBefore = 1 // SYNC_FILE_RANGE_WAIT_BEFORE
		write      = 2 // SYNC_FILE_RANGE_WRITE
		waitAfter  = 4 // SYNC_FILE_RANGE_WAIT_AFTER
	)
	call := func(off, n int64, flags int) error {
		for {
			_, _, e := syscall.Syscall6(syscall.SYS_SYNC_FILE_RANGE, f.Fd(), uintptr(off), uintptr(n), uintptr(flags), 0, 0)
			if e == syscall.EINTR {
				continue
			}
			if e != 0 {
				return &os.PathError{Op: "sync_file_range", Path: f.Name(), Err: e}
			}
			return nil
		}
	}
	if off > 0 {
		if err := call(0, off, waitBefore|write|waitAfter); err != nil {
			return err
		}
	}
	return call(off, n, write)
}

func (fs *OSFS) Create(name string) (File, error) {
	f, err := os.OpenFile(filepath.Join(fs.Dir, name), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (fs *OSFS) Open(name string) (File, error) {
	f, err := os.OpenFile(filepath.Join(fs.Dir, name), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (fs *OSFS) Remove(name string) error { return os.Remove(filepath.Join(fs.Dir, name)) }

func (fs *OSFS) Rename(oldName, newName string) error {
	return os.Rename(filepath.Join(fs.Dir, oldName), filepath.Join(fs.Dir, newName))
}

func (fs *OSFS) List() ([]string, error) {
	ents, err := os.ReadDir(fs.Dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

func (fs *OSFS) SyncDir() error {
	d, err := os.Open(fs.Dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
