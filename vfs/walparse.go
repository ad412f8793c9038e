package vfs

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrBadWAL: bytes that ParseWAL cannot read as a WAL.
var ErrBadWAL = errors.New("vfs: not a WAL")

// ParseWAL reads a WAL (as WAL returns it) into the frames that bring a
// database file to its last commit: the last committed version of each
// page it holds, in page order, and the database size after that commit.
// Frames are read up to the first whose salts or checksum chain fail (the
// end of the WAL, or frames of an older generation), and taken up to the
// last commit frame before it, as SQLite's own recovery does. It returns
// nil when the WAL holds no commit.
func ParseWAL(b []byte) (*Frames, error) {
	const walHdr, frameHdr = 32, 24
	if len(b) < walHdr {
		if len(b) == 0 {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: %d bytes", ErrBadWAL, len(b))
	}
	magic := binary.BigEndian.Uint32(b)
	if magic&^1 != 0x377f0682 {
		return nil, fmt.Errorf("%w: magic %#x", ErrBadWAL, magic)
	}
	big := magic&1 == 1
	ps := int(binary.BigEndian.Uint32(b[8:]))
	if ps == 1 {
		ps = 65536
	}
	if ps < 512 || ps > 65536 || ps&(ps-1) != 0 {
		return nil, fmt.Errorf("%w: page size %d", ErrBadWAL, ps)
	}
	s0, s1 := walChecksum(big, b[:24], 0, 0)
	if s0 != binary.BigEndian.Uint32(b[24:]) || s1 != binary.BigEndian.Uint32(b[28:]) {
		return nil, fmt.Errorf("%w: header checksum", ErrBadWAL)
	}
	latest := map[uint32][]byte{}
	committed := map[uint32][]byte{}
	var dbSize uint32
	for off := walHdr; off+frameHdr+ps <= len(b); off += frameHdr + ps {
		fh := b[off : off+frameHdr]
		if string(fh[8:16]) != string(b[16:24]) {
			break
		}
		s0, s1 = walChecksum(big, fh[:8], s0, s1)
		page := b[off+frameHdr : off+frameHdr+ps]
		s0, s1 = walChecksum(big, page, s0, s1)
		if s0 != binary.BigEndian.Uint32(fh[16:]) || s1 != binary.BigEndian.Uint32(fh[20:]) {
			break
		}
		pgno := binary.BigEndian.Uint32(fh)
		if pgno == 0 {
			break
		}
		latest[pgno] = page
		if n := binary.BigEndian.Uint32(fh[4:]); n != 0 {
			dbSize = n
			for k, v := range latest {
				committed[k] = v
			}
			clear(latest)
		}
	}
	if dbSize == 0 {
		return nil, nil
	}
	f := &Frames{PageSize: ps, DBSize: dbSize}
	for pgno := uint32(1); pgno <= dbSize; pgno++ {
		if p, ok := committed[pgno]; ok {
			f.PageNumbers = append(f.PageNumbers, pgno)
			f.Pages = append(f.Pages, p)
		}
	}
	if len(f.Pages) == 0 {
		// A commit that only shrank the database: one page carries the
		// new size (page 1 is always there once a database has pages).
		return nil, fmt.Errorf("%w: a commit to %d pages with none of them", ErrBadWAL, dbSize)
	}
	return f, nil
}

// walChecksum is SQLite's WAL checksum of b (a multiple of 8 bytes),
// continuing from s0, s1.
func walChecksum(big bool, b []byte, s0, s1 uint32) (uint32, uint32) {
	var order binary.ByteOrder = binary.LittleEndian
	if big {
		order = binary.BigEndian
	}
	for i := 0; i+8 <= len(b); i += 8 {
		s0 += order.Uint32(b[i:]) + s1
		s1 += order.Uint32(b[i+4:]) + s0
	}
	return s0, s1
}
