package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/dqlite-go/dqlite/raft"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(b ...[]byte) uint32 {
	var c uint32
	for _, p := range b {
		c = crc32.Update(c, castagnoli, p)
	}
	return c
}

// formatVersion is written in every header.
const formatVersion = 1

// Segment header (segmentHeaderBytes, little-endian):
//
//	magic "DQLSEG01" | version u32 | reserved u32 | segment id u64 |
//	first index u64 | first term u64 | prev term u64 | crc32c u32 | pad u32
//
// prev term is the term of the entry just before first index, so the log can
// answer Term(FirstIndex-1) without the previous segment.
const (
	segmentMagic       = "DQLSEG01"
	segmentHeaderBytes = 56
)

type segmentHeader struct {
	id, firstIndex, firstTerm, prevTerm uint64
}

func (h segmentHeader) encode() []byte {
	b := make([]byte, 0, segmentHeaderBytes)
	b = append(b, segmentMagic...)
	b = binary.LittleEndian.AppendUint32(b, formatVersion)
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint64(b, h.id)
	b = binary.LittleEndian.AppendUint64(b, h.firstIndex)
	b = binary.LittleEndian.AppendUint64(b, h.firstTerm)
	b = binary.LittleEndian.AppendUint64(b, h.prevTerm)
	b = binary.LittleEndian.AppendUint32(b, crc(b))
	return binary.LittleEndian.AppendUint32(b, 0)
}

var errBadHeader = errors.New("bad segment header")

func decodeSegmentHeader(b []byte) (segmentHeader, error) {
	if len(b) < segmentHeaderBytes || string(b[:8]) != segmentMagic {
		return segmentHeader{}, fmt.Errorf("%w: magic", errBadHeader)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != formatVersion {
		return segmentHeader{}, fmt.Errorf("%w: unknown version %d", errBadHeader, v)
	}
	if binary.LittleEndian.Uint32(b[48:]) != crc(b[:48]) || binary.LittleEndian.Uint32(b[52:]) != 0 {
		return segmentHeader{}, fmt.Errorf("%w: checksum", errBadHeader)
	}
	return segmentHeader{id: binary.LittleEndian.Uint64(b[16:]), firstIndex: binary.LittleEndian.Uint64(b[24:]),
		firstTerm: binary.LittleEndian.Uint64(b[32:]), prevTerm: binary.LittleEndian.Uint64(b[40:])}, nil
}

// Batch (appended after the header, one per write):
//
//	payload length u32 | entry count u32 | crc32c u32 | header crc32c u32 | payload
//	payload = count × (index u64 | term u64 | type u32 | data length u32 | data)
//
// The crc covers length, count and payload; the header crc covers length and
// count alone, so a damaged length is never trusted. An all-zero batch
// header marks the end of written data (never-written space). Only the last
// batch of the last segment can be torn (one write + sync at a time).
const (
	batchHeaderBytes = 16
	entryHeaderBytes = 24
	// MaxBatchBytes bounds one batch's payload (and so one entry).
	MaxBatchBytes = 512 << 20
)

// maxBatchBytes is the payload bound Append enforces: MaxBatchBytes. A
// variable only so tests can lower it (see export_test.go); nothing else
// changes it.
var maxBatchBytes = MaxBatchBytes

func encodeBatch(ents []raft.Entry) []byte {
	size := batchHeaderBytes
	for _, e := range ents {
		size += entryHeaderBytes + len(e.Data)
	}
	b := make([]byte, batchHeaderBytes, size)
	for _, e := range ents {
		b = binary.LittleEndian.AppendUint64(b, e.Index)
		b = binary.LittleEndian.AppendUint64(b, e.Term)
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Type))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Data)))
		b = append(b, e.Data...)
	}
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b)-batchHeaderBytes))
	binary.LittleEndian.PutUint32(b[4:], uint32(len(ents)))
	binary.LittleEndian.PutUint32(b[8:], crc(b[0:8], b[batchHeaderBytes:]))
	binary.LittleEndian.PutUint32(b[12:], crc(b[0:8]))
	return b
}

// entryLoc is where an entry's data lives in a segment file.
type entryLoc struct {
	term   uint64
	typ    raft.EntryType
	off    int64 // offset of the data in the file
	length uint32
	// sum is the CRC-32C of the data, checked when the data is read back
	// from the file (a corrupt read is corruption, never an entry).
	sum uint32
}

// decodeBatchPayload parses a verified payload into entries' locations.
// base is the file offset of the payload.
func decodeBatchPayload(p []byte, count uint32, base int64, want uint64) ([]entryLoc, []uint64, error) {
	locs := make([]entryLoc, 0, count)
	idxs := make([]uint64, 0, count)
	off := 0
	for i := uint32(0); i < count; i++ {
		if len(p)-off < entryHeaderBytes {
			return nil, nil, errors.New("entry header beyond payload")
		}
		idx := binary.LittleEndian.Uint64(p[off:])
		term := binary.LittleEndian.Uint64(p[off+8:])
		typ := binary.LittleEndian.Uint32(p[off+16:])
		n := binary.LittleEndian.Uint32(p[off+20:])
		off += entryHeaderBytes
		if uint64(len(p)-off) < uint64(n) {
			return nil, nil, errors.New("entry data beyond payload")
		}
		if idx != want+uint64(i) {
			return nil, nil, fmt.Errorf("entry index %d, expected %d", idx, want+uint64(i))
		}
		if typ < uint32(raft.EntryNormal) || typ > uint32(raft.EntryConfig) || term == 0 {
			return nil, nil, fmt.Errorf("entry %d has type %d term %d", idx, typ, term)
		}
		locs = append(locs, entryLoc{term: term, typ: raft.EntryType(typ), off: base + int64(off), length: n,
			sum: crc(p[off : off+int(n)])})
		idxs = append(idxs, idx)
		off += int(n)
	}
	if off != len(p) {
		return nil, nil, fmt.Errorf("%d bytes after the last entry", len(p)-off)
	}
	return locs, idxs, nil
}

// Metadata record (term and vote), written alternately to two files so a
// torn write leaves the other intact; the valid one with the higher sequence
// wins:
//
//	magic "DQLMETA1" | seq u64 | term u64 | vote u64 | crc32c u32 | pad u32
const (
	metaMagic = "DQLMETA1"
	metaBytes = 40
)

type metaRecord struct {
	seq  uint64
	hard raft.HardState
}

func (m metaRecord) encode() []byte {
	b := make([]byte, 0, metaBytes)
	b = append(b, metaMagic...)
	b = binary.LittleEndian.AppendUint64(b, m.seq)
	b = binary.LittleEndian.AppendUint64(b, m.hard.Term)
	b = binary.LittleEndian.AppendUint64(b, uint64(m.hard.Vote))
	b = binary.LittleEndian.AppendUint32(b, crc(b))
	return binary.LittleEndian.AppendUint32(b, 0)
}

func decodeMeta(b []byte) (metaRecord, bool) {
	if len(b) < metaBytes || string(b[:8]) != metaMagic || binary.LittleEndian.Uint32(b[32:]) != crc(b[:32]) ||
		binary.LittleEndian.Uint32(b[36:]) != 0 {
		return metaRecord{}, false
	}
	return metaRecord{seq: binary.LittleEndian.Uint64(b[8:]), hard: raft.HardState{
		Term: binary.LittleEndian.Uint64(b[16:]), Vote: raft.NodeID(binary.LittleEndian.Uint64(b[24:]))}}, true
}

// Snapshot file: a header, the membership, the data, and a crc over all:
//
//	magic "DQLSNAP1" | index u64 | term u64 | config index u64 |
//	config length u64 | data length u64 | config | data | crc32c u32
const (
	snapMagic       = "DQLSNAP1"
	snapHeaderBytes = 48
	// MaxSnapshotConfigBytes bounds the encoded membership in a snapshot.
	MaxSnapshotConfigBytes = 1 << 20
)

func encodeSnapshotHeader(meta raft.SnapshotMeta, config []byte, dataLen int) []byte {
	b := make([]byte, 0, snapHeaderBytes+len(config))
	b = append(b, snapMagic...)
	b = binary.LittleEndian.AppendUint64(b, meta.Index)
	b = binary.LittleEndian.AppendUint64(b, meta.Term)
	b = binary.LittleEndian.AppendUint64(b, meta.ConfigIndex)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(config)))
	b = binary.LittleEndian.AppendUint64(b, uint64(dataLen))
	return append(b, config...)
}
