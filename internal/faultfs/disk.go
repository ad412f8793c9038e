// Package faultfs is an in-memory directory with the faults of a real disk
// (lost unsynced data, torn writes, EIO, ENOSPC, crashes at an operation),
// for the simulator and the tests of what lives on disk.
package faultfs

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"syscall"

	"github.com/dqlite-go/dqlite/wal"
)

// ErrCrashed is returned by every operation of a Disk past its crash point.
var ErrCrashed = errors.New("sim: disk crashed")

// Disk is a simulated directory implementing wal.FS. It models what a real
// disk and file system do to unsynced data on a crash:
//
//   - file contents revert to what was last synced, except that a random
//     prefix of bytes appended since may survive (a torn write);
//   - the directory reverts to the entries it had at the last SyncDir
//     (creations, renames and removals not followed by one are undone).
//
// Faults can be injected: EIO on any mutating operation or on a read, ENOSPC past a
// capacity, a crash at operation N (every operation from then on fails with
// ErrCrashed until Crash is called), and bit flips. It is single-threaded.
type Disk struct {
	rng     *rand.Rand
	dir     map[string]*inode // current directory
	durable map[string]*inode // directory as of the last SyncDir
	gen     int               // bumped at each crash: older handles are dead

	ops     int // mutating operations so far
	crashAt int // crash at this operation (0: never)
	// crashAtSegSync crashes at the next sync of a log segment: after its
	// write, before it is durable (a torn batch).
	crashAtSegSync bool
	// crashPrefix and crashPrefixN: crash at the crashPrefixN-th operation
	// on a file named crashPrefix... ("": off).
	crashPrefix  string
	crashPrefixN int
	failAt       int   // fail this operation with failErr (0: never)
	failErr      error // EIO by default
	// EIORate fails each mutating operation with this probability.
	EIORate float64
	// Capacity bounds the total bytes of all files (0: unlimited).
	Capacity int64
	// reads counts reads; readFailAt fails that one with EIO, and
	// corruptReadAt returns a flipped bit from that read of a log segment
	// (the file itself stays intact), 0: never.
	reads, readFailAt, corruptReadAt int
	// ReadEIOs and CorruptReads count the read faults that happened.
	ReadEIOs, CorruptReads int

	// OnFault, when set, is called as each fault strikes: kind "crash"
	// (the operation at the crash point), "eio", "enospc" or "torn" (a
	// crash tore unsynced writes), with the file's name.
	OnFault func(kind, name string)

	// Counts of faults injected.
	Crashes, TornWrites, LostFiles, EIOs, NoSpace, BitFlips int
}

// Sector is the unit a database file is torn at (see SectorFileSuffix).
const Sector = 512

// SectorFileSuffix ends the names of files a crash tears only at sector
// boundaries (database files); every other file may be torn at any byte.
const SectorFileSuffix = ".db"

type inode struct {
	name   string // the name it was created with
	data   []byte
	synced []byte
	// dirtyFrom is the lowest offset written or truncated since the last
	// sync (len(synced) when only appends happened), so a sync copies only
	// what changed.
	dirtyFrom int
}

// NewDisk returns an empty disk whose random choices come from seed.
func NewDisk(seed uint64) *Disk {
	return &Disk{rng: rand.New(rand.NewPCG(seed, 0xd15c)), dir: map[string]*inode{}, durable: map[string]*inode{}}
}

// CrashAt makes operation n (counting mutating operations from now) and
// every later one fail with ErrCrashed.
func (d *Disk) CrashAt(n int) { d.crashAt = d.ops + n }

// CrashAtFile makes the nth mutating operation (from now) on a file whose
// name starts with prefix crash the disk: a crash at a chosen point of
// the work on such files (a checkpoint, a record switch).
func (d *Disk) CrashAtFile(prefix string, n int) { d.crashPrefix, d.crashPrefixN = prefix, n }

// CrashAtSegmentSync makes the next sync of a log segment crash the disk
// (the write before it happened: a crash in the middle of an append).
func (d *Disk) CrashAtSegmentSync() { d.crashAtSegSync = true }

// FailAt makes operation n (from now) fail with err (EIO if nil).
func (d *Disk) FailAt(n int, err error) {
	if err == nil {
		err = syscall.EIO
	}
	d.failAt, d.failErr = d.ops+n, err
}

// ClearFaults cancels pending crash and failure points and lifts the
// capacity limit.
func (d *Disk) ClearFaults() {
	d.crashAt, d.failAt, d.Capacity, d.EIORate, d.crashAtSegSync = 0, 0, 0, 0, false
	d.readFailAt, d.corruptReadAt = 0, 0
}

// FailReadAt makes read n (counting reads from now) fail with EIO.
func (d *Disk) FailReadAt(n int) { d.readFailAt = d.reads + n }

// CorruptReadAt makes read n (from now) of a log segment return one bit
// flipped (the first segment read from then on, if read n is of another
// file).
func (d *Disk) CorruptReadAt(n int) { d.corruptReadAt = d.reads + n }

// ClearReadFault cancels pending read faults.
func (d *Disk) ClearReadFault() { d.readFailAt, d.corruptReadAt = 0, 0 }

// Ops returns the number of mutating operations so far.
func (d *Disk) Ops() int { return d.ops }

// Crash applies a crash: unsynced data and directory entries are lost
// (with torn tails), and every open handle dies.
func (d *Disk) Crash() {
	d.Crashes++
	d.gen++
	d.crashAt = 0
	d.crashAtSegSync = false
	d.crashPrefix = ""
	d.failAt = 0
	for name, ino := range d.dir {
		if d.durable[name] != ino {
			d.LostFiles++
		}
	}
	seen := map[*inode]bool{}
	names := make([]string, 0, len(d.durable))
	for n := range d.durable {
		names = append(names, n)
	}
	sort.Strings(names)
	d.dir = map[string]*inode{}
	for _, n := range names {
		ino := d.durable[n]
		d.dir[n] = ino
		if seen[ino] {
			continue
		}
		seen[ino] = true
		d.revert(ino)
	}
}

// revert keeps the synced content plus a random prefix of what was
// written since, from the lowest offset written (the unsynced writes reach
// the platter in order, the last one torn): an append keeps part of its
// tail, an overwrite of preallocated space part of its new bytes. An
// unsynced truncation is undone.
func (d *Disk) revert(ino *inode) {
	keep := append([]byte(nil), ino.synced...)
	from := min(ino.dirtyFrom, len(ino.synced), len(ino.data))
	if tail := ino.data[from:]; len(tail) > 0 && string(tail) != string(ino.synced[from:min(len(ino.synced), len(ino.data))]) {
		n := d.rng.IntN(len(tail) + 1)
		if strings.HasSuffix(ino.name, SectorFileSuffix) {
			// A database file: sectors are written whole (what SQLite
			// assumes of the disk, and we declare: powersafe
			// overwrite), so a tear falls between sectors.
			n -= n % Sector
		}
		if n > 0 && n < len(tail) {
			d.TornWrites++
			d.fault("torn", ino.name)
		}
		if n == len(tail) {
			n = 0 // all of it reached the disk only if synced: lose it whole or tear it
		}
		if end := from + n; end > len(keep) {
			keep = append(keep, make([]byte, end-len(keep))...)
		}
		copy(keep[from:], tail[:n])
	}
	ino.data, ino.synced = keep, append([]byte(nil), keep...)
	ino.dirtyFrom = len(keep)
}

// Crashed reports whether the crash point was reached (the caller then
// calls Crash).
func (d *Disk) Crashed() bool { return d.crashAt > 0 && d.ops >= d.crashAt }

// FlipBit flips one bit of a file's durable and current content.
func (d *Disk) FlipBit(name string, off int64, bit uint) error {
	ino := d.dir[name]
	if ino == nil || off >= int64(len(ino.data)) {
		return fmt.Errorf("sim: no byte %d in %s", off, name)
	}
	ino.data[off] ^= 1 << (bit % 8)
	if off < int64(len(ino.synced)) {
		ino.synced[off] ^= 1 << (bit % 8)
	}
	d.BitFlips++
	return nil
}

// Size returns a file's current size (for tests).
func (d *Disk) Size(name string) int64 {
	if ino := d.dir[name]; ino != nil {
		return int64(len(ino.data))
	}
	return -1
}

// op counts a mutating operation and injects crashes and failures.
func (d *Disk) op(name string) error {
	d.ops++
	if d.crashPrefix != "" && strings.HasPrefix(name, d.crashPrefix) {
		if d.crashPrefixN--; d.crashPrefixN <= 0 {
			d.crashPrefix = ""
			d.crashAt = d.ops
		}
	}
	switch {
	case d.crashAt > 0 && d.ops >= d.crashAt:
		if d.ops == d.crashAt {
			d.fault("crash", name)
		}
		return ErrCrashed
	case d.failAt > 0 && d.ops == d.failAt:
		d.EIOs++
		d.fault("eio", name)
		return d.failErr
	case d.EIORate > 0 && d.rng.Float64() < d.EIORate:
		d.EIOs++
		d.fault("eio", name)
		return syscall.EIO
	}
	return nil
}

// fault tells OnFault (if set) that a fault of kind hit file name.
func (d *Disk) fault(kind, name string) {
	if d.OnFault != nil {
		d.OnFault(kind, name)
	}
}

// Used returns the bytes held by all files.
func (d *Disk) Used() int64 { return d.used() }

func (d *Disk) used() int64 {
	var n int64
	seen := map[*inode]bool{}
	for _, ino := range d.dir {
		if !seen[ino] {
			seen[ino] = true
			n += int64(len(ino.data))
		}
	}
	return n
}

type diskFile struct {
	d    *Disk
	ino  *inode
	name string
	gen  int
}

func (d *Disk) Create(name string) (wal.File, error) {
	if err := d.op(name); err != nil {
		return nil, err
	}
	ino := &inode{name: name}
	d.dir[name] = ino
	return &diskFile{d: d, ino: ino, name: name, gen: d.gen}, nil
}

func (d *Disk) Open(name string) (wal.File, error) {
	if d.crashAt > 0 && d.ops >= d.crashAt {
		return nil, ErrCrashed
	}
	ino := d.dir[name]
	if ino == nil {
		return nil, fmt.Errorf("sim: open %s: %w", name, syscall.ENOENT)
	}
	return &diskFile{d: d, ino: ino, name: name, gen: d.gen}, nil
}

func (d *Disk) Remove(name string) error {
	if err := d.op(name); err != nil {
		return err
	}
	if d.dir[name] == nil {
		return fmt.Errorf("sim: remove %s: %w", name, syscall.ENOENT)
	}
	delete(d.dir, name)
	return nil
}

func (d *Disk) Rename(oldName, newName string) error {
	if err := d.op(oldName); err != nil {
		return err
	}
	ino := d.dir[oldName]
	if ino == nil {
		return fmt.Errorf("sim: rename %s: %w", oldName, syscall.ENOENT)
	}
	delete(d.dir, oldName)
	d.dir[newName] = ino
	return nil
}

func (d *Disk) List() ([]string, error) {
	names := make([]string, 0, len(d.dir))
	for n := range d.dir {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

func (d *Disk) SyncDir() error {
	if err := d.op(""); err != nil {
		return err
	}
	d.durable = make(map[string]*inode, len(d.dir))
	for n, ino := range d.dir {
		d.durable[n] = ino
	}
	return nil
}

func (f *diskFile) live() error {
	if f.gen != f.d.gen {
		return ErrCrashed
	}
	return nil
}

func (f *diskFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.live(); err != nil {
		return 0, err
	}
	f.d.reads++
	if f.d.readFailAt > 0 && f.d.reads == f.d.readFailAt {
		f.d.readFailAt = 0
		f.d.ReadEIOs++
		return 0, syscall.EIO
	}
	if off >= int64(len(f.ino.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.ino.data[off:])
	if d := f.d; d.corruptReadAt > 0 && d.reads >= d.corruptReadAt && n > 0 && strings.HasPrefix(f.name, "seg-") {
		d.corruptReadAt = 0
		d.CorruptReads++
		p[d.rng.IntN(n)] ^= 1 << d.rng.IntN(8)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *diskFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.live(); err != nil {
		return 0, err
	}
	if err := f.d.op(f.name); err != nil {
		return 0, err
	}
	end := off + int64(len(p))
	if grow := end - int64(len(f.ino.data)); grow > 0 && f.d.Capacity > 0 && f.d.used()+grow > f.d.Capacity {
		f.d.NoSpace++
		f.d.fault("enospc", f.name)
		return 0, syscall.ENOSPC
	}
	if end > int64(len(f.ino.data)) {
		f.ino.data = append(f.ino.data, make([]byte, end-int64(len(f.ino.data)))...)
	}
	copy(f.ino.data[off:], p)
	f.ino.dirtyFrom = min(f.ino.dirtyFrom, int(off))
	return len(p), nil
}

func (f *diskFile) Sync() error {
	if err := f.live(); err != nil {
		return err
	}
	if f.d.crashAtSegSync && strings.HasPrefix(f.name, "seg-") && f.d.durable[f.name] == f.ino &&
		f.ino.dirtyFrom < len(f.ino.data) {
		// (Not a new segment's first sync, nor the one closing a
		// segment after cutting its preallocated tail.)
		f.d.crashAtSegSync = false
		f.d.crashAt = f.d.ops + 1 // this operation
	}
	if err := f.d.op(f.name); err != nil {
		return err
	}
	ino := f.ino
	from := min(ino.dirtyFrom, len(ino.synced), len(ino.data))
	ino.synced = append(ino.synced[:from], ino.data[from:]...)
	ino.dirtyFrom = len(ino.synced)
	return nil
}

func (f *diskFile) Truncate(size int64) error {
	if err := f.live(); err != nil {
		return err
	}
	if err := f.d.op(f.name); err != nil {
		return err
	}
	f.ino.dirtyFrom = min(f.ino.dirtyFrom, int(size))
	if size < int64(len(f.ino.data)) {
		f.ino.data = f.ino.data[:size]
	} else {
		f.ino.data = append(f.ino.data, make([]byte, size-int64(len(f.ino.data)))...)
	}
	return nil
}

func (f *diskFile) Size() (int64, error) {
	if err := f.live(); err != nil {
		return 0, err
	}
	return int64(len(f.ino.data)), nil
}

func (f *diskFile) Close() error { return nil }

// Unsynced names a file whose current content or directory entry a crash
// now could lose ("" when everything present is durable). Unsynced removals
// and truncations are not counted: a file or tail coming back after a crash
// loses nothing written. Database files (SectorFileSuffix) are not
// counted either: they are caches of the log, synced at checkpoints.
func (d *Disk) Unsynced() string {
	var worst string
	for name, ino := range d.dir {
		if strings.HasSuffix(name, SectorFileSuffix) {
			continue
		}
		lost := d.durable[name] != ino || len(ino.data) > len(ino.synced) ||
			(ino.dirtyFrom < len(ino.data) && string(ino.data[ino.dirtyFrom:]) != string(ino.synced[ino.dirtyFrom:len(ino.data)]))
		if lost {
			if worst == "" || name < worst {
				worst = name // the smallest name, for a deterministic report
			}
		}
	}
	return worst
}
