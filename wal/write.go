package wal

import (
	"encoding/binary"
	"fmt"

	"github.com/dqlite-go/dqlite/internal/assert"
	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/raft"
)

const (
	metaName     = "meta"
	metaTempName = "meta.tmp"
	segTempName  = "segment.tmp"
	snapTempName = "snapshot.tmp"
)

func segmentName(first uint64) string { return fmt.Sprintf("seg-%020d.log", first) }

func snapshotName(index, term uint64) string {
	return fmt.Sprintf("snap-%020d-%020d.snap", index, term)
}

// writeFileAtomic writes name through a temporary file, fsync, rename and
// directory fsync: after a crash the file holds either the old or the new
// content.
func (w *WAL) writeFileAtomic(name, tmp string, parts ...[]byte) error {
	if err := w.writeFileSynced(tmp, parts...); err != nil {
		return err
	}
	if err := w.fs.Rename(tmp, name); err != nil {
		return err
	}
	return w.fs.SyncDir()
}

// writeFileUnsynced is writeFileAtomic without its file and directory
// syncs: the deliberate bug mutant.WALHardStateNoSync (a crash may lose the
// new content, the rename, or both).
func (w *WAL) writeFileUnsynced(name, tmp string, parts ...[]byte) error {
	if err := w.writeFile(tmp, false, parts...); err != nil {
		return err
	}
	return w.fs.Rename(tmp, name)
}

// writeFileSynced creates (or truncates) name, writes parts one after the
// other and syncs it.
func (w *WAL) writeFileSynced(name string, parts ...[]byte) error {
	return w.writeFile(name, true, parts...)
}

// writeFile is writeFileSynced, syncing only with sync.
func (w *WAL) writeFile(name string, sync bool, parts ...[]byte) error {
	f, err := w.fs.Create(name)
	if err != nil {
		return err
	}
	var off int64
	for _, p := range parts {
		if _, err := f.WriteAt(p, off); err != nil {
			f.Close()
			return err
		}
		off += int64(len(p))
	}
	if sync {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// SetHardState makes term and vote durable, together, before returning.
func (w *WAL) SetHardState(hs raft.HardState) error {
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	if err := w.checkFailed(); err != nil {
		return err
	}
	write := w.writeFileAtomic
	if mutant.On(mutant.WALHardStateNoSync) {
		write = w.writeFileUnsynced
	}
	if err := write(metaName, metaTempName, metaRecord{hard: hs}.encode()); err != nil {
		return w.fail(fmt.Errorf("writing term and vote: %w", err))
	}
	w.mu.Lock()
	w.hard = hs
	w.mu.Unlock()
	return nil
}

// Append durably writes entries with one write and one sync, replacing any
// suffix from ents[0].Index first (that replacement is durable before the
// new entries are written). Entries already covered by the snapshot are
// skipped. Readers see the log as it was until Append publishes the
// replacement and the new entries together.
func (w *WAL) Append(ents []raft.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	if err := w.checkFailed(); err != nil {
		return err
	}
	w.mu.Lock()
	first, last := w.first, w.lastIndexLocked()
	w.mu.Unlock()
	if ents[len(ents)-1].Index < first {
		return nil
	}
	if ents[0].Index < first {
		ents = ents[first-ents[0].Index:]
	}
	if ents[0].Index > last+1 {
		return fmt.Errorf("wal: append at %d leaves a gap after %d", ents[0].Index, last)
	}
	for i, e := range ents {
		if e.Index != ents[0].Index+uint64(i) {
			return fmt.Errorf("wal: append: entries not consecutive at %d", e.Index)
		}
	}
	// Refused before the suffix is touched, so the log stays as it was.
	batch := encodeBatch(ents)
	if len(batch)-batchHeaderBytes > maxBatchBytes {
		return fmt.Errorf("wal: batch of %d payload bytes exceeds %d", len(batch)-batchHeaderBytes, maxBatchBytes)
	}
	var cut *suffixCut
	if ents[0].Index <= last {
		var err error
		if cut, err = w.truncateFrom(ents[0].Index, last); err != nil {
			return w.failCut(cut, fmt.Errorf("truncating log from %d: %w", ents[0].Index, err))
		}
	}
	seg, err := w.segmentFor(ents[0], int64(len(batch)))
	if err != nil {
		return w.failCut(cut, fmt.Errorf("starting segment at %d: %w", ents[0].Index, err))
	}
	if _, err := seg.file.WriteAt(batch, seg.size); err != nil {
		if IsNoSpace(err) {
			// Cut the partial batch so the file stays consistent.
			_ = seg.file.Truncate(seg.size)
		}
		return w.failCut(cut, fmt.Errorf("writing %s: %w", seg.name, err))
	}
	if !mutant.On(mutant.WALNoFsync) {
		if err := seg.file.Sync(); err != nil {
			return w.failCut(cut, fmt.Errorf("syncing %s: %w", seg.name, err))
		}
	}
	w.publish(cut, seg, ents, batch)
	return nil
}

// publish makes an append visible to readers in one step under mu: the
// suffix cut (if any) and the entries written to seg (none if seg is nil).
// The files the cut retired are closed afterwards, once no entry refers to
// them.
func (w *WAL) publish(cut *suffixCut, seg *segment, ents []raft.Entry, batch []byte) {
	w.mu.Lock()
	if cut != nil {
		w.applyCut(cut)
	}
	if seg != nil {
		assert.That(ents[0].Index == w.lastIndexLocked()+1, "publishing entries from %d after last %d",
			ents[0].Index, w.lastIndexLocked())
		for n, loc := range batchLocs(seg.size, ents) {
			w.ents = append(w.ents, entry{loc: loc, seg: seg})
			w.cacheAdd(&w.ents[len(w.ents)-1], ents[n].Data)
		}
		seg.size += int64(len(batch))
		seg.last = ents[len(ents)-1].Index
	}
	w.mu.Unlock()
	if cut != nil {
		for _, s := range cut.retired {
			s.file.Close()
		}
	}
}

// failCut shows readers the part of a suffix replacement that reached the
// disk before err (the log must not claim entries the disk no longer has),
// then fails the log.
func (w *WAL) failCut(cut *suffixCut, err error) error {
	if cut != nil {
		w.publish(cut, nil, nil, nil)
	}
	return w.fail(err)
}

// batchLocs returns where a batch of ents written at offset off holds each
// entry's data.
func batchLocs(off int64, ents []raft.Entry) []entryLoc {
	locs := make([]entryLoc, len(ents))
	off += batchHeaderBytes
	for n, e := range ents {
		off += entryHeaderBytes
		locs[n] = entryLoc{term: e.Term, typ: e.Type, off: off, length: uint32(len(e.Data)), sum: crc(e.Data)}
		off += int64(len(e.Data))
	}
	return locs
}

// segmentFor returns the open segment, starting a new one when there is
// none or the open one would grow past SegmentSizeMax.
func (w *WAL) segmentFor(e raft.Entry, n int64) (*segment, error) {
	if s := w.openSegment(); s != nil {
		empty := s.last < s.hdr.firstIndex
		switch {
		case empty && s.hdr.firstIndex == e.Index && s.hdr.firstTerm == e.Term:
			return s, nil
		case empty:
			// Left empty by a failed write: its header names another
			// first entry. Replace it.
			s.file.Close()
			if err := w.fs.Remove(s.name); err != nil {
				return nil, err
			}
			w.mu.Lock()
			w.segs = w.segs[:len(w.segs)-1]
			w.mu.Unlock()
		case s.size+n <= w.opts.SegmentSizeMax:
			return s, nil
		default:
			// Close it: cut its preallocated tail, so closed segments end
			// at their last batch.
			if err := s.file.Truncate(s.size); err != nil {
				return nil, err
			}
			if err := s.file.Sync(); err != nil {
				return nil, err
			}
		}
	}
	w.mu.Lock()
	prevTerm, err := w.termLocked(e.Index - 1)
	w.nextSegID++
	id := w.nextSegID
	w.mu.Unlock()
	if err != nil {
		prevTerm = 0
	}
	hdr := segmentHeader{id: id, firstIndex: e.Index, firstTerm: e.Term, prevTerm: prevTerm}
	name := segmentName(e.Index)
	f, err := w.fs.Create(name)
	if err != nil {
		return nil, err
	}
	if err := w.initSegment(f, hdr); err != nil {
		return nil, w.abandonSegment(f, name, err)
	}
	s := &segment{name: name, hdr: hdr, file: f, last: e.Index - 1, size: segmentHeaderBytes}
	w.mu.Lock()
	w.segs = append(w.segs, s)
	w.mu.Unlock()
	return s, nil
}

// initSegment writes a new segment's header and preallocated space, and
// makes the file and its name durable.
func (w *WAL) initSegment(f File, hdr segmentHeader) error {
	if _, err := f.WriteAt(hdr.encode(), 0); err != nil {
		return err
	}
	if err := w.preallocate(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return w.fs.SyncDir()
}

// abandonSegment closes and durably removes a new segment whose creation
// failed with err. Left in place, its header would claim the next index
// for a file the log never wrote to: once a full disk is resumed the next
// batch may fit the previous segment, and the next Open would refuse the
// two as overlapping. If the removal fails too, the error returned does not
// wrap err, so a full disk cannot be resumed with the file still there.
func (w *WAL) abandonSegment(f File, name string, err error) error {
	f.Close()
	rmErr := w.fs.Remove(name)
	if rmErr == nil {
		rmErr = w.fs.SyncDir()
	}
	if rmErr != nil {
		return fmt.Errorf("%v; removing the new %s: %w", err, name, rmErr)
	}
	return err
}

// CreateSnapshot durably records a snapshot of the state machine at
// meta.Index, keeps the newest two, and removes the segments no retained
// snapshot needs (keeping TrailingEntries behind the newest).
func (w *WAL) CreateSnapshot(meta raft.SnapshotMeta, data []byte) error {
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	if err := w.checkFailed(); err != nil {
		return err
	}
	if s := w.Snapshot(); meta.Index <= s.Index {
		return fmt.Errorf("wal: snapshot at %d is not newer than %d", meta.Index, s.Index)
	}
	if t, err := w.Term(meta.Index); err != nil || t != meta.Term {
		return fmt.Errorf("wal: snapshot at %d/%d does not match the log (term %d, %v)", meta.Index, meta.Term, t, err)
	}
	if err := w.writeSnapshot(meta, data); err != nil {
		return w.fail(fmt.Errorf("writing snapshot %d: %w", meta.Index, err))
	}
	if err := w.compact(); err != nil {
		return w.fail(fmt.Errorf("compacting after snapshot %d: %w", meta.Index, err))
	}
	return nil
}

// InstallSnapshot durably replaces the whole log with a snapshot received
// from the leader.
func (w *WAL) InstallSnapshot(snap raft.Snapshot) error {
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	if err := w.checkFailed(); err != nil {
		return err
	}
	if err := w.writeSnapshot(snap.Meta, snap.Data); err != nil {
		return w.fail(fmt.Errorf("writing snapshot %d: %w", snap.Meta.Index, err))
	}
	w.mu.Lock()
	segs := append(w.compacted, w.segs...)
	w.segs, w.compacted = nil, nil
	w.ents, w.cacheFrom, w.cached = nil, 0, 0
	w.first, w.prevTerm = snap.Meta.Index+1, snap.Meta.Term
	w.mu.Unlock()
	for _, s := range segs {
		s.file.Close()
		if err := w.fs.Remove(s.name); err != nil {
			return w.fail(fmt.Errorf("removing %s: %w", s.name, err))
		}
	}
	if err := w.fs.SyncDir(); err != nil {
		return w.fail(err)
	}
	return nil
}

// writeSnapshot writes a snapshot file atomically and drops the oldest
// beyond snapshotsKept.
func (w *WAL) writeSnapshot(meta raft.SnapshotMeta, data []byte) error {
	config := raft.EncodeMembership(meta.Config)
	hdr := encodeSnapshotHeader(meta, config, len(data))
	sum := binary.LittleEndian.AppendUint32(nil, crc(hdr, data))
	name := snapshotName(meta.Index, meta.Term)
	if err := w.writeFileAtomic(name, snapTempName, hdr, data, sum); err != nil {
		return err
	}
	info := snapInfo{meta: meta, name: name, dataOff: int64(len(hdr)), dataLen: int64(len(data))}
	info.meta.Config = meta.Config.Clone()
	w.mu.Lock()
	w.snaps = append(w.snaps, info)
	var drop []snapInfo
	if len(w.snaps) > snapshotsKept {
		drop = append(drop, w.snaps[:len(w.snaps)-snapshotsKept]...)
		w.snaps = append([]snapInfo(nil), w.snaps[len(w.snaps)-snapshotsKept:]...)
	}
	w.mu.Unlock()
	for _, s := range drop {
		if err := w.fs.Remove(s.name); err != nil {
			return err
		}
	}
	if len(drop) > 0 {
		return w.fs.SyncDir()
	}
	return nil
}

// compact removes whole segments below the compaction point: the older
// retained snapshot's index, and TrailingEntries behind the newest one. The
// open segment stays.
func (w *WAL) compact() error {
	w.mu.Lock()
	newest := w.snaps[len(w.snaps)-1].meta.Index
	point := newest
	if w.opts.TrailingEntries < point {
		point -= w.opts.TrailingEntries
	} else {
		point = 0
	}
	if tb := w.opts.TrailingBytes; tb > 0 {
		// No more than TrailingBytes of entry data either: a replica
		// further behind gets the snapshot instead (cheaper than a
		// backlog of large entries).
		var sum int64
		i := min(newest, w.first+uint64(len(w.ents))-1)
		for i > point && i >= w.first {
			if sum += int64(w.ents[i-w.first].loc.length); sum > tb {
				break
			}
			i--
		}
		point = max(point, i)
	}
	if len(w.snaps) > 1 {
		point = min(point, w.snaps[0].meta.Index)
	}
	var drop []*segment
	for len(w.segs) > 1 && w.segs[0].last <= point {
		drop = append(drop, w.segs[0])
		w.segs = w.segs[1:]
	}
	if len(drop) > 0 {
		next := w.segs[0]
		n := int(next.hdr.firstIndex - w.first)
		// Copy rather than reslice, so the dropped prefix's memory is
		// released (the index is part of the memory budget).
		w.ents = append(make([]entry, 0, len(w.ents)-n+len(w.ents)/8+16), w.ents[n:]...)
		w.cacheFrom = max(0, w.cacheFrom-n)
		w.first, w.prevTerm = next.hdr.firstIndex, next.hdr.prevTerm
		w.recountCache()
	}
	w.mu.Unlock()
	if len(drop) > 0 {
		// Out of the index, so no reader reaches them; their files go
		// in RemoveCompacted, off the caller's goroutine (removing a
		// segment drops its cached pages: 26-40 ms for 64 MiB measured
		// on the loop, which compacts).
		w.compacted = append(w.compacted, drop...)
		w.log.Info("wal: compacted log", "segments", len(drop), "first", w.FirstIndex())
	}
	return nil
}

// RemoveCompacted removes the files of the segments a snapshot compacted
// out of the log (CreateSnapshot only drops them from the index). The node
// calls it on its disk goroutine after a write; until then, or if a crash
// comes first, the files are only older entries the next compaction drops
// again. A failure fails the log.
func (w *WAL) RemoveCompacted() error {
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	if len(w.compacted) == 0 {
		return nil
	}
	if err := w.checkFailed(); err != nil {
		return err
	}
	for len(w.compacted) > 0 {
		s := w.compacted[0]
		s.file.Close()
		if err := w.fs.Remove(s.name); err != nil {
			return w.fail(fmt.Errorf("removing compacted %s: %w", s.name, err))
		}
		w.compacted = w.compacted[1:]
	}
	w.compacted = nil
	if err := w.fs.SyncDir(); err != nil {
		return w.fail(fmt.Errorf("removing compacted segments: %w", err))
	}
	return nil
}

func (w *WAL) recountCache() {
	w.cached = 0
	for k := w.cacheFrom; k < len(w.ents); k++ {
		w.cached += int64(len(w.ents[k].data))
	}
	w.evict()
}

// preallocateChunkBytes is the size of the zero writes that preallocate a
// segment.
const preallocateChunkBytes = 1 << 20

// preallocate fills a new segment with zeros up to SegmentSizeMax (an
// all-zero batch header marks the end of the written data).
func (w *WAL) preallocate(f File) error {
	if w.opts.NoPreallocate {
		return nil
	}
	zeros := make([]byte, min(preallocateChunkBytes, w.opts.SegmentSizeMax))
	for off := int64(segmentHeaderBytes); off < w.opts.SegmentSizeMax; off += int64(len(zeros)) {
		n := min(int64(len(zeros)), w.opts.SegmentSizeMax-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
	}
	return nil
}
