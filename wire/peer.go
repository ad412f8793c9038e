package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/raft"
)

// Peer links: after the handshake, a node sends CONNECT (its id and the
// address it listens on) and the socket then carries Raft messages, each
// in one frame:
//
//	+------------+------------+-------------+------------------+
//	| len uint32 | crc uint32 | version u8  | message (len-1)  |
//	+------------+------------+-------------+------------------+
//
// len counts the version byte and the message; crc is CRC-32C of both.
// A frame over MaxPeerFrameBytes, a bad checksum or an unknown version ends
// the link (the sender redials; Raft retransmits).

// PeerVersion is the version of the peer message encoding.
const PeerVersion = 1

// MaxPeerFrameBytes bounds one peer frame: what one Raft message carries
// (raft.MaxMessageBytes: its entries, each encoded in no more than
// raft.EntryOverheadBytes beyond its data, or a snapshot chunk) plus the
// fixed fields and a snapshot's membership.
const MaxPeerFrameBytes = raft.MaxMessageBytes + peerFrameOverheadBytes

// Per-message bounds checked before allocating.
const (
	maxPeerEntries = 1 << 20
	// maxPeerConfigBytes bounds a snapshot's encoded membership in a frame.
	maxPeerConfigBytes = 1 << 20
	// peerFrameOverheadBytes covers the fields around entries and data.
	peerFrameOverheadBytes = 256 + maxPeerConfigBytes
	// peerEntryHeaderBytes is an entry's encoding beyond its data.
	peerEntryHeaderBytes = 21
)

// An entry's encoding must fit in what raft counts for it (MaxMsgBytes).
const _ = uint(raft.EntryOverheadBytes - peerEntryHeaderBytes)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrPeerFrame marks a corrupt or oversized peer frame.
var ErrPeerFrame = errors.New("wire: bad peer frame")

const (
	flagReject = 1 << iota
	flagTransfer
	flagDone
	flagSnapshot
)

// AppendPeerMessage appends m as one frame.
func AppendPeerMessage(b []byte, m *raft.Message) []byte {
	start := len(b)
	b = append(b, make([]byte, 8)...)
	b = append(b, PeerVersion, byte(m.Type))
	var flags byte
	if m.Reject {
		flags |= flagReject
	}
	if m.Transfer {
		flags |= flagTransfer
	}
	if m.Done {
		flags |= flagDone
	}
	if m.Snapshot != nil {
		flags |= flagSnapshot
	}
	b = append(b, flags)
	for _, v := range []uint64{uint64(m.From), uint64(m.To), m.Term, m.LogTerm, m.Index, m.Commit, m.RejectHint, m.Context, m.Offset} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Entries)))
	for _, e := range m.Entries {
		b = binary.LittleEndian.AppendUint64(b, e.Index)
		b = binary.LittleEndian.AppendUint64(b, e.Term)
		b = append(b, byte(e.Type))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Data)))
		b = append(b, e.Data...)
	}
	if m.Snapshot != nil {
		b = binary.LittleEndian.AppendUint64(b, m.Snapshot.Index)
		b = binary.LittleEndian.AppendUint64(b, m.Snapshot.Term)
		b = binary.LittleEndian.AppendUint64(b, m.Snapshot.ConfigIndex)
		cfg := raft.EncodeMembership(m.Snapshot.Config)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(cfg)))
		b = append(b, cfg...)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Data)))
	b = append(b, m.Data...)
	payload := b[start+8:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(payload, castagnoli))
	return b
}

// ReadPeerMessage reads one frame.
func ReadPeerMessage(r *bufio.Reader) (raft.Message, error) {
	var h [8]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return raft.Message{}, err
	}
	n := binary.LittleEndian.Uint32(h[:])
	if n > MaxPeerFrameBytes || n < 2 {
		return raft.Message{}, fmt.Errorf("%w: length %d (limit %d)", ErrPeerFrame, n, MaxPeerFrameBytes)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return raft.Message{}, err
	}
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(h[4:]) {
		return raft.Message{}, fmt.Errorf("%w: checksum mismatch", ErrPeerFrame)
	}
	return DecodePeerMessage(payload)
}

// DecodePeerMessage decodes a frame's payload (version byte included).
func DecodePeerMessage(p []byte) (raft.Message, error) {
	d := &peerDecoder{b: p}
	var m raft.Message
	if v := d.u8(); v != PeerVersion {
		return m, fmt.Errorf("%w: unknown version %d", ErrPeerFrame, v)
	}
	m.Type = raft.MessageType(d.u8())
	flags := d.u8()
	if flags&^(flagReject|flagTransfer|flagDone|flagSnapshot) != 0 {
		return m, fmt.Errorf("%w: unknown flags %#x", ErrPeerFrame, flags)
	}
	m.Reject, m.Transfer, m.Done = flags&flagReject != 0, flags&flagTransfer != 0, flags&flagDone != 0
	m.From, m.To = raft.NodeID(d.u64()), raft.NodeID(d.u64())
	m.Term, m.LogTerm, m.Index, m.Commit = d.u64(), d.u64(), d.u64(), d.u64()
	if mutant.On(mutant.WirePeerDropsCommit) {
		m.Commit = 0 // the deliberate bug: the field is read but not kept
	}
	m.RejectHint, m.Context, m.Offset = d.u64(), d.u64(), d.u64()
	n := d.u32()
	if n > maxPeerEntries || int(n)*peerEntryHeaderBytes > len(d.b)-d.off {
		return m, fmt.Errorf("%w: %d entries in %d bytes", ErrPeerFrame, n, len(d.b)-d.off)
	}
	if n > 0 {
		m.Entries = make([]raft.Entry, n)
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		e.Index, e.Term, e.Type = d.u64(), d.u64(), raft.EntryType(d.u8())
		e.Data = d.bytes(d.u32())
	}
	if flags&flagSnapshot != 0 {
		s := &raft.SnapshotMeta{Index: d.u64(), Term: d.u64(), ConfigIndex: d.u64()}
		n := d.u32()
		if n > maxPeerConfigBytes {
			return m, fmt.Errorf("%w: snapshot membership of %d bytes (limit %d)", ErrPeerFrame, n, maxPeerConfigBytes)
		}
		cfg := d.bytes(n)
		if d.err == nil {
			c, err := raft.DecodeMembership(cfg)
			if err != nil {
				return m, fmt.Errorf("%w: snapshot membership: %v", ErrPeerFrame, err)
			}
			s.Config = c
		}
		m.Snapshot = s
	}
	m.Data = d.bytes(d.u32())
	if d.err == nil && d.off != len(d.b) {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrPeerFrame, len(d.b)-d.off)
	}
	return m, d.err
}

type peerDecoder struct {
	b   []byte
	off int
	err error
}

func (d *peerDecoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b)-d.off {
		d.err = fmt.Errorf("%w: truncated at offset %d", ErrPeerFrame, d.off)
		return nil
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	return p
}

func (d *peerDecoder) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *peerDecoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (d *peerDecoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

// bytes returns n bytes (nil for 0), sharing the frame's buffer.
func (d *peerDecoder) bytes(n uint32) []byte {
	p := d.take(int(n))
	if len(p) == 0 {
		return nil
	}
	return p[:n:n]
}
