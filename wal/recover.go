package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/raft"
)

// recover loads metadata, snapshots and segments, truncating a torn tail.
func (w *WAL) recover() (*Report, error) {
	rep := &Report{}
	names, err := w.fs.List()
	if err != nil {
		return rep, fmt.Errorf("wal: listing data directory: %w", err)
	}
	var segNames, snapNames []string
	for _, n := range names {
		switch {
		case strings.HasSuffix(n, ".tmp"):
			// An interrupted atomic write: the rename never happened.
			if err := w.fs.Remove(n); err != nil {
				return rep, fmt.Errorf("wal: removing %s: %w", n, err)
			}
			rep.Removed = append(rep.Removed, n)
		case strings.HasPrefix(n, "seg-") && strings.HasSuffix(n, ".log"):
			segNames = append(segNames, n)
		case strings.HasPrefix(n, "snap-") && strings.HasSuffix(n, ".snap"):
			snapNames = append(snapNames, n)
		}
	}
	if err := w.loadMeta(names); err != nil {
		return rep, err
	}
	if err := w.loadSnapshots(snapNames); err != nil {
		return rep, err
	}
	if s := w.newestSnap(); s != nil {
		w.first, w.prevTerm = s.meta.Index+1, s.meta.Term
	}
	sort.Strings(segNames) // zero-padded first index: name order is index order
	for i, n := range segNames {
		if err := w.loadSegment(n, i == len(segNames)-1, rep); err != nil {
			return rep, err
		}
	}
	if s := w.openSegment(); s != nil && s.last < s.hdr.firstIndex {
		// A segment created just before a crash or failed write, with no
		// entry: drop it so the next append starts a fresh one.
		s.file.Close()
		if err := w.fs.Remove(s.name); err != nil {
			return rep, fmt.Errorf("wal: removing empty segment %s: %w", s.name, err)
		}
		rep.Removed = append(rep.Removed, s.name)
		w.segs = w.segs[:len(w.segs)-1]
	}
	if err := w.reconcileWithSnapshot(rep); err != nil {
		return rep, err
	}
	rep.Segments, rep.Entries = len(w.segs), uint64(len(w.ents))
	if rep.TruncatedFile != "" || len(rep.Removed) > 0 {
		w.log.Warn("wal: recovery repaired the log", "truncated", rep.TruncatedFile, "at", rep.TruncatedAt,
			"bytes", rep.TruncatedBytes, "removed", rep.Removed)
	}
	if len(rep.Removed) > 0 {
		if err := w.fs.SyncDir(); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func readAll(fs FS, name string) ([]byte, error) {
	f, err := fs.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, size)
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf, nil
}

func (w *WAL) loadMeta(names []string) error {
	if !contains(names, metaName) {
		return nil
	}
	b, err := readAll(w.fs, metaName)
	if err != nil {
		return fmt.Errorf("wal: reading %s: %w", metaName, err)
	}
	m, ok := decodeMeta(b)
	if !ok || len(b) != metaBytes {
		// Written atomically by rename: a bad record is never a torn write.
		return &CorruptionError{File: metaName, Reason: "term and vote record fails its checksum"}
	}
	w.hard = m.hard
	return nil
}

func contains(names []string, n string) bool {
	for _, x := range names {
		if x == n {
			return true
		}
	}
	return false
}

// loadSnapshots verifies every snapshot file; the newest two are kept in
// memory. A snapshot that fails its checksum is corruption.
func (w *WAL) loadSnapshots(names []string) error {
	sort.Strings(names)
	for _, n := range names {
		b, err := readAll(w.fs, n)
		if err != nil {
			return fmt.Errorf("wal: reading %s: %w", n, err)
		}
		info, err := parseSnapshot(n, b)
		if err != nil {
			return err
		}
		w.snaps = append(w.snaps, info)
	}
	if len(w.snaps) > snapshotsKept {
		w.snaps = w.snaps[len(w.snaps)-snapshotsKept:]
	}
	return nil
}

func parseSnapshot(name string, b []byte) (snapInfo, error) {
	bad := func(reason string) error { return &CorruptionError{File: name, Reason: reason} }
	if len(b) < snapHeaderBytes+4 || string(b[:8]) != snapMagic {
		return snapInfo{}, bad("bad snapshot header")
	}
	if binary.LittleEndian.Uint32(b[len(b)-4:]) != crc(b[:len(b)-4]) {
		return snapInfo{}, bad("snapshot fails its checksum")
	}
	meta := raft.SnapshotMeta{Index: binary.LittleEndian.Uint64(b[8:]), Term: binary.LittleEndian.Uint64(b[16:]),
		ConfigIndex: binary.LittleEndian.Uint64(b[24:])}
	cl, dl := binary.LittleEndian.Uint64(b[32:]), binary.LittleEndian.Uint64(b[40:])
	if cl > MaxSnapshotConfigBytes || uint64(len(b)) != snapHeaderBytes+cl+dl+4 {
		return snapInfo{}, bad("snapshot lengths do not match the file size")
	}
	cfg, err := raft.DecodeMembership(b[snapHeaderBytes : snapHeaderBytes+cl])
	if err != nil {
		return snapInfo{}, bad("snapshot membership: " + err.Error())
	}
	meta.Config = cfg
	if name != snapshotName(meta.Index, meta.Term) {
		return snapInfo{}, bad("file name does not match the snapshot's index and term")
	}
	return snapInfo{meta: meta, name: name, dataOff: int64(snapHeaderBytes + cl), dataLen: int64(dl)}, nil
}

// loadSegment verifies a segment's header and batches. In the last segment
// a bad batch is a torn write: it and everything after are cut off. In any
// other segment it is corruption.
func (w *WAL) loadSegment(name string, last bool, rep *Report) error {
	f, err := w.fs.Open(name)
	if err != nil {
		return fmt.Errorf("wal: opening %s: %w", name, err)
	}
	size, err := f.Size()
	if err != nil {
		f.Close()
		return fmt.Errorf("wal: %s: %w", name, err)
	}
	hb := make([]byte, segmentHeaderBytes)
	_, herr := f.ReadAt(hb, 0)
	hdr, err := decodeSegmentHeader(hb)
	if herr != nil || err != nil {
		f.Close()
		if last && size <= segmentHeaderBytes {
			// The crash hit while the segment was being created (its
			// header is synced before any batch is written).
			if err := w.fs.Remove(name); err != nil {
				return fmt.Errorf("wal: removing torn segment %s: %w", name, err)
			}
			rep.Removed = append(rep.Removed, name)
			return nil
		}
		return &CorruptionError{File: name, Reason: fmt.Sprintf("segment header: %v %v", herr, err)}
	}
	expect := w.first + uint64(len(w.ents))
	if len(w.segs) > 0 && hdr.firstIndex != expect {
		f.Close()
		return &CorruptionError{File: name, First: hdr.firstIndex,
			Reason: fmt.Sprintf("segment starts at %d, previous segment ended at %d", hdr.firstIndex, expect-1)}
	}
	if name != segmentName(hdr.firstIndex) {
		f.Close()
		return &CorruptionError{File: name, Reason: "file name does not match the header's first index"}
	}
	if len(w.segs) == 0 {
		w.first, w.prevTerm = hdr.firstIndex, hdr.prevTerm
	}
	w.nextSegID = max(w.nextSegID, hdr.id)
	seg := &segment{name: name, hdr: hdr, file: f, last: hdr.firstIndex - 1, size: segmentHeaderBytes}
	w.segs = append(w.segs, seg)
	return w.loadBatches(seg, size, last, rep)
}

func (w *WAL) loadBatches(seg *segment, size int64, last bool, rep *Report) error {
	off := int64(segmentHeaderBytes)
	next := seg.hdr.firstIndex
	for off < size {
		locs, n, err := readBatch(seg.file, off, size, next)
		if err == nil && n == 0 {
			break // all-zero header: end of written data
		}
		if err != nil {
			if last && !errors.Is(err, errTorn) && zerosAfter(seg.file, off, size) {
				// In a preallocated segment a torn final write is
				// followed by never-written zeros, not the end of file.
				err = fmt.Errorf("%w: %v", errTorn, err)
			}
			if !last || !errors.Is(err, errTorn) {
				return &CorruptionError{File: seg.name, Offset: off, First: next, Reason: err.Error()}
			}
			if mutant.On(mutant.WALRecoverKeepsTorn) {
				// The deliberate bug: the torn batch stays in the file and
				// the next batch is written after it.
				rep.TruncatedFile, rep.TruncatedAt, rep.TruncatedBytes = seg.name, off, size-off
				seg.size, seg.last = size, next-1
				return w.checkFirstTerm(seg)
			}
			if err := seg.file.Truncate(off); err != nil {
				return fmt.Errorf("wal: truncating torn tail of %s: %w", seg.name, err)
			}
			if err := seg.file.Sync(); err != nil {
				return fmt.Errorf("wal: syncing %s: %w", seg.name, err)
			}
			rep.TruncatedFile, rep.TruncatedAt, rep.TruncatedBytes = seg.name, off, size-off
			break
		}
		for _, l := range locs {
			w.ents = append(w.ents, entry{loc: l, seg: seg})
		}
		next += uint64(len(locs))
		off += n
	}
	seg.size, seg.last = off, next-1
	if err := w.checkFirstTerm(seg); err != nil {
		return err
	}
	if size > off && rep.TruncatedFile != seg.name {
		if !last {
			return &CorruptionError{File: seg.name, Offset: off, First: next,
				Reason: fmt.Sprintf("%d bytes after the end marker of a closed segment", size-off)}
		}
		// Zeros past the last batch (never-written space): cut them so
		// appends follow the last good batch.
		if err := seg.file.Truncate(off); err != nil {
			return fmt.Errorf("wal: truncating %s: %w", seg.name, err)
		}
	}
	return nil
}

// checkFirstTerm checks a loaded segment's first entry has the term its
// header names.
func (w *WAL) checkFirstTerm(seg *segment) error {
	if seg.hdr.firstIndex <= seg.last {
		if t := w.ents[seg.hdr.firstIndex-w.first].loc.term; t != seg.hdr.firstTerm {
			return &CorruptionError{File: seg.name, First: seg.hdr.firstIndex,
				Reason: fmt.Sprintf("first entry has term %d, header says %d", t, seg.hdr.firstTerm)}
		}
	}
	return nil
}

// errTorn marks a batch that may be the remains of an interrupted write:
// cut short by the end of the file.
var errTorn = errors.New("batch cut short by the end of the file")

// readBatch reads and verifies the batch at off; n is its total size (0 for
// an all-zero header). A batch that runs past the end of the file returns
// errTorn; one whose payload fails its checksum while ending exactly at the
// end of the file returns an error wrapping errTorn too (the file size can
// be updated before its data reaches the disk).
func readBatch(f File, off, size int64, want uint64) ([]entryLoc, int64, error) {
	if size-off < batchHeaderBytes {
		return nil, 0, fmt.Errorf("%w: partial batch header (%d bytes)", errTorn, size-off)
	}
	h := make([]byte, batchHeaderBytes)
	if _, err := f.ReadAt(h, off); err != nil {
		return nil, 0, err
	}
	length, count := binary.LittleEndian.Uint32(h[0:]), binary.LittleEndian.Uint32(h[4:])
	if length == 0 && count == 0 && binary.LittleEndian.Uint64(h[8:]) == 0 {
		return nil, 0, nil
	}
	if binary.LittleEndian.Uint32(h[12:]) != crc(h[0:8]) {
		return nil, 0, errors.New("batch header fails its checksum")
	}
	end := off + batchHeaderBytes + int64(length)
	if end > size {
		return nil, 0, fmt.Errorf("%w: batch of %d bytes", errTorn, length)
	}
	if length > MaxBatchBytes {
		return nil, 0, fmt.Errorf("batch of %d bytes exceeds %d", length, MaxBatchBytes)
	}
	p := make([]byte, length)
	if _, err := f.ReadAt(p, off+batchHeaderBytes); err != nil {
		return nil, 0, err
	}
	if binary.LittleEndian.Uint32(h[8:]) != crc(h[0:8], p) {
		if end == size {
			return nil, 0, fmt.Errorf("%w: last batch fails its checksum", errTorn)
		}
		return nil, 0, errors.New("batch fails its checksum")
	}
	locs, _, err := decodeBatchPayload(p, count, off+batchHeaderBytes, want)
	if err != nil {
		return nil, 0, err
	}
	return locs, batchHeaderBytes + int64(length), nil
}

// reconcileWithSnapshot drops log entries the newest snapshot makes
// meaningless: a log that ends before the snapshot, or one whose entry at
// the snapshot's index has another term (an old divergent log left by a
// crash while a received snapshot replaced it).
func (w *WAL) reconcileWithSnapshot(rep *Report) error {
	s := w.newestSnap()
	if s == nil && w.first > 1 {
		return &CorruptionError{File: w.segs[0].name, First: w.first,
			Reason: fmt.Sprintf("log starts at %d and no snapshot covers the entries before", w.first)}
	}
	if s == nil || len(w.ents) == 0 {
		return nil
	}
	last := w.lastIndexLocked()
	t, err := w.termLocked(s.meta.Index)
	stale := last < s.meta.Index || (err == nil && t != s.meta.Term)
	if !stale && w.first > s.meta.Index+1 {
		return &CorruptionError{File: w.segs[0].name, First: w.first,
			Reason: fmt.Sprintf("log starts at %d, after snapshot %d", w.first, s.meta.Index)}
	}
	if !stale {
		return nil
	}
	for _, seg := range w.segs {
		seg.file.Close()
		if err := w.fs.Remove(seg.name); err != nil {
			return fmt.Errorf("wal: removing %s: %w", seg.name, err)
		}
		rep.Removed = append(rep.Removed, seg.name)
	}
	w.segs, w.ents = nil, nil
	w.first, w.prevTerm = s.meta.Index+1, s.meta.Term
	return nil
}

// zerosAfter reports whether everything after the batch at off (past its
// header, or past its declared end if the header is intact) is zero: what a
// preallocated segment holds after a torn final write.
func zerosAfter(f File, off, size int64) bool {
	from := off + batchHeaderBytes
	h := make([]byte, batchHeaderBytes)
	if _, err := f.ReadAt(h, off); err == nil && binary.LittleEndian.Uint32(h[12:]) == crc(h[0:8]) {
		from += int64(binary.LittleEndian.Uint32(h[0:]))
	}
	if from >= size {
		return true
	}
	rest := make([]byte, size-from)
	if _, err := f.ReadAt(rest, from); err != nil && !errors.Is(err, io.EOF) {
		return false
	}
	for _, b := range rest {
		if b != 0 {
			return false
		}
	}
	return true
}
