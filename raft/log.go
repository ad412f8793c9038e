package raft

import (
	"errors"
	"fmt"

	"github.com/dqlite-go/dqlite/internal/assert"
	"github.com/dqlite-go/dqlite/internal/mutant"
)

// raftLog is the log as raft sees it: durable entries in Storage followed by
// unstable entries not yet reported persisted, plus the commit and apply
// positions.
//
// Invariants: applied <= committed; applied <= persisted(); every entry at or
// above unstable.offset is read from unstable, every entry below from storage.
type raftLog struct {
	storage  Storage
	unstable unstable
	// committed is the highest index known committed.
	committed uint64
	// applied is the highest index handed out to be applied.
	applied uint64
	// readErr is the first error storage returned on a read raft cannot
	// do without (anything but ErrCompacted below the first index). It is
	// sticky: see Update.StorageErr.
	readErr error
}

// unstable holds entries (and at most one snapshot) not yet reported durable.
type unstable struct {
	// snapshot is a received snapshot waiting to be installed and persisted.
	snapshot *Snapshot
	// snapshotHandedOut is true once snapshot was returned in an Update.
	snapshotHandedOut bool
	entries           []Entry
	// offset is the index of entries[0] (or where the next one goes).
	offset uint64
	// handedOut is the highest index handed to the caller for persistence.
	handedOut uint64
}

func newLog(storage Storage) *raftLog {
	first := storage.FirstIndex()
	last := storage.LastIndex()
	l := &raftLog{storage: storage}
	l.unstable.offset = last + 1
	l.unstable.handedOut = last
	l.committed = first - 1
	l.applied = first - 1
	return l
}

func (l *raftLog) String() string {
	return fmt.Sprintf("committed=%d applied=%d offset=%d unstable=%d last=%d",
		l.committed, l.applied, l.unstable.offset, len(l.unstable.entries), l.lastIndex())
}

// firstIndex is the first index whose entry is available.
func (l *raftLog) firstIndex() uint64 {
	if l.unstable.snapshot != nil {
		return l.unstable.snapshot.Meta.Index + 1
	}
	return l.storage.FirstIndex()
}

func (l *raftLog) lastIndex() uint64 {
	if n := len(l.unstable.entries); n > 0 {
		return l.unstable.entries[n-1].Index
	}
	if l.unstable.snapshot != nil {
		return l.unstable.snapshot.Meta.Index
	}
	return l.storage.LastIndex()
}

// fail records a storage read failure (the first one is kept).
func (l *raftLog) fail(err error) {
	if l.readErr == nil {
		l.readErr = err
	}
}

// lastTerm returns the term of the last entry, or 0 if storage failed to
// say (recorded in readErr).
func (l *raftLog) lastTerm() uint64 {
	t, err := l.term(l.lastIndex())
	if err != nil {
		// Storage must answer Term(LastIndex()), even ErrCompacted is
		// a failure here.
		l.fail(fmt.Errorf("raft: reading the term of the last entry %d: %w", l.lastIndex(), err))
		return 0
	}
	return t
}

// term returns the term of entry i. It returns ErrCompacted below the first
// available index and ErrUnavailable above the last.
func (l *raftLog) term(i uint64) (uint64, error) {
	if s := l.unstable.snapshot; s != nil && i == s.Meta.Index {
		return s.Meta.Term, nil
	}
	if i >= l.unstable.offset {
		if i > l.lastIndex() {
			return 0, ErrUnavailable
		}
		return l.unstable.entries[i-l.unstable.offset].Term, nil
	}
	if l.unstable.snapshot != nil && i < l.unstable.snapshot.Meta.Index {
		return 0, ErrCompacted
	}
	// Storage holds every entry below unstable.offset that it did not
	// compact.
	t, err := l.storage.Term(i)
	if err != nil && !errors.Is(err, ErrCompacted) {
		l.fail(fmt.Errorf("raft: reading the term of entry %d: %w", i, err))
	}
	return t, err
}

// termOr returns the term of i, or 0 if it is not available.
func (l *raftLog) termOr(i uint64) uint64 {
	t, err := l.term(i)
	if err != nil {
		return 0
	}
	return t
}

func (l *raftLog) matchTerm(i, t uint64) bool {
	tt, err := l.term(i)
	return err == nil && tt == t
}

// isUpToDate reports whether a log ending at (lasti, term) is at least as
// up to date as ours (Raft §5.4.1).
func (l *raftLog) isUpToDate(lasti, term uint64) bool {
	lt := l.lastTerm()
	return term > lt || (term == lt && lasti >= l.lastIndex())
}

// slice returns entries [lo, hi) up to maxBytes (at least one).
func (l *raftLog) slice(lo, hi, maxBytes uint64) ([]Entry, error) {
	if lo >= hi {
		return nil, nil
	}
	if lo < l.firstIndex() {
		return nil, ErrCompacted
	}
	assert.That(hi <= l.lastIndex()+1, "slice [%d,%d) beyond last %d", lo, hi, l.lastIndex())
	var out []Entry
	if lo < l.unstable.offset {
		shi := min(hi, l.unstable.offset)
		ents, err := l.readEntries(lo, shi, maxBytes)
		if err != nil {
			return nil, err
		}
		if uint64(len(ents)) < shi-lo {
			return ents, nil // size limit reached
		}
		out = ents
	}
	if hi > l.unstable.offset {
		ulo := max(lo, l.unstable.offset)
		ents := l.unstable.entries[ulo-l.unstable.offset : hi-l.unstable.offset]
		if len(out) > 0 {
			combined := make([]Entry, 0, len(out)+len(ents))
			combined = append(combined, out...)
			out = append(combined, ents...)
		} else {
			out = ents
		}
	}
	return limitSize(out, maxBytes), nil
}

// readEntries reads entries [lo, hi) from storage, recording a failure:
// anything but ErrCompacted, or an answer that breaks the Storage contract.
func (l *raftLog) readEntries(lo, hi, maxBytes uint64) ([]Entry, error) {
	ents, err := l.storage.Entries(lo, hi, maxBytes)
	switch {
	case errors.Is(err, ErrCompacted):
		return nil, err
	case err == nil && (len(ents) == 0 || ents[0].Index != lo):
		err = fmt.Errorf("got %d entries starting at %d", len(ents), firstIndexOf(ents))
	}
	if err != nil {
		err = fmt.Errorf("raft: reading entries [%d,%d): %w", lo, hi, err)
		l.fail(err)
		return nil, err
	}
	return ents, nil
}

func firstIndexOf(ents []Entry) uint64 {
	if len(ents) == 0 {
		return 0
	}
	return ents[0].Index
}

// findConflict returns the index of the first entry of ents whose term
// differs from ours (or that we lack), or 0 if all match.
func (l *raftLog) findConflict(ents []Entry) uint64 {
	for _, e := range ents {
		if !l.matchTerm(e.Index, e.Term) {
			return e.Index
		}
	}
	return 0
}

// maybeAppend handles a leader's entries following (prevIndex, prevTerm). It
// returns the last index now known to match the leader, the entries actually
// appended (from the first conflict on), and ok=false if the previous entry
// does not match.
func (l *raftLog) maybeAppend(prevIndex, prevTerm uint64, ents []Entry) (lastNew uint64, appended []Entry, ok bool) {
	if !l.matchTerm(prevIndex, prevTerm) && !(mutant.On(mutant.RaftAppendIgnoresPrev) && prevIndex <= l.lastIndex()) {
		return 0, nil, false
	}
	lastNew = prevIndex + uint64(len(ents))
	ci := l.findConflict(ents)
	switch {
	case ci == 0:
	case ci <= l.committed:
		assert.Fail("entry %d conflicts with committed entry (committed=%d)", ci, l.committed)
	default:
		appended = ents[ci-ents[0].Index:]
		l.append(appended...)
	}
	return lastNew, appended, true
}

// append adds entries, truncating any conflicting suffix.
func (l *raftLog) append(ents ...Entry) {
	if len(ents) == 0 {
		return
	}
	first := ents[0].Index
	assert.That(first > l.committed, "append at %d would overwrite committed %d", first, l.committed)
	u := &l.unstable
	switch {
	case first == u.offset+uint64(len(u.entries)):
		u.entries = append(u.entries, ents...)
	case first <= u.offset:
		// Replace everything unstable and shadow the storage's suffix.
		u.offset = first
		u.entries = append([]Entry(nil), ents...)
	default:
		keep := u.entries[:first-u.offset]
		u.entries = append(append([]Entry(nil), keep...), ents...)
	}
	if u.handedOut >= first {
		u.handedOut = first - 1
	}
}

// persisted is the highest index known durable locally.
func (l *raftLog) persisted() uint64 {
	if l.unstable.snapshot != nil {
		return 0
	}
	return l.unstable.offset - 1
}

// stableTo records that entries up to (index, term) are durable. Reports for
// entries that were since replaced are ignored.
func (l *raftLog) stableTo(index, term uint64) bool {
	u := &l.unstable
	if s := u.snapshot; s != nil {
		if s.Meta.Index == index && s.Meta.Term == term && u.snapshotHandedOut {
			u.snapshot = nil
			u.snapshotHandedOut = false
			return true
		}
		return false
	}
	if index < u.offset || index >= u.offset+uint64(len(u.entries)) {
		return false
	}
	if u.entries[index-u.offset].Term != term || index > u.handedOut {
		return false
	}
	n := index + 1 - u.offset
	u.entries = u.entries[n:]
	u.offset = index + 1
	// Release the backing array when it has been fully consumed.
	if len(u.entries) == 0 {
		u.entries = nil
	}
	return true
}

// takeUnstable returns the entries not yet handed out for persistence.
func (l *raftLog) takeUnstable() []Entry {
	u := &l.unstable
	if u.snapshot != nil && !u.snapshotHandedOut {
		return nil // the snapshot goes first
	}
	last := u.offset + uint64(len(u.entries)) - 1
	if len(u.entries) == 0 || u.handedOut >= last {
		return nil
	}
	from := max(u.handedOut+1, u.offset)
	ents := u.entries[from-u.offset:]
	u.handedOut = last
	return ents
}

// takeSnapshot returns a received snapshot not yet handed out.
func (l *raftLog) takeSnapshot() *Snapshot {
	u := &l.unstable
	if u.snapshot == nil || u.snapshotHandedOut {
		return nil
	}
	u.snapshotHandedOut = true
	return u.snapshot
}

// restore replaces the whole log with a snapshot.
func (l *raftLog) restore(s *Snapshot) {
	l.committed = s.Meta.Index
	l.applied = s.Meta.Index
	l.unstable = unstable{snapshot: s, offset: s.Meta.Index + 1, handedOut: s.Meta.Index}
}

func (l *raftLog) commitTo(i uint64) {
	if i > l.committed {
		assert.That(i <= l.lastIndex(), "commit %d beyond last index %d", i, l.lastIndex())
		l.committed = i
	}
}

// nextApply returns committed, locally durable entries not yet handed out.
func (l *raftLog) nextApply(maxBytes uint64) []Entry {
	hi := min(l.committed, l.persisted())
	if hi <= l.applied || l.readErr != nil {
		return nil
	}
	ents, err := l.slice(l.applied+1, hi+1, maxBytes)
	if err != nil {
		// ErrCompacted: compacted under us, the caller's state machine
		// already holds everything up to the snapshot. Anything else is
		// in readErr.
		return nil
	}
	if len(ents) > 0 {
		l.applied = ents[len(ents)-1].Index
	}
	return ents
}
