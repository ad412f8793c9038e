package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
	"strings"

	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/vfs"
	"github.com/dqlite-go/dqlite/wal"
)

// Databases on disk.
//
// With a data directory (OpenFiles), each database's main file is a file
// of the directory ("sqlite-<id>.db") and the record "fsm-databases" maps
// database names to files and holds, for each, the index F its file
// reflects: every entry up to F is in the file; pages of entries after F
// may or may not be (a checkpoint may have stopped part way), which does
// not matter, because applying a frames entry rewrites whole pages and the
// database size. The record is replaced atomically (written to a
// temporary file, synced, renamed, directory synced) only after the files
// it describes were synced, so after a crash it never claims more than the
// files hold. The Raft log keeps every entry after the smallest F
// (DurableIndex); restarting replays those, and Apply skips, per database,
// the entries its file already reflects.
//
// A database file not named by the record (created, or written by an
// interrupted install, after the last record) is removed when the set is
// opened: its database's entries are all in the log.

const (
	recordName  = "fsm-databases"
	recordMagic = "DQDBSv02"
	// filePrefix and fileSuffix name database files: sqlite-<id, 16 hex
	// digits>.db.
	filePrefix = "sqlite-"
	fileSuffix = ".db"
)

// fileEntry is one database of the record.
type fileEntry struct {
	file     uint64 // its file's id
	pageSize int
	index    uint64 // F: the file reflects every entry up to it
	dirty    uint64 // no page of an entry after it is in the file (>= index)
}

// A checkpoint may stop part way (a crash, a full disk) having written
// pages of entries after F. The record says how far: dirty, the last
// applied index when a checkpoint of the file last started, recorded
// before it writes anything. The files then hold no page of an entry after
// the largest dirty, so once a restarted node has applied that far, every
// such page was rewritten by the replay (in the WAL, then the file).
// Sending a view of the files waits for that (OpenView).

// record is the decoded "fsm-databases".
type record struct {
	next uint64 // the next file id to use
	dbs  map[string]fileEntry
}

func fileName(id uint64) string { return fmt.Sprintf("%s%016x%s", filePrefix, id, fileSuffix) }

func (r *record) encode() []byte {
	names := make([]string, 0, len(r.dbs))
	for n := range r.dbs {
		names = append(names, n)
	}
	sort.Strings(names)
	b := append([]byte(nil), recordMagic...)
	b = binary.LittleEndian.AppendUint64(b, r.next)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(names)))
	for _, n := range names {
		e := r.dbs[n]
		b = binary.LittleEndian.AppendUint16(b, uint16(len(n)))
		b = append(b, n...)
		b = binary.LittleEndian.AppendUint64(b, e.file)
		b = binary.LittleEndian.AppendUint32(b, uint32(e.pageSize))
		b = binary.LittleEndian.AppendUint64(b, e.index)
		b = binary.LittleEndian.AppendUint64(b, e.dirty)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeRecord(b []byte) (*record, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrCorrupt, recordName, fmt.Sprintf(format, args...))
	}
	if len(b) < len(recordMagic)+16 || string(b[:len(recordMagic)]) != recordMagic {
		return nil, bad("not a database record (%d bytes)", len(b))
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, bad("fails its checksum")
	}
	p := body[len(recordMagic):]
	r := &record{next: binary.LittleEndian.Uint64(p), dbs: map[string]fileEntry{}}
	count := binary.LittleEndian.Uint32(p[8:])
	p = p[12:]
	files := map[uint64]bool{}
	for i := uint32(0); i < count; i++ {
		if len(p) < 2 {
			return nil, bad("truncated at database %d", i)
		}
		n := int(binary.LittleEndian.Uint16(p))
		if len(p) < 2+n+28 {
			return nil, bad("truncated at database %d", i)
		}
		name := string(p[2 : 2+n])
		e := fileEntry{file: binary.LittleEndian.Uint64(p[2+n:]), pageSize: int(binary.LittleEndian.Uint32(p[10+n:])),
			index: binary.LittleEndian.Uint64(p[14+n:]), dirty: binary.LittleEndian.Uint64(p[22+n:])}
		p = p[30+n:]
		if CheckDatabaseName(name) != nil || r.dbs[name] != (fileEntry{}) || !validPageSize(uint32(e.pageSize)) ||
			e.file >= r.next || files[e.file] || e.dirty < e.index {
			return nil, bad("database %d: bad entry %q (file %d of %d, page size %d)", i, name, e.file, r.next, e.pageSize)
		}
		files[e.file] = true
		r.dbs[name] = e
	}
	if len(p) != 0 {
		return nil, bad("%d bytes after its databases", len(p))
	}
	return r, nil
}

// fileStore opens the databases' main files (it is the VFS's Files) and
// keeps the record. It belongs to the DB, on the loop's goroutine.
type fileStore struct {
	fs wal.FS
	// durable is the record as last written (or read at open).
	durable *record
	// open maps each database with a file to the file id it uses now
	// (recorded or not yet).
	open map[string]uint64
	next uint64
	// dropped are files no record names that no database uses any more.
	dropped []uint64
	// markSeq is, by file id, the number of the last mark written (see
	// marks.go).
	markSeq map[uint64]uint64
	// redos are the files of the record with a redo journal when the set
	// was opened (redo.go).
	redos map[uint64]bool
}

// openFileStore reads the record (none: an empty set) and removes the
// database files it does not name.
func openFileStore(fs wal.FS) (*fileStore, error) {
	s := &fileStore{fs: fs, durable: &record{dbs: map[string]fileEntry{}}, open: map[string]uint64{}, markSeq: map[uint64]uint64{},
		redos: map[uint64]bool{}}
	names, err := fs.List()
	if err != nil {
		return nil, fmt.Errorf("fsm: listing data directory: %w", err)
	}
	for _, n := range names {
		if n != recordName {
			continue
		}
		b, err := readFile(fs, n)
		if err != nil {
			return nil, err
		}
		if s.durable, err = decodeRecord(b); err != nil {
			return nil, err
		}
	}
	named := map[string]bool{}
	have := map[string]bool{}
	for _, n := range names {
		have[n] = true
	}
	for name, e := range s.durable.dbs {
		named[fileName(e.file)], named[markName(e.file)] = true, true
		if have[redoName(e.file)] {
			named[redoName(e.file)], s.redos[e.file] = true, true
		}
		s.open[name] = e.file
		// The file's mark goes further than the record, or as far.
		m, err := readMark(fs, e.file)
		if err != nil {
			return nil, err
		}
		s.markSeq[e.file] = m.seq
		e.index = max(e.index, m.index)
		e.dirty = max(e.dirty, m.dirty, e.index)
		s.durable.dbs[name] = e
	}
	s.next = s.durable.next
	removed := false
	for _, n := range names {
		if strings.HasPrefix(n, filePrefix) && !named[n] && (strings.HasSuffix(n, fileSuffix) || strings.HasSuffix(n, markSuffix) ||
			strings.HasSuffix(n, redoSuffix) || strings.HasSuffix(n, redoSuffix+".tmp")) {
			if err := fs.Remove(n); err != nil {
				return nil, fmt.Errorf("fsm: removing unrecorded database file %s: %w", n, err)
			}
			removed = true
		}
	}
	if removed {
		if err := fs.SyncDir(); err != nil {
			return nil, fmt.Errorf("fsm: syncing data directory: %w", err)
		}
	}
	return s, nil
}

func readFile(fs wal.FS, name string) ([]byte, error) {
	f, err := fs.Open(name)
	if err != nil {
		return nil, fmt.Errorf("fsm: opening %s: %w", name, err)
	}
	defer f.Close()
	n, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("fsm: reading %s: %w", name, err)
	}
	if n > 1<<24 {
		return nil, fmt.Errorf("%w: %s is %d bytes", ErrCorrupt, name, n)
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil && n > 0 {
		return nil, fmt.Errorf("fsm: reading %s: %w", name, err)
	}
	return b, nil
}

// Spawner lets the VFS write database files from goroutines when the FS
// can run them (an FS with a Spawn method: the node's; see
// vfs.behindFile), so that checkpoints do not wait for the disk on the
// loop.
func (s *fileStore) Spawner() func(run func()) {
	if sp, ok := s.fs.(interface{ Spawn(run func()) }); ok {
		return sp.Spawn
	}
	return nil
}

// OpenDatabase opens name's file, creating a new, empty one for a
// database that has none (it becomes durable with the next record), with
// its mark file (marks.go).
func (s *fileStore) OpenDatabase(name string) (vfs.File, error) {
	if id, ok := s.open[name]; ok {
		f, err := s.fs.Open(fileName(id))
		if err == nil {
			return s.withMark(f, id)
		}
		if _, recorded := s.durable.dbs[name]; recorded {
			return nil, err
		}
		// A file made since the last record that is gone: make it again.
	}
	return s.create(name)
}

func (s *fileStore) create(name string) (vfs.File, error) {
	id := s.next
	s.next++
	f, err := s.fs.Create(fileName(id))
	if err != nil {
		return nil, err
	}
	s.open[name] = id
	return s.withMark(f, id)
}

// withMark gives file id's f its mark file.
func (s *fileStore) withMark(f wal.File, id uint64) (vfs.File, error) {
	m, err := openMark(s.fs, id)
	if err != nil {
		f.Close()
		return nil, err
	}
	return markedFile{File: f, mark: m}, nil
}

// replace gives name a new, empty file (for an install: the old one stays
// until the record naming the new one is durable).
func (s *fileStore) replace(name string) { delete(s.open, name) }

// forget drops name (a database an install does not have, or one evicted
// unwritten); its file goes with the next record.
func (s *fileStore) forget(name string) {
	if id, ok := s.open[name]; ok {
		if _, recorded := s.durable.dbs[name]; !recorded || s.durable.dbs[name].file != id {
			s.dropped = append(s.dropped, id)
		}
	}
	delete(s.open, name)
}

// write makes rec durable, then removes the files no database uses any
// more.
func (s *fileStore) write(rec *record) error {
	rec.next = s.next
	if err := writeAtomic(s.fs, recordName, rec.encode()); err != nil {
		return err
	}
	used := map[uint64]bool{}
	for _, e := range rec.dbs {
		used[e.file] = true
	}
	for _, id := range s.open {
		used[id] = true
	}
	old := s.durable
	s.durable = rec
	removed := false
	ids := s.dropped
	s.dropped = nil
	for _, e := range old.dbs {
		ids = append(ids, e.file)
	}
	for _, id := range ids {
		if !used[id] {
			if err := s.fs.Remove(fileName(id)); err == nil {
				removed = true
			}
			if err := s.fs.Remove(markName(id)); err == nil {
				removed = true
			}
			delete(s.markSeq, id)
		}
	}
	if removed {
		// A removal lost in a crash leaves a file the record does not
		// name: removed at the next open.
		_ = s.fs.SyncDir()
	}
	return nil
}

// writeAtomic replaces name with data: a crash leaves the old or the new
// content.
func writeAtomic(fs wal.FS, name string, data []byte) error {
	tmp := name + ".tmp"
	f, err := fs.Create(tmp)
	if err != nil {
		return fmt.Errorf("fsm: writing %s: %w", name, err)
	}
	_, err = f.WriteAt(data, 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fs.Rename(tmp, name)
	}
	if err == nil {
		err = fs.SyncDir()
	}
	if err != nil {
		_ = fs.Remove(tmp)
		return fmt.Errorf("fsm: writing %s: %w", name, err)
	}
	return nil
}

// FileSyncError is a failed sync of a database file. After one the file
// cannot be trusted (the kernel may have dropped its pages and a later
// sync succeed without them), so the node stops as after a failure of its
// log (StorageFailure); a restart replays the log from the file's
// recorded index, which rewrites every page the sync covered.
type FileSyncError struct{ Err error }

func (e FileSyncError) Error() string      { return e.Err.Error() }
func (e FileSyncError) Unwrap() error      { return e.Err }
func (FileSyncError) StorageFailure() bool { return true }

// ErrCheckpoint wraps a checkpoint's failure (a full disk, an I/O error):
// the WAL keeps the pages and the next checkpoint tries again.
var ErrCheckpoint = errors.New("fsm: checkpoint failed")

// checkpointFile checkpoints x into its file, syncs the file and records
// that the file reflects every entry up to the last applied one. It
// returns whether the checkpoint was complete (a reader can stop it part
// way: the file then holds some later pages, and F stays where it was).
func (d *DB) checkpointFile(x *database) (bool, error) {
	return d.checkpointFileSync(x, false)
}

// checkpointFileSync is checkpointFile; with deferSync (the loop's tick)
// the sync and the record are owed to the next tick (finishSync), which
// finds the kernel has written most of the pages back meanwhile: no tick
// both copies the WAL and waits for the disk.
func (d *DB) checkpointFileSync(x *database, deferSync bool) (bool, error) {
	if d.view != nil || x.dumps > 0 {
		return false, nil // a view being sent, or a DUMP, needs the file as it is
	}
	defer d.enter(PhaseCheckpoint)()
	if err := d.markDirty(x); err != nil {
		return false, d.checkpointError(x, err)
	}
	copied := d.vfs.WALSize(x.name) > 0
	if d.mode == ModeStatements && d.files != nil {
		// The WAL goes to the redo journal before the file gets any of
		// it, and the checkpoint is synced and recorded at once: a
		// journal is replaced only once its checkpoint is recorded or
		// by one that holds its frames (redo.go).
		deferSync = false
		if copied {
			if err := d.journal(x); err != nil {
				return false, d.checkpointError(x, err)
			}
		}
	}
	m := d.begin(WorkCheckpoint)
	err := x.conn.Checkpoint()
	d.end(m)
	if err != nil {
		return false, d.checkpointError(x, err)
	}
	if copied {
		d.checkpoints++
	}
	if d.vfs.WALSize(x.name) != 0 {
		return false, nil
	}
	if d.files == nil {
		return true, nil
	}
	if deferSync && !x.unsynced {
		x.syncOwed, x.syncIndex = true, d.appliedIndex
		// A file the record names gets F in its mark, after the sync
		// (marks.go); another, in the record at finishSync.
		var off int64
		var mk []byte
		if x.syncMarked = d.marked(x); x.syncMarked {
			off, mk = d.nextMark(x, x.syncIndex, max(x.dirty, x.syncIndex))
			if mutant.On(mutant.FSMRecordBeforeSync) {
				// The deliberate bug: F's mark written before the
				// file's sync.
				if err := d.vfs.WriteMark(x.name, off, mk); err != nil {
					d.dropMark(x)
					x.unsynced = true
					return false, FileSyncError{d.checkpointError(x, err)}
				}
				off, mk = 0, nil
			}
		}
		m := d.begin(WorkSync)
		err := d.vfs.StartSync(x.name, off, mk)
		d.end(m)
		if err != nil {
			if mk != nil {
				d.dropMark(x) // not written: F goes in the record
			}
			x.syncMarked = false
			return false, d.checkpointError(x, err) // the sync next tick reports the loss
		}
		if x.syncMarked {
			x.markIndex = max(x.markIndex, x.syncIndex) // durable after the sync, in order
		}
		return true, nil
	}
	if !mutant.On(mutant.FSMRecordBeforeSync) {
		m := d.begin(WorkSync)
		err := d.vfs.SyncFile(x.name)
		d.end(m)
		if err != nil {
			// After a failed sync the kernel may have dropped the dirty
			// pages and a later sync succeed without them: this file is
			// never trusted again (F stays; a restart replays the log).
			x.unsynced = true
			return false, FileSyncError{d.checkpointError(x, err)}
		}
	}
	if err := d.writeRecord(); err != nil {
		return false, d.checkpointError(x, err)
	}
	x.syncOwed = false // this sync covers what a tick's copy left owed
	// With the deliberate bug mutant.FSMRecordBeforeSync the index is
	// recorded without the file being synced first: a crash loses pages
	// the record says the file has.
	return true, nil
}

// finishSync completes the sync of x's file that a tick's checkpoint
// started after copying the WAL into it (checkpointFileSync), then records
// F = syncIndex: the file holds every entry up to it (pages written since,
// of later entries, are covered by the recorded dirty index). A file whose
// writes a goroutine carries out may not be synced yet: the sync stays
// owed for a later tick. A failed sync (or background write) is a
// FileSyncError: the node stops, and the file is never trusted again.
func (d *DB) finishSync(x *database) error {
	if d.files == nil || x.unsynced {
		x.syncOwed = false
		return nil
	}
	defer d.enter(PhaseCheckpoint)()
	if !mutant.On(mutant.FSMRecordBeforeSync) {
		m := d.begin(WorkSync)
		done, err := d.vfs.FinishSync(x.name)
		d.end(m)
		if err != nil {
			x.syncOwed = false
			x.unsynced = true
			return FileSyncError{d.checkpointError(x, err)}
		}
		if !done {
			return nil
		}
	}
	x.syncOwed = false
	if x.syncIndex <= x.fileIndex {
		return nil
	}
	if x.syncMarked {
		x.fileIndex = x.syncIndex // its mark is durable
		return nil
	}
	if err := d.writeRecordAt(x, x.syncIndex); err != nil {
		return d.checkpointError(x, err)
	}
	return nil
}

func (d *DB) checkpointError(x *database, err error) error {
	if ferr := d.vfs.FileError(); ferr != nil {
		err = fmt.Errorf("%w (%w)", err, ferr)
	}
	d.checkpointFailures++
	return fmt.Errorf("%w: database %q: %w", ErrCheckpoint, x.name, err)
}

// writeRecord records every written database whose WAL is empty (all of
// it is in its synced file) at the last applied index, the others at the
// index they had.
func (d *DB) writeRecord() error { return d.writeRecordAt(nil, 0) }

// writeRecordAt is writeRecord, with at (if not nil) recorded at index
// atIndex at least (its synced file holds every entry up to it, whatever
// its WAL holds now).
func (d *DB) writeRecordAt(at *database, atIndex uint64) error {
	rec := &record{dbs: map[string]fileEntry{}}
	for name, x := range d.dbs {
		if !x.written {
			continue
		}
		e, recorded := d.files.durable.dbs[name]
		id, ok := d.files.open[name]
		if !ok {
			continue
		}
		idx, dirty := e.index, e.dirty
		if !recorded || e.file != id {
			idx, dirty = x.fileIndex, x.fileIndex // a new or replaced file
		} else {
			idx = max(idx, x.fileIndex) // its marks may have gone further
		}
		// All of it is in its synced file: nothing in the WAL (and no
		// write waiting to commit), nothing written to the file since
		// its last sync (an empty WAL alone does not say it: a passive
		// checkpoint copies without syncing, then the WAL restarts).
		if d.vfs.WALSize(name) == 0 && !x.unsynced && !(d.pending && d.pendingDB == x) &&
			(!d.vfs.FileUnsynced(name) || mutant.On(mutant.FSMRecordBeforeSync)) {
			idx = max(idx, d.appliedIndex)
		}
		if x == at && !x.unsynced && e.file == id && recorded {
			idx = max(idx, atIndex)
		}
		dirty = max(dirty, idx, x.dirty)
		rec.dbs[name] = fileEntry{file: id, pageSize: x.pageSize, index: idx, dirty: dirty}
	}
	m := d.begin(WorkRecord)
	err := d.files.write(rec)
	d.end(m)
	if err != nil {
		return err
	}
	for name, e := range rec.dbs {
		d.dbs[name].fileIndex = e.index
	}
	return nil
}

// markDirty records, before a checkpoint writes x's file, that the file
// may hold pages of entries up to the last applied one: in its mark, which
// its writer makes durable before the checkpoint's pages reach the file
// (marks.go), or for a file the record does not name yet, in the record.
func (d *DB) markDirty(x *database) error {
	if d.files == nil || x.markedDirty >= d.appliedIndex {
		return nil
	}
	dirty := max(x.dirty, d.appliedIndex)
	if d.marked(x) {
		off, mk := d.nextMark(x, max(x.fileIndex, x.markIndex), dirty)
		if err := d.vfs.WriteMark(x.name, off, mk); err != nil {
			// A mark file whose write or sync failed is not trusted
			// again (as a database file whose sync failed): the node
			// stops, and starts again from the marks on disk.
			d.dropMark(x)
			x.unsynced = true
			return FileSyncError{err}
		}
		x.dirty, x.markedDirty = dirty, dirty
		return nil
	}
	x.dirty = dirty
	if err := d.writeRecord(); err != nil {
		return err
	}
	x.markedDirty = dirty
	return nil
}

// DurableIndex is the index the databases' files reflect, all of them: the
// log may drop entries up to it (and no further). Zero without files.
func (d *DB) DurableIndex() uint64 {
	if d.files == nil {
		return 0
	}
	idx, any := uint64(0), false
	for _, x := range d.dbs {
		if !x.written {
			continue
		}
		if !any || x.fileIndex < idx {
			idx = x.fileIndex
		}
		any = true
	}
	if !any {
		return d.appliedIndex // no state: every applied entry is covered
	}
	return idx
}

// OpenFiles opens the set of databases kept in fs (the node's data
// directory; see "Databases on disk" above), on a new VFS registered as
// vfsName, with def as its default database. Every database of the record
// is opened, its file reflecting the entries up to its recorded index.
func OpenFiles(fs wal.FS, vfsName string, seed uint64, def string, pageSize int, mode Mode) (*DB, error) {
	if !validPageSize(uint32(pageSize)) {
		return nil, fmt.Errorf("fsm: invalid page size %d", pageSize)
	}
	store, err := openFileStore(fs)
	if err != nil {
		return nil, err
	}
	v, err := vfs.NewFiles(vfsName, seed, store)
	if err != nil {
		return nil, err
	}
	d := newDB(v, def, pageSize, mode)
	d.files = store
	d.ownVFS = true
	d.deferred = map[string]*deferredDB{}
	for _, name := range sortedKeys(store.durable.dbs) {
		e := store.durable.dbs[name]
		size, err := extendToHeader(fs, fileName(e.file))
		if err != nil {
			d.Close()
			return nil, err
		}
		dd := &deferredDB{pageSize: e.pageSize, fileIndex: e.index, dirty: e.dirty, recorded: true}
		if size == 0 {
			// An empty file holds no page a checkpoint left, and SQLite
			// deletes the WAL of an empty database file when it opens
			// one, so a WAL the replay built would be lost: its
			// connection opens now, and the replay applies to it. (Nor
			// does it need a redo journal: it is at its index.)
			if err := d.dropRedo(e.file); err != nil {
				d.Close()
				return nil, err
			}
			if err := d.openDeferred(name, dd); err != nil {
				d.Close()
				return nil, err
			}
			continue
		}
		if mode == ModeStatements {
			// Re-running statements needs the file at its index
			// exactly: its redo journal brings it there (redo.go).
			if err := d.redo(name, e.file, dd); err != nil {
				d.Close()
				return nil, err
			}
			d.deferred[name] = dd
			d.appliedBefore = max(d.appliedBefore, dd.fileIndex)
			continue
		}
		d.deferred[name] = dd
		if e.dirty > e.index {
			d.replayBound = max(d.replayBound, e.dirty)
		}
		d.appliedBefore = max(d.appliedBefore, e.index, e.dirty)
	}
	if d.replayBound == 0 {
		if err := d.FinishReplay(); err != nil {
			d.Close()
			return nil, err
		}
	}
	return d, nil
}

// deferredDB is a database opened from disk whose connections wait for the
// replay (see FinishReplay).
type deferredDB struct {
	pageSize         int
	fileIndex, dirty uint64
	recorded         bool
}

// FinishReplay opens the connections of the databases opened from disk
// (loop.StreamingStateMachine; the loop calls it once it applied the log up
// to ReplayBound). Until then, entries apply to the WALs only: a file a
// checkpoint cut short may hold pages newer than the replayed state
// (SQLite would read a torn schema), which the replayed frames cover.
func (d *DB) FinishReplay() error {
	if d.deferred == nil {
		return nil
	}
	for _, name := range sortedKeys(d.deferred) {
		if err := d.openDeferred(name, d.deferred[name]); err != nil {
			return err
		}
	}
	d.deferred = nil
	_, err := d.database(d.def, true)
	return err
}

// openDeferred opens the connections of a database opened from disk.
func (d *DB) openDeferred(name string, dd *deferredDB) error {
	x, err := d.openDatabase(name, dd.pageSize)
	if err != nil {
		return fmt.Errorf("fsm: opening database %q: %w", name, err)
	}
	x.written, x.fileIndex, x.dirty = true, dd.fileIndex, dd.dirty
	x.markIndex, x.markedDirty = dd.fileIndex, dd.dirty
	return nil
}

// applyDeferred applies a frames entry during the replay (FinishReplay):
// to the WAL only, for a database whose recorded file it waits for (a
// database the record does not name has a new, empty file: no checkpoint
// can have left pages in it, and it is applied to as usual; deferred, its
// WAL would be lost, as SQLite deletes the WAL of an empty database file
// when it opens one).
func (d *DB) applyDeferred(e raft.Entry, f *Frames) error {
	defer d.enter(PhaseReplay)()
	name := d.resolve(f.Database)
	dd := d.deferred[name]
	if e.Index <= dd.fileIndex {
		return nil
	}
	if err := d.vfs.ApplyFrames(name, &vfs.Frames{PageSize: int(f.PageSize), DBSize: f.DBSize,
		PageNumbers: f.PageNumbers, Pages: f.Pages, Contiguous: f.raw}); err != nil {
		return fmt.Errorf("fsm: replaying entry %d: %w", e.Index, err)
	}
	return nil
}

// dropDeferred forgets the databases waiting for the replay (a snapshot
// replaces them).
func (d *DB) dropDeferred() error {
	for name := range d.deferred {
		if err := d.vfs.Detach(name); err != nil {
			return err
		}
		d.files.forget(name)
	}
	d.deferred = nil
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// AppliedTo notes that every entry up to index is applied (the loop calls
// it for entries Apply is not given too).
func (d *DB) AppliedTo(index uint64) { d.appliedIndex = max(d.appliedIndex, index) }

// Covers reports whether the databases opened from disk already reflect
// every entry up to index (a restart then needs no snapshot restore): true
// when every recorded database's file does.
func (d *DB) Covers(index uint64) bool {
	if d.files == nil {
		return false
	}
	if index == 0 {
		return true
	}
	if len(d.files.durable.dbs) == 0 {
		return false // nothing recorded: the snapshot holds the state
	}
	for _, e := range d.files.durable.dbs {
		if e.index < index {
			return false
		}
	}
	return true
}

// extendToHeader extends a database file that is shorter than its header
// says to that size (with zero pages). A crash during a checkpoint can
// leave it so: the new first page reached the disk, later pages of the
// grown database did not. SQLite refuses such a file as corrupt, but every
// page past the recorded state comes from an entry after F, which the
// replay rewrites before anything reads it.
func extendToHeader(fs wal.FS, name string) (int64, error) {
	f, err := fs.Open(name)
	if err != nil {
		return 0, fmt.Errorf("fsm: opening database file %s: %w", name, err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return 0, fmt.Errorf("fsm: database file %s: %w", name, err)
	}
	h := make([]byte, 100)
	if size < int64(len(h)) {
		return size, nil
	}
	if _, err := f.ReadAt(h, 0); err != nil {
		return 0, fmt.Errorf("fsm: reading database file %s: %w", name, err)
	}
	if string(h[:16]) != "SQLite format 3\x00" {
		return size, nil
	}
	ps := int64(binary.BigEndian.Uint16(h[16:]))
	if ps == 1 {
		ps = 65536
	}
	want := int64(binary.BigEndian.Uint32(h[28:])) * ps
	if !validPageSize(uint32(ps)) || want <= size {
		return size, nil
	}
	if err := f.Truncate(want); err != nil {
		return 0, fmt.Errorf("fsm: extending database file %s to its header's %d bytes: %w", name, want, err)
	}
	return want, nil
}

// Phases of work on the database files, for fault accounting (Phase).
const (
	PhaseCheckpoint = "checkpoint" // copying the WAL into a file, syncing it, recording its index
	PhaseView       = "view"       // opening a snapshot view (a passive checkpoint)
	PhaseReceive    = "receive"    // writing a streamed snapshot's chunks to new files
	PhaseInstall    = "install"    // switching the record to received files
	PhaseRestore    = "restore"    // restoring a snapshot image into new files
	PhaseReplay     = "replay"     // applying the log to the WALs after a restart
)

// Phase is the work on the database files under way ("" when none): the
// simulator counts the faults that strike each.
func (d *DB) Phase() string { return d.phase }

// enter sets the phase until the returned function is called.
func (d *DB) enter(phase string) func() {
	prev := d.phase
	d.phase = phase
	return func() { d.phase = prev }
}
