package raft

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Storage is the read-only view of durable state that raft needs. The caller
// owns writing to it (following the Update rules); raft only reads. Methods
// must return entries that were reported through Persisted, and may return
// more (an append whose Persisted report has not been processed yet).
//
// The durable implementation lives in package wal; MemoryStorage is the
// in-memory one used by tests and the simulator.
type Storage interface {
	// InitialState returns the durable HardState.
	InitialState() (HardState, error)
	// Snapshot returns the metadata of the newest durable snapshot, or the
	// zero value if there is none.
	Snapshot() SnapshotMeta
	// FirstIndex is the index of the first entry available. It is at most
	// Snapshot().Index+1 (a storage may keep entries the snapshot covers),
	// and Term(FirstIndex()-1) must be answerable.
	FirstIndex() uint64
	// LastIndex is the index of the last entry (Snapshot().Index if none).
	LastIndex() uint64
	// Term returns the term of entry i, for FirstIndex()-1 <= i <= LastIndex.
	// Below it returns ErrCompacted, above ErrUnavailable.
	Term(i uint64) (uint64, error)
	// Entries returns entries [lo, hi) totalling at most maxBytes (but at
	// least one entry if lo < hi). The returned slice must not be modified by
	// either side.
	Entries(lo, hi, maxBytes uint64) ([]Entry, error)
	// SnapshotChunk returns up to maxBytes of the snapshot data at index,
	// starting at offset, and whether the chunk reaches the end of the data.
	// It returns ErrSnapshotChanged when index is not the newest snapshot.
	SnapshotChunk(index, offset uint64, maxBytes int) (data []byte, last bool, err error)
}

// BootstrapEntry returns the first entry of a new cluster's log (index 1,
// term 1) setting its membership. Every initial member appends the same entry
// and persists HardState{Term: 1} before creating its Raft.
func BootstrapEntry(m Membership) Entry {
	return Entry{Index: 1, Term: 1, Type: EntryConfig, Data: EncodeMembership(m)}
}

// membershipVersion is the first byte of an encoded Membership.
const membershipVersion = 1

// EncodeMembership encodes m as:
//
//	version u8 | count uvarint | count × (id uvarint | role u8 | len uvarint | address)
func EncodeMembership(m Membership) []byte {
	b := []byte{membershipVersion}
	b = binary.AppendUvarint(b, uint64(len(m.Servers)))
	for _, s := range m.Servers {
		b = binary.AppendUvarint(b, uint64(s.ID))
		b = append(b, byte(s.Role))
		b = binary.AppendUvarint(b, uint64(len(s.Address)))
		b = append(b, s.Address...)
	}
	return b
}

// membershipServersMax bounds decoding of a membership from untrusted bytes.
const membershipServersMax = 1 << 16

// DecodeMembership decodes what EncodeMembership produced.
func DecodeMembership(b []byte) (Membership, error) {
	var m Membership
	if len(b) == 0 || b[0] != membershipVersion {
		return m, errors.New("raft: membership: unknown version")
	}
	b = b[1:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > membershipServersMax {
		return m, errors.New("raft: membership: bad server count")
	}
	b = b[k:]
	for i := uint64(0); i < n; i++ {
		id, k := binary.Uvarint(b)
		if k <= 0 || len(b) < k+1 {
			return m, errors.New("raft: membership: truncated server")
		}
		role := Role(b[k])
		b = b[k+1:]
		l, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < l {
			return m, errors.New("raft: membership: truncated address")
		}
		addr := string(b[k : k+int(l)])
		b = b[k+int(l):]
		m.Servers = append(m.Servers, Server{ID: NodeID(id), Role: role, Address: addr})
	}
	if len(b) != 0 {
		return m, errors.New("raft: membership: trailing bytes")
	}
	if err := m.Validate(); err != nil {
		return m, err
	}
	return m, nil
}

// MemoryStorage is an in-memory Storage. The caller writes to it with
// SetHardState, Append, ApplySnapshot and Compact. It is not safe for
// concurrent use.
type MemoryStorage struct {
	hard     HardState
	snap     SnapshotMeta
	snapData []byte
	// ents[0] is a dummy entry at snap.Index with snap.Term.
	ents []Entry
}

// NewMemoryStorage returns an empty storage.
func NewMemoryStorage() *MemoryStorage {
	return &MemoryStorage{ents: []Entry{{}}}
}

func (s *MemoryStorage) InitialState() (HardState, error) { return s.hard, nil }
func (s *MemoryStorage) Snapshot() SnapshotMeta           { return s.snap }
func (s *MemoryStorage) FirstIndex() uint64               { return s.snap.Index + 1 }
func (s *MemoryStorage) LastIndex() uint64                { return s.snap.Index + uint64(len(s.ents)) - 1 }

// SnapshotData returns the data of the current snapshot.
func (s *MemoryStorage) SnapshotData() []byte { return s.snapData }

// HardState returns the stored HardState.
func (s *MemoryStorage) HardState() HardState { return s.hard }

func (s *MemoryStorage) Term(i uint64) (uint64, error) {
	if i < s.snap.Index {
		return 0, ErrCompacted
	}
	if i > s.LastIndex() {
		return 0, ErrUnavailable
	}
	return s.ents[i-s.snap.Index].Term, nil
}

func (s *MemoryStorage) Entries(lo, hi, maxBytes uint64) ([]Entry, error) {
	if lo <= s.snap.Index {
		return nil, ErrCompacted
	}
	if hi > s.LastIndex()+1 || lo > hi {
		return nil, fmt.Errorf("%w: entries [%d,%d) beyond last %d", ErrUnavailable, lo, hi, s.LastIndex())
	}
	ents := s.ents[lo-s.snap.Index : hi-s.snap.Index]
	return limitSize(ents, maxBytes), nil
}

func (s *MemoryStorage) SnapshotChunk(index, offset uint64, maxBytes int) ([]byte, bool, error) {
	if index != s.snap.Index || index == 0 {
		return nil, false, ErrSnapshotChanged
	}
	if offset > uint64(len(s.snapData)) {
		return nil, false, fmt.Errorf("raft: snapshot chunk offset %d beyond size %d", offset, len(s.snapData))
	}
	end := offset + uint64(maxBytes)
	if end >= uint64(len(s.snapData)) {
		return s.snapData[offset:], true, nil
	}
	return s.snapData[offset:end], false, nil
}

// SetHardState records the term and vote.
func (s *MemoryStorage) SetHardState(h HardState) { s.hard = h }

// Append adds entries, replacing any suffix that starts at or after
// ents[0].Index. Entries below the first index are ignored.
func (s *MemoryStorage) Append(ents []Entry) error {
	if len(ents) == 0 {
		return nil
	}
	first := s.FirstIndex()
	if last := ents[len(ents)-1].Index; last < first {
		return nil
	}
	if ents[0].Index < first {
		ents = ents[first-ents[0].Index:]
	}
	if ents[0].Index > s.LastIndex()+1 {
		return fmt.Errorf("raft: append at %d leaves a gap after %d", ents[0].Index, s.LastIndex())
	}
	keep := ents[0].Index - s.snap.Index
	if keep < uint64(len(s.ents)) {
		// Truncating: copy so slices handed out earlier stay intact.
		s.ents = append(s.ents[:keep:keep], ents...)
	} else {
		s.ents = append(s.ents, ents...)
	}
	return nil
}

// ApplySnapshot replaces the whole log with the snapshot.
func (s *MemoryStorage) ApplySnapshot(snap Snapshot) error {
	if snap.Meta.Index < s.snap.Index {
		return fmt.Errorf("raft: snapshot %d older than current %d", snap.Meta.Index, s.snap.Index)
	}
	s.snap = snap.Meta
	s.snap.Config = snap.Meta.Config.Clone()
	s.snapData = snap.Data
	s.ents = []Entry{{Index: snap.Meta.Index, Term: snap.Meta.Term}}
	return nil
}

// CreateSnapshot records a snapshot taken by the state machine at meta.Index
// (which must be in the log) and compacts the log up to it.
func (s *MemoryStorage) CreateSnapshot(meta SnapshotMeta, data []byte) error {
	if meta.Index <= s.snap.Index {
		return fmt.Errorf("raft: snapshot at %d not newer than %d", meta.Index, s.snap.Index)
	}
	if meta.Index > s.LastIndex() {
		return fmt.Errorf("raft: snapshot at %d beyond last index %d", meta.Index, s.LastIndex())
	}
	if term, _ := s.Term(meta.Index); term != meta.Term {
		return fmt.Errorf("raft: snapshot at %d has term %d, log has %d", meta.Index, meta.Term, term)
	}
	rest := s.ents[meta.Index-s.snap.Index+1:]
	ents := make([]Entry, 0, len(rest)+1)
	ents = append(ents, Entry{Index: meta.Index, Term: meta.Term})
	s.ents = append(ents, rest...)
	s.snap = meta
	s.snap.Config = meta.Config.Clone()
	s.snapData = data
	return nil
}

// limitSize returns the longest prefix of ents whose total size is at most
// maxBytes, but at least one entry.
func limitSize(ents []Entry, maxBytes uint64) []Entry {
	if len(ents) == 0 {
		return ents
	}
	size := ents[0].size()
	for i := 1; i < len(ents); i++ {
		size += ents[i].size()
		if size > maxBytes {
			return ents[:i]
		}
	}
	return ents
}
