package wire

import "fmt"

// Value type codes.
const (
	Integer  = 1
	Float    = 2
	Text     = 3
	Blob     = 4
	Null     = 5
	UnixTime = 9
	ISO8601  = 10
	Boolean  = 11
)

// Value is one parameter or column value: int64 (Integer, UnixTime,
// Boolean as 0/1), float64, string (Text, ISO8601), []byte or nil.
type Value struct {
	Type uint8
	V    any
}

// EncodeParams appends a parameter tuple: schema 0 has a one-byte count,
// schema 1 a four-byte count; then one type byte per value, padding (the
// count included), and the values.
func EncodeParams(e *Encoder, schema uint8, vals []Value) error {
	if schema == 0 && len(vals) > 255 || len(vals) > MaxParams {
		return fmt.Errorf("wire: %d parameters do not fit schema %d", len(vals), schema)
	}
	if schema == 0 {
		e.U8(uint8(len(vals)))
	} else {
		e.U32(uint32(len(vals)))
	}
	for _, v := range vals {
		e.U8(v.Type)
	}
	e.Pad()
	for _, v := range vals {
		if err := encodeValue(e, v); err != nil {
			return err
		}
	}
	return nil
}

func encodeValue(e *Encoder, v Value) error {
	switch v.Type {
	case Integer, UnixTime, Boolean:
		x, ok := v.V.(int64)
		if !ok {
			return fmt.Errorf("wire: value type %d holds %T", v.Type, v.V)
		}
		e.I64(x)
	case Float:
		x, ok := v.V.(float64)
		if !ok {
			return fmt.Errorf("wire: float holds %T", v.V)
		}
		e.Double(x)
	case Text, ISO8601:
		x, ok := v.V.(string)
		if !ok {
			return fmt.Errorf("wire: text holds %T", v.V)
		}
		e.Text(x)
	case Blob:
		x, ok := v.V.([]byte)
		if !ok {
			return fmt.Errorf("wire: blob holds %T", v.V)
		}
		e.Blob(x)
	case Null:
		e.U64(0)
	default:
		return fmt.Errorf("wire: unknown value type %d", v.Type)
	}
	return nil
}

// DecodeParams reads a parameter tuple. A body that ends before the tuple
// has zero parameters.
func DecodeParams(d *Decoder, schema uint8) []Value {
	if d.Err() != nil || d.Rest() == 0 {
		return nil
	}
	var n int
	switch schema {
	case 0:
		n = int(d.U8("parameter count"))
	case 1:
		n = int(d.U32("parameter count"))
	default:
		d.fail("unknown parameter schema %d", schema)
		return nil
	}
	if n > MaxParams || n > d.Rest() {
		d.fail("%d parameters (limit %d, %d bytes left)", n, MaxParams, d.Rest())
		return nil
	}
	types := d.take(n, "parameter types")
	d.Skip()
	vals := make([]Value, 0, n)
	for i := 0; i < n && d.Err() == nil; i++ {
		vals = append(vals, decodeValue(d, types[i], i+1))
	}
	if d.Err() != nil {
		return nil
	}
	return vals
}

// decodeValue reads value i (from 1) of type typ. Its position goes into
// the error only when it fails (formatting it for every value cost a
// Sprintf per parameter and per column).
func decodeValue(d *Decoder, typ uint8, i int) Value {
	if d.err != nil {
		return Value{}
	}
	var v Value
	switch typ {
	case Integer, UnixTime, Boolean:
		v = Value{typ, d.I64("value")}
	case Float:
		v = Value{typ, d.Double("value")}
	case Text, ISO8601:
		v = Value{typ, d.Text("value")}
	case Blob:
		v = Value{typ, d.Blob("value")}
	case Null:
		d.U64("value")
		v = Value{typ, nil}
	default:
		d.fail("value: unknown type %d", typ)
	}
	if d.err != nil {
		d.err = fmt.Errorf("%w (value %d)", d.err, i)
		return Value{}
	}
	return v
}

// EncodeRow appends a row tuple: one 4-bit type code per column (the low
// nibble for even columns), padding, then the values.
func EncodeRow(e *Encoder, vals []Value) error {
	hdr := make([]byte, (len(vals)+1)/2)
	for i, v := range vals {
		if i%2 == 0 {
			hdr[i/2] |= v.Type & 0x0f
		} else {
			hdr[i/2] |= v.Type << 4
		}
	}
	e.B = append(e.B, hdr...)
	e.Pad()
	for _, v := range vals {
		if err := encodeValue(e, v); err != nil {
			return err
		}
	}
	return nil
}

// DecodeRow reads a row of n columns.
func DecodeRow(d *Decoder, n int) []Value {
	hdr := d.take((n+1)/2, "row header")
	d.Skip()
	vals := make([]Value, 0, n)
	for i := 0; i < n && d.Err() == nil; i++ {
		t := hdr[i/2] & 0x0f
		if i%2 == 1 {
			t = hdr[i/2] >> 4
		}
		vals = append(vals, decodeValue(d, t, i+1))
	}
	if d.Err() != nil {
		return nil
	}
	return vals
}

// Row markers end a ROWS message.
const (
	RowsPart = 0xEEEEEEEEEEEEEEEE // more ROWS messages follow
	RowsDone = 0xFFFFFFFFFFFFFFFF
)

// ColumnValue is the wire value of a column whose declared type is decl and
// whose value (as SQLite returned it) is v: int64, float64, string, []byte
// or nil. Columns declared exactly DATETIME, DATE or TIMESTAMP (whole name,
// any case) carry integers as unix time and text (and NULL, as "") as
// ISO-8601; BOOLEAN columns carry integers as booleans. Everything else,
// and values of other storage classes in those columns (where the original
// server crashed, or turned NULL into false), goes by storage class.
func ColumnValue(decl string, v any) Value {
	switch {
	case equalFold(decl, "DATETIME") || equalFold(decl, "DATE") || equalFold(decl, "TIMESTAMP"):
		switch x := v.(type) {
		case int64:
			return Value{UnixTime, x}
		case string:
			return Value{ISO8601, x}
		case nil:
			return Value{ISO8601, ""}
		}
	case equalFold(decl, "BOOLEAN"):
		if x, ok := v.(int64); ok {
			b := int64(0)
			if x != 0 {
				b = 1
			}
			return Value{Boolean, b}
		}
	}
	switch x := v.(type) {
	case int64:
		return Value{Integer, x}
	case float64:
		return Value{Float, x}
	case string:
		return Value{Text, x}
	case []byte:
		return Value{Blob, x}
	}
	return Value{Null, nil}
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		c := a[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c != b[i] {
			return false
		}
	}
	return true
}

// GoValue is a parameter's value for SQLite: int64, float64, string,
// []byte or nil (unix time as its integer, ISO-8601 as its text, booleans
// as 0/1).
func (v Value) GoValue() any { return v.V }
