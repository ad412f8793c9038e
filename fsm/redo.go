package fsm

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/dqlite-go/dqlite/vfs"
	"github.com/dqlite-go/dqlite/wal"
)

// Redo journals: statement mode's databases on disk.
//
// In frames mode a checkpoint cut short (a crash) leaves a file holding
// pages of entries after its recorded index F, and replaying the log from
// F is still exact: a frames entry rewrites whole pages. In statement mode
// the log holds SQL, and re-running it over such a file is not exact (the
// file is a mix of two states). So before a checkpoint copies a
// statement-mode WAL into its file, the WAL is written, whole, to the
// file's redo journal "sqlite-<id>.redo" (atomically: a temporary file,
// synced, renamed, the directory synced), with the index A it reflects:
//
//	"DQRDOv01" | index A u64 | WAL length u64 | crc32c u32 (of the WAL) | WAL
//
// Every page a checkpoint can write is in that WAL, so at open, when a
// valid journal's A is past F, its WAL's last commit is laid over the file
// (in the WAL, before any connection reads the file) and the database is
// at A exactly; the log replays from A+1. A journal is replaced only by a
// later one, whose WAL holds every frame the earlier one did unless a
// complete, synced checkpoint recorded F >= the earlier A in between.
// A journal that does not check out was never complete, so no checkpoint
// started after it: the file is at F. Journals at or below F, and those of
// files the record does not name, are removed at open.

const (
	redoSuffix = ".redo"
	redoMagic  = "DQRDOv01"
)

func redoName(id uint64) string { return fmt.Sprintf("%s%016x%s", filePrefix, id, redoSuffix) }

// skipRedo is a deliberate bug for a test (TestStatementModeNoRedoIsCaught):
// checkpoints write no redo journal.
var skipRedo bool

// maxRedoBytes bounds a redo journal read back: the WAL it holds was in
// memory when it was written.
const maxRedoBytes = 1 << 31

// journal writes x's redo journal before a checkpoint (full, or a view's
// or a DUMP's passive one) copies its WAL into its file: in statement mode
// with files only.
func (d *DB) journal(x *database) error {
	if d.mode != ModeStatements || d.files == nil || skipRedo {
		return nil
	}
	if x.unsynced {
		// A failed sync: pages the journal on disk covers may be lost
		// from the file, so it is never replaced (the node stops).
		return FileSyncError{fmt.Errorf("fsm: database %q: its file failed a sync", x.name)}
	}
	m := d.begin(WorkSync)
	defer d.end(m)
	return d.writeRedo(x)
}

// syncPassive follows a passive checkpoint (a view's, a DUMP's) that
// copied x's whole WAL into its file, in statement mode: the WAL may now
// restart, and the next journal would hold only the frames after it, so
// the file is synced (and recorded) first. A failed sync is a
// FileSyncError: the node stops.
func (d *DB) syncPassive(x *database) error {
	if d.mode != ModeStatements || d.files == nil {
		return nil
	}
	m := d.begin(WorkSync)
	err := d.vfs.SyncFile(x.name)
	d.end(m)
	if err != nil {
		x.unsynced = true
		return FileSyncError{d.checkpointError(x, err)}
	}
	if err := d.writeRecordAt(x, d.appliedIndex); err != nil {
		d.lastCheckpointErr = d.checkpointError(x, err) // the file is synced: a later record will do
	}
	return nil
}

// writeRedo writes x's WAL to its file's redo journal, at the last applied
// index, before a checkpoint copies it (statement mode only).
func (d *DB) writeRedo(x *database) error {
	const hdr = len(redoMagic) + 20
	out := make([]byte, hdr, hdr+int(d.vfs.WALSize(x.name)))
	out, err := d.vfs.AppendWAL(out, x.name)
	if err != nil || len(out) == hdr {
		return err
	}
	copy(out, redoMagic)
	binary.LittleEndian.PutUint64(out[8:], d.appliedIndex)
	binary.LittleEndian.PutUint64(out[16:], uint64(len(out)-hdr))
	binary.LittleEndian.PutUint32(out[24:], crc32.Checksum(out[hdr:], castagnoli))
	return writeAtomic(d.files.fs, redoName(d.files.open[x.name]), out)
}

// readRedo reads file id's redo journal, which exists: ok false when it
// does not check out (see above).
func readRedo(fs wal.FS, id uint64) (index uint64, f *vfs.Frames, ok bool, err error) {
	file, err := fs.Open(redoName(id))
	if err != nil {
		return 0, nil, false, fmt.Errorf("fsm: opening %s: %w", redoName(id), err)
	}
	defer file.Close()
	size, err := file.Size()
	if err != nil {
		return 0, nil, false, fmt.Errorf("fsm: reading %s: %w", redoName(id), err)
	}
	const hdr = len(redoMagic) + 20
	if size < int64(hdr) || size > maxRedoBytes {
		return 0, nil, false, nil
	}
	b := make([]byte, size)
	if _, err := file.ReadAt(b, 0); err != nil {
		return 0, nil, false, fmt.Errorf("fsm: reading %s: %w", redoName(id), err)
	}
	if string(b[:len(redoMagic)]) != redoMagic {
		return 0, nil, false, nil
	}
	index = binary.LittleEndian.Uint64(b[8:])
	n := binary.LittleEndian.Uint64(b[16:])
	body := b[hdr:]
	if n != uint64(len(body)) || crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[24:]) {
		return 0, nil, false, nil
	}
	if f, err = vfs.ParseWAL(body); err != nil {
		// It checked out, so it is what this node wrote: a WAL this
		// parser does not read is a bug, not a torn write.
		return 0, nil, false, fmt.Errorf("%w: %s: %w", ErrCorrupt, redoName(id), err)
	}
	return index, f, true, nil
}

// redo brings database name, opened from its file id at dd.fileIndex, to
// the index of the file's redo journal when that is later (statement mode;
// see above): the journal's pages go to the WAL, which the connections
// read over the file once they open.
func (d *DB) redo(name string, id uint64, dd *deferredDB) error {
	dd.dirty = dd.fileIndex // the journal covers whatever a checkpoint left
	if !d.files.redos[id] {
		return nil
	}
	index, f, ok, err := readRedo(d.files.fs, id)
	if err != nil {
		return err
	}
	if !ok {
		// Journals are replaced atomically, so one that fails its
		// checks was damaged on the disk, and the file may be past its
		// index by pages no one can name.
		return fmt.Errorf("%w: %s fails its checks", ErrCorrupt, redoName(id))
	}
	if index <= dd.fileIndex {
		return d.dropRedo(id)
	}
	if f != nil {
		if f.PageSize != dd.pageSize {
			return fmt.Errorf("%w: %s has pages of %d bytes, the database %d", ErrCorrupt, redoName(id), f.PageSize, dd.pageSize)
		}
		if err := d.vfs.ApplyFrames(name, f); err != nil {
			return fmt.Errorf("fsm: redoing %s: %w", redoName(id), err)
		}
	}
	dd.fileIndex, dd.dirty = index, index
	d.redone++
	return nil
}

// dropRedo removes file id's redo journal, which the file no longer needs.
func (d *DB) dropRedo(id uint64) error {
	if !d.files.redos[id] {
		return nil
	}
	if err := d.files.fs.Remove(redoName(id)); err != nil {
		return fmt.Errorf("fsm: removing %s: %w", redoName(id), err)
	}
	delete(d.files.redos, id)
	return nil
}

// Redone counts the databases a redo journal brought forward when the set
// was opened.
func (d *DB) Redone() uint64 { return d.redone }
