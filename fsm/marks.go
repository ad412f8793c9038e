package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"syscall"

	"github.com/dqlite-go/dqlite/vfs"
	"github.com/dqlite-go/dqlite/wal"
)

// Marks: how far a recorded database file goes, written without the loop
// waiting for the disk.
//
// The record (files.go) is replaced with a sync, a rename and a directory
// sync: 10-80 ms on a busy disk, which the loop would wait for twice per
// checkpoint (the dirty index before the copy, F after the sync). So each
// database file has a mark file beside it ("sqlite-<id>.mark"), written in
// place by the file's own writer, in order with the file's writes (see
// vfs.WriteMark): the dirty index is durable before the first page of the
// checkpoint that needs it reaches the file, and F is written after the
// file's sync and durable before the loop hears that the sync is done.
//
// The mark file has two slots of markSlotBytes; mark number n goes to slot
// n%2, each written and synced only after the one before it is durable,
// so a write cut short by a crash tears only the newer slot, which nothing
// relied on yet. At open, the valid slot with the larger number is the
// file's mark; the record's own index and dirty are a floor under it
// (files the record names are created, replaced and dropped by the
// record, never by a mark).

const (
	markSuffix    = ".mark"
	markMagic     = "DQMARK01"
	markSlotBytes = 4096 // a slot to a page: a torn write tears one
	markBytes     = 8 + 8 + 8 + 8 + 4
)

func markName(id uint64) string { return fmt.Sprintf("%s%016x%s", filePrefix, id, markSuffix) }

// mark is one slot's content.
type mark struct {
	seq          uint64
	index, dirty uint64
}

func (m mark) encode() []byte {
	b := append(make([]byte, 0, markBytes), markMagic...)
	b = binary.LittleEndian.AppendUint64(b, m.seq)
	b = binary.LittleEndian.AppendUint64(b, m.index)
	b = binary.LittleEndian.AppendUint64(b, m.dirty)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// decodeMark decodes a slot: ok false for one never written (zeros) or
// torn.
func decodeMark(b []byte) (m mark, ok bool) {
	if len(b) < markBytes || string(b[:8]) != markMagic ||
		crc32.Checksum(b[:markBytes-4], castagnoli) != binary.LittleEndian.Uint32(b[markBytes-4:]) {
		return mark{}, false
	}
	m = mark{seq: binary.LittleEndian.Uint64(b[8:]), index: binary.LittleEndian.Uint64(b[16:]),
		dirty: binary.LittleEndian.Uint64(b[24:])}
	return m, m.dirty >= m.index && m.seq > 0
}

func markOffset(seq uint64) int64 { return int64(seq%2) * markSlotBytes }

// readMark reads file id's mark (the zero mark if it has none: a file made
// before marks, or never marked). Both slots written but neither valid
// cannot come from a crash (one slot is written at a time): ErrCorrupt.
func readMark(fs wal.FS, id uint64) (mark, error) {
	f, err := fs.Open(markName(id))
	if errors.Is(err, syscall.ENOENT) {
		return mark{}, nil
	}
	if err != nil {
		return mark{}, fmt.Errorf("fsm: opening %s: %w", markName(id), err)
	}
	defer f.Close()
	b := make([]byte, 2*markSlotBytes)
	if n, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return mark{}, fmt.Errorf("fsm: reading %s: %w", markName(id), err)
	} else {
		clear(b[n:])
	}
	var best mark
	written := 0
	for slot := 0; slot < 2; slot++ {
		p := b[slot*markSlotBytes : slot*markSlotBytes+markBytes]
		if allZero(p) {
			continue
		}
		written++
		if m, ok := decodeMark(p); ok && markOffset(m.seq) == int64(slot)*markSlotBytes && m.seq > best.seq {
			best = m
		}
	}
	if written == 2 && best.seq == 0 {
		return mark{}, fmt.Errorf("%w: %s: neither slot is valid", ErrCorrupt, markName(id))
	}
	return best, nil
}

func allZero(p []byte) bool {
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

// openMark opens file id's mark file, creating it (both slots zero,
// synced, and the directory synced: a mark must not vanish in a crash
// after the log relied on it) when there is none.
func openMark(fs wal.FS, id uint64) (wal.File, error) {
	f, err := fs.Open(markName(id))
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, syscall.ENOENT) {
		return nil, err
	}
	if f, err = fs.Create(markName(id)); err != nil {
		return nil, err
	}
	_, err = f.WriteAt(make([]byte, 2*markSlotBytes), 0)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = fs.SyncDir()
	}
	if err != nil {
		f.Close()
		_ = fs.Remove(markName(id))
		return nil, fmt.Errorf("fsm: creating %s: %w", markName(id), err)
	}
	return f, nil
}

// markedFile is a database file with its mark file (vfs.Marked). It is an
// Allocator and has WriteBack when the file has them.
type markedFile struct {
	wal.File
	mark wal.File
}

func (m markedFile) MarkFile() vfs.File { return m.mark }

func (m markedFile) Allocate(off, n int64) error {
	if a, ok := m.File.(vfs.Allocator); ok {
		return a.Allocate(off, n)
	}
	return errors.ErrUnsupported
}

func (m markedFile) WriteBack(off, n int64) error {
	if wb, ok := m.File.(interface{ WriteBack(off, n int64) error }); ok {
		return wb.WriteBack(off, n)
	}
	return nil
}

func (m markedFile) Close() error {
	err := m.File.Close()
	if cerr := m.mark.Close(); err == nil {
		err = cerr
	}
	return err
}

// nextMark numbers and encodes x's next mark (index, dirty), for
// vfs.WriteMark or StartSync, and returns where it goes.
func (d *DB) nextMark(x *database, index, dirty uint64) (int64, []byte) {
	id := d.files.open[x.name]
	seq := d.files.markSeq[id] + 1
	d.files.markSeq[id] = seq
	return markOffset(seq), mark{seq: seq, index: index, dirty: dirty}.encode()
}

// dropMark takes back x's last mark number: its write failed at once (a
// file written without a goroutine), and the slot it tore must be the one
// written next, not the one holding the last durable mark.
func (d *DB) dropMark(x *database) { d.files.markSeq[d.files.open[x.name]]-- }

// marked reports whether x's file is the one the record names: its marks
// count (a new or replaced file's index goes into the record instead).
func (d *DB) marked(x *database) bool {
	e, ok := d.files.durable.dbs[x.name]
	return ok && e.file == d.files.open[x.name]
}
