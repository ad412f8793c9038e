package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/vfs"
	"github.com/dqlite-go/dqlite/wal"
)

// Streamed snapshots (with files).
//
// A leader sends a lagging or new node its databases from their files, in
// chunks, without an image in memory. A view is the state at the last
// applied index A: every database checkpointed completely (its file is
// exactly its state at A) and checkpoints paused while the view is open, so
// the files do not change (in WAL mode only checkpoints write a main file).
// Writes go on into the WALs meanwhile; a view whose WALs pass
// MaxHeldWALBytes is closed (the stream starts over from a new view later).
//
// The stream ("DQSQLv03"):
//
//	header:  magic | count u32 | count x (name length u16 | name | page size u32 | size u64)
//	files:   each database's file, in header order
//	trailer: crc32c of everything before it, u32
//
// The receiver writes the files as it gets them to new files of its data
// directory, checks the sizes and the checksum, syncs them, and on install
// switches its record to them in one atomic step, then checks each with
// quick_check.

const streamMagic = "DQSQLv03"

// MaxHeldWALBytes bounds the WAL (all databases together) that writes may
// pile up while a view is open, since checkpoints wait for it: past it the
// view closes (and a sender reopens a new one later).
const MaxHeldWALBytes = 64 << 20

// MaxStreamHeaderBytes bounds a stream's header (names of MaxDatabases
// databases).
const MaxStreamHeaderBytes = 4 + MaxDatabases*(2+MaxDatabaseNameBytes+12) + len(streamMagic)

type viewFile struct {
	name     string
	pageSize int
	size     int64
	f        vfs.File
}

// view is an open snapshot view on the leader.
type view struct {
	index  uint64
	header []byte
	files  []viewFile
	total  uint64 // header + files + trailer
	// crcAt is the running checksum at each chunk boundary served, so a
	// receiver may resume (or restart) at any of them.
	crcAt map[uint64]uint32
}

// ErrViewLater is returned by OpenView while a view cannot be made now (a
// write or transaction is pending, or a query holds a checkpoint back).
var ErrViewLater error = viewLater{}

type viewLater struct{}

func (viewLater) Error() string       { return "fsm: cannot open a snapshot view now, try later" }
func (viewLater) SnapshotLater() bool { return true }

// OpenView opens a view of the databases at the last applied index (see
// above) and returns that index. An open view is reused, whatever its
// index (several replicas may be receiving it).
func (d *DB) OpenView() (uint64, error) {
	defer d.end(d.begin(WorkSnapshot))
	if d.files == nil {
		return 0, errors.New("fsm: snapshot views need files")
	}
	if d.view != nil {
		return d.view.index, nil
	}
	defer d.enter(PhaseView)()
	if d.appliedIndex < d.replayBound {
		// Opened after a crash: a checkpoint cut short by it may have
		// left pages of entries up to replayBound in the files (their
		// recorded dirty index), which the replay puts right only once
		// it has passed them.
		return 0, ErrViewLater
	}
	for _, x := range d.dbs {
		if x.written && x.fileIndex > d.appliedIndex {
			// Replaying after a restart: this file is ahead of the
			// applied index the view would carry (harmless for frames,
			// not for statements): wait until the replay passes it.
			return 0, ErrViewLater
		}
	}
	v := &view{index: d.appliedIndex, crcAt: map[uint64]uint32{0: 0}}
	h := append([]byte(nil), streamMagic...)
	names := d.Names()
	h = binary.LittleEndian.AppendUint32(h, uint32(len(names)))
	for _, name := range names {
		x := d.dbs[name]
		if d.vfs.WALSize(name) != 0 {
			// The file must hold every applied frame. A passive
			// checkpoint on a free read connection gets there without
			// disturbing a write waiting to commit (whose frames are
			// hidden) or a transaction open on the write connection;
			// a query reading an older state stops it part way.
			r, err := d.freeReader(x)
			if err != nil {
				v.close()
				return 0, ErrViewLater
			}
			if err := d.markDirty(x); err != nil {
				d.lastCheckpointErr = d.checkpointError(x, err)
				v.close()
				return 0, ErrViewLater
			}
			if err := d.journal(x); err != nil {
				d.lastCheckpointErr = d.checkpointError(x, err)
				v.close()
				return 0, ErrViewLater
			}
			frames, copied, err := r.conn.CheckpointPassive()
			if err != nil || frames != copied {
				if err != nil {
					d.lastCheckpointErr = d.checkpointError(x, err)
				}
				v.close()
				return 0, ErrViewLater
			}
			if err := d.syncPassive(x); err != nil {
				v.close()
				return 0, err
			}
		}
		// The view reads the file on its own: the checkpoints' writes
		// must be in it, not queued (and none come while it is open).
		if err := d.vfs.FlushFile(name); err != nil {
			v.close()
			return 0, fmt.Errorf("fsm: %q for a snapshot: %w", name, err)
		}
		f, err := d.files.fs.Open(fileName(d.files.open[name]))
		if err != nil {
			v.close()
			return 0, fmt.Errorf("fsm: opening %q for a snapshot: %w", name, err)
		}
		size, err := f.Size()
		if err != nil {
			f.Close()
			v.close()
			return 0, fmt.Errorf("fsm: size of %q for a snapshot: %w", name, err)
		}
		v.files = append(v.files, viewFile{name: name, pageSize: x.pageSize, size: size, f: f})
		h = binary.LittleEndian.AppendUint16(h, uint16(len(name)))
		h = append(h, name...)
		h = binary.LittleEndian.AppendUint32(h, uint32(x.pageSize))
		h = binary.LittleEndian.AppendUint64(h, uint64(size))
	}
	v.header = h
	v.total = uint64(len(h)) + 4
	for _, f := range v.files {
		v.total += uint64(f.size)
	}
	d.view = v
	d.viewsOpened++
	return v.index, nil
}

func (v *view) close() {
	for _, f := range v.files {
		f.f.Close()
	}
}

// CloseView closes the open view, if any: checkpoints resume.
func (d *DB) CloseView() {
	if d.view != nil {
		d.view.close()
		d.view = nil
	}
}

// ViewOpen reports whether a view is open, and its index.
func (d *DB) ViewOpen() (uint64, bool) {
	if d.view == nil {
		return 0, false
	}
	return d.view.index, true
}

// ReadView returns up to maxBytes of the open view's stream from offset,
// and whether they end it; raft.ErrSnapshotChanged when no view at index is
// open.
func (d *DB) ReadView(index, offset uint64, maxBytes int) ([]byte, bool, error) {
	defer d.end(d.begin(WorkSnapshot))
	v := d.view
	if v == nil || v.index != index {
		return nil, false, raft.ErrSnapshotChanged
	}
	crc, ok := v.crcAt[offset]
	if !ok || offset >= v.total || maxBytes <= 4 {
		return nil, false, fmt.Errorf("fsm: snapshot view %d read at offset %d (of %d) that was never a chunk boundary", index, offset, v.total)
	}
	n := min(uint64(maxBytes), v.total-offset)
	out := make([]byte, 0, n)
	pos := offset
	// The header.
	if hl := uint64(len(v.header)); pos < hl {
		k := min(hl-pos, n)
		out = append(out, v.header[pos:pos+k]...)
		pos += k
	}
	// The files.
	base := uint64(len(v.header))
	for _, f := range v.files {
		end := base + uint64(f.size)
		if pos < end && uint64(len(out)) < n {
			k := min(end-pos, n-uint64(len(out)))
			buf := out[len(out) : len(out)+int(k)]
			if _, err := f.f.ReadAt(buf, int64(pos-base)); err != nil {
				d.CloseView()
				return nil, false, fmt.Errorf("fsm: reading %q for a snapshot: %w", f.name, err)
			}
			out = out[:len(out)+int(k)]
			pos += k
		}
		base = end
	}
	// The trailer, whole: a chunk never splits it.
	if pos == v.total-4 && uint64(len(out))+4 <= n {
		crc = crc32.Update(crc, castagnoli, out)
		out = binary.LittleEndian.AppendUint32(out, crc)
		return out, true, nil
	}
	if pos == v.total-4 && len(out) == 0 {
		return nil, false, fmt.Errorf("fsm: snapshot chunk of %d bytes cannot hold the trailer", maxBytes)
	}
	v.crcAt[pos] = crc32.Update(crc, castagnoli, out)
	return out, false, nil
}

// maybeCloseView closes a view the WALs grew past MaxHeldWALBytes under.
func (d *DB) maybeCloseView() {
	if d.view != nil && d.WALSize() > MaxHeldWALBytes {
		d.CloseView()
		d.viewsOverrun++
	}
}

// incoming is a snapshot being received (the sink's state).
type incoming struct {
	meta   raft.SnapshotMeta
	header []byte // until it is complete
	parsed bool
	files  []inFile
	next   uint64 // the next offset expected
	crc    uint32
	// trailer collects the last 4 bytes.
	trailer []byte
	done    bool
}

type inFile struct {
	name     string
	pageSize int
	size     int64
	id       uint64
	f        vfs.File
	written  int64
	synced   int64 // bytes synced (or written back) so far
}

// receiveSyncBytes is how much of a received file is written between two
// syncs of it, on a file system that cannot write back without a sync
// (wal.WriteBacker); on one that can, receiveWriteBackBytes is written
// between two write-backs and the file is synced once, at the end.
const (
	receiveSyncBytes      = 16 << 20
	receiveWriteBackBytes = 8 << 20
)

// MaxInstallCheckBytes bounds the databases a received snapshot's
// install runs PRAGMA quick_check on: it reads the whole database on the
// loop, about a second per GiB here. Larger ones rely on the stream's
// CRC-32C (end to end, from the leader's files) and on SQLite's own checks
// as pages are read.
const MaxInstallCheckBytes = 64 << 20

// WriteSnapshotChunk receives one chunk of a snapshot (raft.SnapshotSink).
func (d *DB) WriteSnapshotChunk(meta raft.SnapshotMeta, offset uint64, data []byte, done bool) error {
	defer d.end(d.begin(WorkSnapshot))
	if d.files == nil {
		return errors.New("fsm: receiving a streamed snapshot needs files")
	}
	defer d.enter(PhaseReceive)()
	if offset == 0 {
		d.AbortSnapshot()
		d.in = &incoming{meta: meta}
	}
	in := d.in
	if in == nil || in.meta.Index != meta.Index || in.meta.Term != meta.Term || offset != in.next || in.done {
		d.AbortSnapshot()
		return fmt.Errorf("fsm: snapshot chunk at %d out of order", offset)
	}
	if err := d.receive(in, data); err != nil {
		d.AbortSnapshot()
		return err
	}
	in.next += uint64(len(data))
	d.received += uint64(len(data))
	if !done {
		return nil
	}
	if err := d.finishReceive(in); err != nil {
		d.AbortSnapshot()
		return err
	}
	in.done = true
	// Complete: it waits for the loop to install it, whatever raft
	// receives meanwhile (a newer one replaces it when it completes).
	d.dropReceived(d.ready)
	d.ready, d.in = in, nil
	return nil
}

func (d *DB) receive(in *incoming, data []byte) error {
	for len(data) > 0 {
		if !in.parsed {
			need, err := headerNeed(in.header)
			if err != nil {
				return err
			}
			k := min(need-len(in.header), len(data))
			in.header = append(in.header, data[:k]...)
			in.crc = crc32.Update(in.crc, castagnoli, data[:k])
			data = data[k:]
			if len(in.header) == need {
				if done, err := d.parseHeader(in); err != nil {
					return err
				} else if done {
					in.parsed = true
				}
			}
			continue
		}
		// Files, in order.
		var cur *inFile
		for i := range in.files {
			if in.files[i].written < in.files[i].size {
				cur = &in.files[i]
				break
			}
		}
		if cur == nil {
			// The trailer.
			if len(in.trailer)+len(data) > 4 {
				return fmt.Errorf("%w: snapshot longer than its header says", ErrCorrupt)
			}
			in.trailer = append(in.trailer, data...)
			return nil
		}
		k := min(int64(len(data)), cur.size-cur.written)
		if _, err := cur.f.WriteAt(data[:k], cur.written); err != nil {
			return fmt.Errorf("fsm: writing received database %q: %w", cur.name, err)
		}
		in.crc = crc32.Update(in.crc, castagnoli, data[:k])
		cur.written += k
		data = data[k:]
		if wb, ok := cur.f.(wal.WriteBacker); ok && cur.written-cur.synced >= receiveWriteBackBytes {
			// Have the kernel write it as it comes, without waiting for
			// it (but for the range before), so that the sync at the end
			// has little left to write, and the loop never waits long.
			if err := wb.WriteBack(cur.synced, cur.written-cur.synced); err != nil {
				return fmt.Errorf("fsm: writing back received database %q: %w", cur.name, err)
			}
			cur.synced = cur.written
		} else if !ok && cur.written-cur.synced >= receiveSyncBytes {
			// Sync as it comes, so that no single sync (each one a loop
			// event) has much to write: not only the last.
			if err := cur.f.Sync(); err != nil {
				return fmt.Errorf("fsm: syncing received database %q: %w", cur.name, err)
			}
			cur.synced = cur.written
		}
	}
	return nil
}

// headerNeed is the length the header has to reach before it can be
// parsed further.
func headerNeed(h []byte) (int, error) {
	need := len(streamMagic) + 4
	if len(h) < need {
		return need, nil
	}
	if string(h[:len(streamMagic)]) != streamMagic {
		return 0, fmt.Errorf("%w: not a streamed snapshot", ErrCorrupt)
	}
	count := int(binary.LittleEndian.Uint32(h[len(streamMagic):]))
	if count > MaxDatabases {
		return 0, fmt.Errorf("%w: snapshot of %d databases (at most %d)", ErrCorrupt, count, MaxDatabases)
	}
	p := need
	for i := 0; i < count; i++ {
		if len(h) < p+2 {
			return p + 2, nil
		}
		n := int(binary.LittleEndian.Uint16(h[p:]))
		if n > MaxDatabaseNameBytes {
			return 0, fmt.Errorf("%w: snapshot database name of %d bytes", ErrCorrupt, n)
		}
		p += 2 + n + 12
		if len(h) < p {
			return p, nil
		}
	}
	return p, nil
}

// parseHeader decodes a complete header and creates the files; false if
// the header needs more bytes.
func (d *DB) parseHeader(in *incoming) (bool, error) {
	need, err := headerNeed(in.header)
	if err != nil || need > len(in.header) {
		return false, err
	}
	h := in.header
	count := int(binary.LittleEndian.Uint32(h[len(streamMagic):]))
	p := len(streamMagic) + 4
	seen := map[string]bool{}
	for i := 0; i < count; i++ {
		n := int(binary.LittleEndian.Uint16(h[p:]))
		name := string(h[p+2 : p+2+n])
		ps := int(binary.LittleEndian.Uint32(h[p+2+n:]))
		size := binary.LittleEndian.Uint64(h[p+6+n:])
		p += 2 + n + 12
		if CheckDatabaseName(name) != nil || seen[name] || !validPageSize(uint32(ps)) || size%uint64(ps) != 0 || size > 1<<46 {
			return false, fmt.Errorf("%w: snapshot database %d: bad entry %q (page size %d, %d bytes)", ErrCorrupt, i, name, ps, size)
		}
		seen[name] = true
		id := d.files.next
		d.files.next++
		f, err := d.files.fs.Create(fileName(id))
		if err != nil {
			return false, fmt.Errorf("fsm: creating a file for received database %q: %w", name, err)
		}
		in.files = append(in.files, inFile{name: name, pageSize: ps, size: int64(size), id: id, f: f})
	}
	return true, nil
}

// finishReceive checks a complete stream and makes its files durable.
func (d *DB) finishReceive(in *incoming) error {
	if !in.parsed || len(in.trailer) != 4 {
		return fmt.Errorf("%w: snapshot ended early", ErrCorrupt)
	}
	for _, f := range in.files {
		if f.written != f.size {
			return fmt.Errorf("%w: snapshot database %q ended early", ErrCorrupt, f.name)
		}
	}
	if binary.LittleEndian.Uint32(in.trailer) != in.crc {
		return fmt.Errorf("%w: snapshot fails its checksum", ErrCorrupt)
	}
	for _, f := range in.files {
		if err := f.f.Sync(); err != nil {
			return fmt.Errorf("fsm: syncing received database %q: %w", f.name, err)
		}
	}
	if err := d.files.fs.SyncDir(); err != nil {
		return fmt.Errorf("fsm: syncing data directory: %w", err)
	}
	return nil
}

// AbortSnapshot drops a partial received snapshot (raft.SnapshotSink); a
// complete one waiting to be installed stays.
func (d *DB) AbortSnapshot() {
	in := d.in
	d.in = nil
	d.dropReceived(in)
}

// dropReceived closes and removes a received snapshot's files.
func (d *DB) dropReceived(in *incoming) {
	if in == nil {
		return
	}
	for _, f := range in.files {
		f.f.Close()
		_ = d.files.fs.Remove(fileName(f.id))
	}
}

// InstallReceived replaces every database with the received snapshot at
// index (complete: WriteSnapshotChunk accepted its last chunk). The record
// naming the new files replaces the old one in one step; a crash before
// leaves the old set (the new files are removed at the next open), after
// it the new one.
func (d *DB) InstallReceived(index uint64) error {
	defer d.end(d.begin(WorkSnapshot))
	in := d.ready
	if in == nil || !in.done || in.meta.Index != index {
		return fmt.Errorf("fsm: no complete received snapshot at %d to install", index)
	}
	defer d.enter(PhaseInstall)()
	d.ready = nil
	// Check every database before the switch (the commit point), on its
	// own read-only VFS.
	for _, f := range in.files {
		if f.size == 0 || f.size > MaxInstallCheckBytes {
			continue
		}
		if problem := quickCheck(d.files.fs, f.name, fileName(f.id), f.pageSize); problem != "" {
			d.dropReceived(in)
			return fmt.Errorf("%w: received database %q: %s", ErrCorrupt, f.name, problem)
		}
	}
	d.Abort()
	d.CloseView()
	if err := d.dropDeferred(); err != nil {
		return err
	}
	d.closeCursors()
	if mutant.On(mutant.FSMRestoreKeepsOld) {
		// The deliberate bug: a database this node holds with a schema
		// is taken for installed, and its old file kept.
		for i, f := range in.files {
			if x := d.dbs[f.name]; x != nil && x.hasSchema() {
				f.f.Close()
				_ = d.files.fs.Remove(fileName(f.id))
				in.files[i].id = d.files.open[f.name]
				in.files[i].f = nopFile{}
			}
		}
	}
	for name, x := range d.dbs {
		if err := x.close(); err != nil {
			return err
		}
		delete(d.dbs, name)
		if err := d.vfs.Detach(name); err != nil {
			return err
		}
	}
	keep := map[uint64]bool{}
	for _, f := range in.files {
		keep[f.id] = true
	}
	for name, id := range d.files.open {
		if !keep[id] {
			d.files.forget(name)
		}
	}
	for _, f := range in.files {
		f.f.Close()
		d.files.open[f.name] = f.id
	}
	d.appliedIndex = index
	for _, f := range in.files {
		x, err := d.openDatabase(f.name, f.pageSize)
		if err != nil {
			return err
		}
		x.written, x.fileIndex, x.dirty, x.syncOwed = true, index, index, false
		x.markIndex, x.markedDirty = 0, 0
	}
	d.replayBound, d.appliedBefore = 0, 0
	if err := d.writeRecord(); err != nil {
		return err
	}
	if d.dbs[d.def] == nil {
		if _, err := d.openDatabase(d.def, d.pageSize); err != nil {
			return err
		}
	}
	return nil
}

// SnapshotMarker is the data of a snapshot whose state is the databases'
// files (the log records only its metadata).
var SnapshotMarker = []byte("DQSQLv03 files")

// StreamStats counts views opened and closed by WAL growth.
func (d *DB) StreamStats() (opened, overrun uint64) { return d.viewsOpened, d.viewsOverrun }

// ReceivedBytes counts the bytes of streamed snapshots this node has
// received (accepted chunks, whether or not their snapshot completed).
func (d *DB) ReceivedBytes() uint64 { return d.received }

// Streams reports whether snapshots are streamed from files (with a data
// directory).
func (d *DB) Streams() bool { return d.files != nil }

// Marker is SnapshotMarker (loop.StreamingStateMachine).
func (d *DB) Marker() []byte { return SnapshotMarker }

// CheckpointAll checkpoints every written database no query or
// transaction holds into its file (loop.StreamingStateMachine), so that
// DurableIndex reaches the last applied index when none does.
func (d *DB) CheckpointAll() error {
	if d.pending || d.view != nil {
		return nil
	}
	for _, name := range d.Names() {
		x := d.dbs[name]
		if x.cursors > 0 || d.txDB == x {
			continue
		}
		_, err := d.checkpointFile(x)
		if err := d.noteCheckpoint(err); err != nil {
			return err
		}
	}
	if d.files != nil && len(d.Names()) == 0 {
		_ = d.writeRecord()
	}
	return nil
}

// ReplayBound is the largest index, recorded or dirty, of the record the
// set was opened with (loop.StreamingStateMachine): the files hold no page
// of a later entry, and every entry up to it was applied (so committed)
// before the node stopped. The loop replays up to it before it starts: a
// file recorded ahead of the log's snapshot would otherwise keep views
// refused (OpenView) until the node learns, from a quorum, a commit index
// past it; a restarted leader whose followers need a snapshot never would.
func (d *DB) ReplayBound() uint64 { return max(d.replayBound, d.appliedBefore) }

// nopFile stands for a file already closed (the deliberate bug above).
type nopFile struct{ vfs.File }

func (nopFile) Close() error { return nil }
