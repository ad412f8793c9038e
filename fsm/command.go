package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"

	"github.com/dqlite-go/dqlite/raft"
)

// Command formats. Every command is:
//
//	+---------+------+----------+-----------------+------------+
//	| version | kind | reserved | body            | crc32c     |
//	| u8 = 1  | u8   | u16 = 0  | kind-specific   | u32 LE     |
//	+---------+------+----------+-----------------+------------+
//
// The CRC-32C (Castagnoli) covers every byte before it. Integers in the body
// are little-endian fixed width or unsigned varints (uv); strings and byte
// strings are uv length + bytes.
//
// Frames (kind 1), one write transaction's WAL frames:
//
//	client u64 | seq u64 | database string | page size u32 | db size u32 |
//	count uv | count × page number u32 | count × page (page size bytes each)
//
// Page size is 32 bits: it carries 65536 (the C format's 16 bits cannot).
// Client and seq identify the request for deduplication (0 = none). db size
// is the database size in pages after the commit.
//
// Statements (kind 2, the rqlite-style comparison mode):
//
//	client u64 | seq u64 | database string | count uv | count × statement
//	statement = sql string | nparams uv | nparams × (type u8 | value)
//	value: int64 and float64 as 8 bytes, text and blob as strings, null empty
const (
	commandVersion = 1
	headerBytes    = 4
	trailerBytes   = 4
)

// Kind says what a command carries.
type Kind uint8

const (
	KindFrames     Kind = 1
	KindStatements Kind = 2
)

// Named limits on commands, enforced by both encoder and decoder.
const (
	// MaxCommandBytes bounds one encoded command: one Raft entry's data.
	MaxCommandBytes = raft.MaxEntryBytes
	// MaxNameBytes bounds a database name.
	MaxNameBytes = 1024
	// MinPageSize and MaxPageSize are SQLite's page size bounds.
	MinPageSize = 512
	MaxPageSize = 65536
	// MaxStatements bounds the statements of one statements command.
	MaxStatements = 1 << 16
	// MaxParams bounds the parameters of one statement (SQLite's default
	// SQLITE_MAX_VARIABLE_NUMBER).
	MaxParams = 32766
)

// ErrCorrupt marks a command that cannot be decoded: a bad checksum, an
// unknown version or kind, or fields that do not fit. Test with errors.Is.
var ErrCorrupt = errors.New("fsm: corrupt command")

// ErrTooLarge is returned when a command would exceed MaxCommandBytes.
var ErrTooLarge = errors.New("fsm: command too large")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Frames is one write transaction's pages.
type Frames struct {
	Client   uint64
	Seq      uint64
	Database string
	PageSize uint32
	// DBSize is the database size in pages after the transaction.
	DBSize uint32
	// PageNumbers[i] is the page number of Pages[i].
	PageNumbers []uint32
	// Pages hold PageSize bytes each. Decode returns sub-slices of the
	// input: the caller must not modify the input while using them.
	Pages [][]byte
	// raw, when Decode made Pages, is the input's bytes they lie in one
	// after another (handed to the VFS as one block).
	raw []byte
}

// ValueType is the type of a statement parameter.
type ValueType uint8

const (
	TypeInteger ValueType = 1
	TypeFloat   ValueType = 2
	TypeText    ValueType = 3
	TypeBlob    ValueType = 4
	TypeNull    ValueType = 5
)

// Value is one statement parameter.
type Value struct {
	Type  ValueType
	Int   int64
	Float float64
	Text  string
	Blob  []byte
}

// Statement is one SQL statement with its parameters.
type Statement struct {
	SQL    string
	Params []Value
}

// Statements is a list of statements executed in order at apply time.
type Statements struct {
	Client     uint64
	Seq        uint64
	Database   string
	Statements []Statement
}

// EncodeFrames encodes f.
func EncodeFrames(f *Frames) ([]byte, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	size := headerBytes + 16 + binary.MaxVarintLen64 + len(f.Database) + 8 + binary.MaxVarintLen64 +
		len(f.PageNumbers)*(4+int(f.PageSize)) + trailerBytes
	if size > MaxCommandBytes {
		return nil, fmt.Errorf("%w: %d frames of %d bytes", ErrTooLarge, len(f.Pages), f.PageSize)
	}
	b := make([]byte, 0, size)
	b = append(b, commandVersion, byte(KindFrames), 0, 0)
	b = binary.LittleEndian.AppendUint64(b, f.Client)
	b = binary.LittleEndian.AppendUint64(b, f.Seq)
	b = appendString(b, f.Database)
	b = binary.LittleEndian.AppendUint32(b, f.PageSize)
	b = binary.LittleEndian.AppendUint32(b, f.DBSize)
	b = binary.AppendUvarint(b, uint64(len(f.PageNumbers)))
	for _, pg := range f.PageNumbers {
		b = binary.LittleEndian.AppendUint32(b, pg)
	}
	for _, p := range f.Pages {
		b = append(b, p...)
	}
	return appendChecksum(b), nil
}

func (f *Frames) validate() error {
	switch {
	case len(f.Database) > MaxNameBytes:
		return fmt.Errorf("fsm: database name of %d bytes exceeds %d", len(f.Database), MaxNameBytes)
	case !validPageSize(f.PageSize):
		return fmt.Errorf("fsm: invalid page size %d", f.PageSize)
	case len(f.PageNumbers) != len(f.Pages):
		return fmt.Errorf("fsm: %d page numbers for %d pages", len(f.PageNumbers), len(f.Pages))
	}
	for i, p := range f.Pages {
		if len(p) != int(f.PageSize) {
			return fmt.Errorf("fsm: page %d has %d bytes, page size is %d", f.PageNumbers[i], len(p), f.PageSize)
		}
		if f.PageNumbers[i] == 0 {
			return fmt.Errorf("fsm: page number 0")
		}
	}
	return nil
}

func validPageSize(n uint32) bool {
	return n >= MinPageSize && n <= MaxPageSize && n&(n-1) == 0
}

// EncodeStatements encodes s.
func EncodeStatements(s *Statements) ([]byte, error) {
	if len(s.Database) > MaxNameBytes || len(s.Statements) > MaxStatements {
		return nil, fmt.Errorf("fsm: statements command exceeds limits (name %d bytes, %d statements)",
			len(s.Database), len(s.Statements))
	}
	b := []byte{commandVersion, byte(KindStatements), 0, 0}
	b = binary.LittleEndian.AppendUint64(b, s.Client)
	b = binary.LittleEndian.AppendUint64(b, s.Seq)
	b = appendString(b, s.Database)
	b = binary.AppendUvarint(b, uint64(len(s.Statements)))
	for _, st := range s.Statements {
		if len(st.Params) > MaxParams {
			return nil, fmt.Errorf("fsm: statement with %d parameters exceeds %d", len(st.Params), MaxParams)
		}
		b = appendString(b, st.SQL)
		b = binary.AppendUvarint(b, uint64(len(st.Params)))
		for _, v := range st.Params {
			var err error
			if b, err = appendValue(b, v); err != nil {
				return nil, err
			}
		}
		if len(b)+trailerBytes > MaxCommandBytes {
			return nil, fmt.Errorf("%w: statements exceed %d bytes", ErrTooLarge, MaxCommandBytes)
		}
	}
	return appendChecksum(b), nil
}

func appendValue(b []byte, v Value) ([]byte, error) {
	b = append(b, byte(v.Type))
	switch v.Type {
	case TypeInteger:
		return binary.LittleEndian.AppendUint64(b, uint64(v.Int)), nil
	case TypeFloat:
		return binary.LittleEndian.AppendUint64(b, math.Float64bits(v.Float)), nil
	case TypeText:
		return appendString(b, v.Text), nil
	case TypeBlob:
		return appendString(b, string(v.Blob)), nil
	case TypeNull:
		return b, nil
	}
	return nil, fmt.Errorf("fsm: unknown parameter type %d", v.Type)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendChecksum(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// KindOf checks a command's version and checksum and returns its kind.
func KindOf(b []byte) (Kind, error) {
	if len(b) < headerBytes+trailerBytes {
		return 0, fmt.Errorf("%w: %d bytes is shorter than a header", ErrCorrupt, len(b))
	}
	body := b[:len(b)-trailerBytes]
	if want, got := binary.LittleEndian.Uint32(b[len(b)-trailerBytes:]), crc32.Checksum(body, castagnoli); want != got {
		return 0, fmt.Errorf("%w: checksum %08x, computed %08x", ErrCorrupt, want, got)
	}
	if b[0] != commandVersion {
		return 0, fmt.Errorf("%w: unknown version %d", ErrCorrupt, b[0])
	}
	k := Kind(b[1])
	if k != KindFrames && k != KindStatements {
		return 0, fmt.Errorf("%w: unknown kind %d", ErrCorrupt, b[1])
	}
	return k, nil
}

// DecodeFrames decodes a frames command. Pages alias b.
func DecodeFrames(b []byte) (*Frames, error) {
	k, err := KindOf(b)
	if err != nil {
		return nil, err
	}
	if k != KindFrames {
		return nil, fmt.Errorf("%w: kind %d is not frames", ErrCorrupt, k)
	}
	d := decoder{b: b[headerBytes : len(b)-trailerBytes]}
	f := &Frames{Client: d.u64(), Seq: d.u64(), Database: d.str(MaxNameBytes), PageSize: d.u32(), DBSize: d.u32()}
	n := d.uv()
	if d.err == nil && !validPageSize(f.PageSize) {
		d.fail("page size %d", f.PageSize)
	}
	if d.err == nil && n*(4+uint64(f.PageSize)) != uint64(len(d.b)) {
		d.fail("%d frames of %d bytes do not fill %d bytes", n, f.PageSize, len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	f.PageNumbers = make([]uint32, n)
	f.Pages = make([][]byte, n)
	for i := range f.PageNumbers {
		f.PageNumbers[i] = d.u32()
		if f.PageNumbers[i] == 0 {
			d.fail("page number 0")
		}
	}
	f.raw = d.b
	for i := range f.Pages {
		f.Pages[i] = d.bytes(int(f.PageSize))
	}
	return f, d.err
}

// DecodeStatements decodes a statements command.
func DecodeStatements(b []byte) (*Statements, error) {
	k, err := KindOf(b)
	if err != nil {
		return nil, err
	}
	if k != KindStatements {
		return nil, fmt.Errorf("%w: kind %d is not statements", ErrCorrupt, k)
	}
	d := decoder{b: b[headerBytes : len(b)-trailerBytes]}
	s := &Statements{Client: d.u64(), Seq: d.u64(), Database: d.str(MaxNameBytes)}
	n := d.uv()
	if n > MaxStatements || n > uint64(len(d.b)) {
		d.fail("%d statements", n)
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		st := Statement{SQL: d.str(MaxCommandBytes)}
		np := d.uv()
		if np > MaxParams || np > uint64(len(d.b)) {
			d.fail("%d parameters", np)
		}
		for j := uint64(0); j < np && d.err == nil; j++ {
			st.Params = append(st.Params, d.value())
		}
		s.Statements = append(s.Statements, st)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return s, nil
}

// decoder reads fields, recording the first error; reads after an error
// return zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
	}
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail("field of %d bytes, %d left", n, len(d.b))
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) u64() uint64 {
	if b := d.bytes(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.bytes(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) uv() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) str(max uint64) string {
	n := d.uv()
	if n > max || n > uint64(len(d.b)) {
		d.fail("string of %d bytes", n)
		return ""
	}
	return string(d.bytes(int(n)))
}

func (d *decoder) value() Value {
	t := d.bytes(1)
	if t == nil {
		return Value{}
	}
	v := Value{Type: ValueType(t[0])}
	switch v.Type {
	case TypeInteger:
		v.Int = int64(d.u64())
	case TypeFloat:
		v.Float = math.Float64frombits(d.u64())
	case TypeText:
		v.Text = d.str(MaxCommandBytes)
	case TypeBlob:
		v.Blob = []byte(d.str(MaxCommandBytes))
	case TypeNull:
	default:
		d.fail("unknown parameter type %d", t[0])
	}
	return v
}
