package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/dqlite-go/dqlite/vfs"
	"github.com/dqlite-go/dqlite/wal"
)

// FileInfo describes one database of a data directory's record.
type FileInfo struct {
	Name, File   string
	PageSize     int
	Index, Dirty uint64 // F and dirty (see files.go), the record's or its mark's
	Mark         uint64 // the number of its mark (0: none; see marks.go)
	Bytes        int64
	Pages        uint32 // the header's page count
	Problem      string // "" when the file checks out
}

// Inspection is what InspectFiles found.
type Inspection struct {
	Recorded   bool // a record exists
	Databases  []FileInfo
	Unrecorded []string // database files the record does not name (removed at start)
	Problems   []string // of the record itself
}

var inspectSeq atomic.Uint64

// InspectFiles checks the databases of a data directory against their
// record without changing anything: each named file exists, its header
// agrees with the record's page size and its length, and SQLite's
// quick_check passes on it (through a VFS that refuses writes). It is what
// `dqlited inspect` prints.
func InspectFiles(fs wal.FS) (*Inspection, error) {
	names, err := fs.List()
	if err != nil {
		return nil, err
	}
	ins := &Inspection{}
	rec := &record{dbs: map[string]fileEntry{}}
	for _, n := range names {
		if n != recordName {
			continue
		}
		ins.Recorded = true
		b, err := readFile(fs, n)
		if err == nil {
			rec, err = decodeRecord(b)
		}
		if err != nil {
			ins.Problems = append(ins.Problems, err.Error())
			return ins, nil
		}
	}
	named := map[string]bool{}
	for _, name := range sortedKeys(rec.dbs) {
		e := rec.dbs[name]
		fi := FileInfo{Name: name, File: fileName(e.file), PageSize: e.pageSize, Index: e.index, Dirty: e.dirty}
		named[fi.File], named[markName(e.file)] = true, true
		if m, err := readMark(fs, e.file); err != nil {
			fi.Problem = err.Error()
		} else {
			fi.Mark, fi.Index, fi.Dirty = m.seq, max(fi.Index, m.index), max(fi.Dirty, m.dirty, m.index)
		}
		var problem string
		fi.Bytes, fi.Pages, problem = checkFile(fs, fi.File, e.pageSize)
		if fi.Problem == "" {
			fi.Problem = problem
		}
		if fi.Problem == "" && fi.Bytes > 0 {
			fi.Problem = quickCheck(fs, name, fi.File, e.pageSize)
		}
		ins.Databases = append(ins.Databases, fi)
	}
	for _, n := range names {
		if strings.HasPrefix(n, filePrefix) && (strings.HasSuffix(n, fileSuffix) || strings.HasSuffix(n, markSuffix)) && !named[n] {
			ins.Unrecorded = append(ins.Unrecorded, n)
		}
	}
	return ins, nil
}

func checkFile(fs wal.FS, name string, pageSize int) (int64, uint32, string) {
	f, err := fs.Open(name)
	if err != nil {
		return 0, 0, fmt.Sprintf("missing: %v", err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return 0, 0, err.Error()
	}
	if size == 0 {
		return 0, 0, ""
	}
	h := make([]byte, 100)
	if _, err := f.ReadAt(h, 0); err != nil {
		return size, 0, fmt.Sprintf("reading its header: %v", err)
	}
	if string(h[:16]) != "SQLite format 3\x00" {
		return size, 0, "not an SQLite database file"
	}
	ps := int(binary.BigEndian.Uint16(h[16:]))
	if ps == 1 {
		ps = 65536
	}
	pages := binary.BigEndian.Uint32(h[28:])
	switch {
	case ps != pageSize:
		return size, pages, fmt.Sprintf("page size %d, the record says %d", ps, pageSize)
	case size%int64(ps) != 0:
		return size, pages, fmt.Sprintf("%d bytes: not whole pages of %d", size, ps)
	case int64(pages)*int64(ps) > size:
		// A checkpoint cut short: the replay at start completes it.
		return size, pages, ""
	}
	return size, pages, ""
}

// readOnlyFiles opens database files for reading only.
type readOnlyFiles struct {
	fs    wal.FS
	files map[string]string // database name -> file name
}

func (r readOnlyFiles) OpenDatabase(name string) (vfs.File, error) {
	f, err := r.fs.Open(r.files[name])
	if err != nil {
		return nil, err
	}
	return readOnlyFile{f}, nil
}

type readOnlyFile struct{ vfs.File }

var errReadOnly = errors.New("fsm: inspection is read-only")

func (readOnlyFile) WriteAt([]byte, int64) (int, error) { return 0, errReadOnly }
func (readOnlyFile) Truncate(int64) error               { return errReadOnly }
func (readOnlyFile) Sync() error                        { return nil }

// quickCheck runs PRAGMA quick_check on a file, read only.
func quickCheck(fs wal.FS, name, file string, pageSize int) string {
	v, err := vfs.NewFiles(fmt.Sprintf("inspect-%d", inspectSeq.Add(1)), 1, readOnlyFiles{fs, map[string]string{name: file}})
	if err != nil {
		return err.Error()
	}
	defer v.Close()
	c, err := v.Open(name, pageSize)
	if err != nil {
		return fmt.Sprintf("opening it: %v", err)
	}
	defer c.Close()
	rows, err := c.Query("PRAGMA quick_check")
	if err != nil {
		return fmt.Sprintf("quick_check: %v", err)
	}
	if len(rows) == 0 || rows[0][0] != "ok" {
		return fmt.Sprintf("quick_check: %v", rows)
	}
	return ""
}
