// Package wire is the dqlite client protocol, version 1, byte for byte
// (see docs: WIRE.md in the shared design docs): message framing, primitive
// encodings, parameter and row tuples. Decoders never panic and never
// allocate beyond a named bound on malformed input.
//
// Framing (both directions), little-endian:
//
//	+--------------+---------+-----------+-------------+----------------+
//	| words uint32 | type u8 | schema u8 | unused u16  | body: words*8  |
//	+--------------+---------+-----------+-------------+----------------+
//
// text = UTF-8, NUL, zero padding to 8; blob = u64 length, bytes, padding.
// Padding bytes are never checked (the Go client does not zero them).
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Protocol versions sent by clients as the first 8 bytes.
const (
	ProtocolVersion = 1
	ProtocolLegacy  = 0x86104dd760433fe5
)

// Named limits.
const (
	// MaxMessageBytes bounds a message body; a header asking for more is
	// refused before anything is allocated.
	MaxMessageBytes = 64 << 20
	// MaxParams bounds the parameters of one statement.
	MaxParams = 32766
	// HeaderBytes is the size of a message header.
	HeaderBytes = 8
)

// ErrMalformed marks a message that does not decode; the server answers
// FAILURE with the wrapped message, or closes when framing is lost.
var ErrMalformed = errors.New("wire: malformed message")

// ErrTooLarge is returned for a header announcing more than the limit.
var ErrTooLarge = errors.New("wire: message too large")

// Header is a message header.
type Header struct {
	Words  uint32
	Type   uint8
	Schema uint8
}

// ReadProtocol reads the client's 8-byte protocol version.
func ReadProtocol(r io.Reader) (uint64, error) {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// ReadMessage reads one message, refusing bodies over maxBytes before
// allocating them.
func ReadMessage(r io.Reader, maxBytes int) (Header, []byte, error) {
	var hb [HeaderBytes]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return Header{}, nil, err
	}
	h := Header{Words: binary.LittleEndian.Uint32(hb[0:]), Type: hb[4], Schema: hb[5]}
	size := uint64(h.Words) * 8
	if size > uint64(maxBytes) {
		return h, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, size, maxBytes)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		return h, nil, err
	}
	return h, body, nil
}

// AppendMessage appends a message with the given body (a multiple of 8
// bytes) to b.
func AppendMessage(b []byte, typ, schema uint8, body []byte) []byte {
	if len(body)%8 != 0 {
		body = append(body, make([]byte, 8-len(body)%8)...)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(body)/8))
	b = append(b, typ, schema, 0, 0)
	return append(b, body...)
}

// Encoder builds a message body.
type Encoder struct{ B []byte }

func (e *Encoder) U8(v uint8)   { e.B = append(e.B, v) }
func (e *Encoder) U32(v uint32) { e.B = binary.LittleEndian.AppendUint32(e.B, v) }
func (e *Encoder) U64(v uint64) { e.B = binary.LittleEndian.AppendUint64(e.B, v) }
func (e *Encoder) I64(v int64)  { e.U64(uint64(v)) }
func (e *Encoder) Double(v float64) {
	e.U64(math.Float64bits(v))
}

// Pad zero-pads to a multiple of 8 bytes.
func (e *Encoder) Pad() {
	for len(e.B)%8 != 0 {
		e.B = append(e.B, 0)
	}
}

// Text appends s, a NUL, and padding.
func (e *Encoder) Text(s string) {
	e.B = append(e.B, s...)
	e.B = append(e.B, 0)
	e.Pad()
}

// Blob appends a length, the bytes and padding.
func (e *Encoder) Blob(b []byte) {
	e.U64(uint64(len(b)))
	e.B = append(e.B, b...)
	e.Pad()
}

// Decoder reads a message body. The first error sticks; reads after it
// return zero values.
type Decoder struct {
	b   []byte
	off int
	err error
}

// NewDecoder reads body.
func NewDecoder(body []byte) *Decoder { return &Decoder{b: body} }

// Err is the first decoding error.
func (d *Decoder) Err() error { return d.err }

// Rest is the number of unread bytes.
func (d *Decoder) Rest() int { return len(d.b) - d.off }

func (d *Decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
}

func (d *Decoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b)-d.off {
		d.fail("%s: need %d bytes at offset %d, body has %d", what, n, d.off, len(d.b))
		return nil
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	return p
}

func (d *Decoder) U8(what string) uint8 {
	if p := d.take(1, what); p != nil {
		return p[0]
	}
	return 0
}

func (d *Decoder) U32(what string) uint32 {
	if p := d.take(4, what); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (d *Decoder) U64(what string) uint64 {
	if p := d.take(8, what); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (d *Decoder) I64(what string) int64      { return int64(d.U64(what)) }
func (d *Decoder) Double(what string) float64 { return math.Float64frombits(d.U64(what)) }

// Skip skips padding to the next multiple of 8 (contents unchecked).
func (d *Decoder) Skip() {
	if d.err == nil && d.off%8 != 0 {
		d.take(8-d.off%8, "padding")
	}
}

// Text reads a NUL-terminated string and its padding.
func (d *Decoder) Text(what string) string {
	if d.err != nil {
		return ""
	}
	for i := d.off; i < len(d.b); i++ {
		if d.b[i] == 0 {
			s := string(d.b[d.off:i])
			d.off = i + 1
			d.Skip()
			return s
		}
	}
	d.fail("%s: missing NUL terminator", what)
	return ""
}

// Blob reads a length-prefixed byte string and its padding.
func (d *Decoder) Blob(what string) []byte {
	n := d.U64(what + " length")
	if d.err == nil && n > uint64(d.Rest()) {
		d.fail("%s: length %d beyond the body", what, n)
		return nil
	}
	p := d.take(int(n), what)
	d.Skip()
	if d.err != nil {
		return nil
	}
	out := make([]byte, len(p)) // an empty blob is empty, not nil
	copy(out, p)
	return out
}
