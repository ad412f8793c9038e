package wal

import "github.com/dqlite-go/dqlite/internal/assert"

// suffixCut is a suffix replacement done on disk but not yet shown to
// readers. The writer's segment list (w.segs) already reflects it; the index
// (w.ents), and the segments and files it refers to, are still the old
// log's, so readers keep reading the old log (from files that were removed
// or renamed over but are still open) until publish applies the cut and the
// new entries in one step. Only then are the retired files closed.
type suffixCut struct {
	from      uint64     // entries at and after from are gone from the disk
	rewritten *segment   // the copy of the segment holding from, if any
	kept      []entryLoc // where rewritten holds its entries (those below from)
	retired   []*segment // out of w.segs; closed once the cut is applied
}

// truncateFrom durably removes the entries at and after index i (last is
// the last index): later segments are removed first, then the segment
// holding i is rewritten (through a temporary file and a rename) without
// them. A crash in between leaves a prefix of the old log. Readers see none
// of it until publish. The cut returned says what is gone from the disk,
// also with an error (the work may have stopped half way).
func (w *WAL) truncateFrom(i, last uint64) (*suffixCut, error) {
	cut := &suffixCut{from: last + 1}
	for n := len(w.segs) - 1; n >= 0 && w.segs[n].hdr.firstIndex > i; n-- {
		s := w.segs[n]
		if err := w.fs.Remove(s.name); err != nil {
			return cut, err
		}
		w.mu.Lock()
		w.segs = w.segs[:n]
		w.mu.Unlock()
		cut.from = s.hdr.firstIndex
		cut.retired = append(cut.retired, s)
	}
	if len(cut.retired) > 0 {
		if err := w.fs.SyncDir(); err != nil {
			return cut, err
		}
	}
	assert.That(len(w.segs) > 0, "no segment holds entry %d (last %d)", i, last)
	return cut, w.cutSegment(cut, w.segs[len(w.segs)-1], i)
}

// cutSegment removes the entries at and after i from seg, the last segment,
// which holds i: the whole file when i is its first entry, otherwise by
// writing a copy with the entries below i to a temporary file, syncing it
// and renaming it over seg's file. Readers keep reading seg's old file (the
// same data for the entries below i) until the cut is applied.
func (w *WAL) cutSegment(cut *suffixCut, seg *segment, i uint64) error {
	if seg.hdr.firstIndex >= i {
		if err := w.fs.Remove(seg.name); err != nil {
			return err
		}
		w.mu.Lock()
		w.segs = w.segs[:len(w.segs)-1]
		w.mu.Unlock()
		cut.from = seg.hdr.firstIndex
		cut.retired = append(cut.retired, seg)
		return w.fs.SyncDir()
	}
	kept, err := w.Entries(seg.hdr.firstIndex, i, ^uint64(0))
	if err != nil {
		return err
	}
	batch := encodeBatch(kept)
	if err := w.writeFileSynced(segTempName, seg.hdr.encode(), batch); err != nil {
		return err
	}
	if err := w.fs.Rename(segTempName, seg.name); err != nil {
		return err
	}
	cut.from = i // seg's name now holds the copy
	f, err := w.fs.Open(seg.name)
	if err != nil {
		// seg stays in w.segs, and readers keep reading its old file.
		// The log fails for good (an open does not fail for a full disk,
		// so Resume refuses it): nothing is appended to the old file.
		return err
	}
	rewritten := &segment{name: seg.name, hdr: seg.hdr, file: f, last: i - 1,
		size: segmentHeaderBytes + int64(len(batch))}
	cut.rewritten, cut.kept = rewritten, batchLocs(segmentHeaderBytes, kept)
	cut.retired = append(cut.retired, seg)
	w.mu.Lock()
	w.segs[len(w.segs)-1] = rewritten
	w.mu.Unlock()
	return w.fs.SyncDir()
}

// applyCut shows readers a suffix cut: the entries kept by the rewritten
// segment now point into its file, and those from cut.from on are dropped.
// Called with mu held, in the same critical section that appends the new
// entries.
func (w *WAL) applyCut(cut *suffixCut) {
	if s := cut.rewritten; s != nil {
		assert.That(s.hdr.firstIndex >= w.first && s.hdr.firstIndex+uint64(len(cut.kept)) == cut.from &&
			cut.from <= w.lastIndexLocked()+1,
			"rewritten segment %s holds %d entries from %d, cut at %d, log %d..%d",
			s.name, len(cut.kept), s.hdr.firstIndex, cut.from, w.first, w.lastIndexLocked())
		base := s.hdr.firstIndex - w.first
		for n, loc := range cut.kept {
			e := &w.ents[base+uint64(n)]
			assert.That(e.loc.term == loc.term && e.loc.length == loc.length,
				"entry %d rewritten as term %d length %d, was term %d length %d",
				s.hdr.firstIndex+uint64(n), loc.term, loc.length, e.loc.term, e.loc.length)
			e.loc, e.seg = loc, s
		}
	}
	for _, s := range cut.retired {
		assert.That(s.hdr.firstIndex >= cut.from || (cut.rewritten != nil && s.name == cut.rewritten.name),
			"segment %s retired by a cut at %d still holds entries", s.name, cut.from)
	}
	w.dropEntriesFrom(cut.from)
}
