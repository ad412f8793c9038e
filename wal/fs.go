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
