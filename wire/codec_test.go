package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func hexOf(b []byte) string { return hex.EncodeToString(b) }

// TestParamsGolden pins WIRE.md's example: two parameters, int 7 and text
// "hi", schema 0.
func TestParamsGolden(t *testing.T) {
	var e Encoder
	if err := EncodeParams(&e, 0, []Value{{Integer, int64(7)}, {Text, "hi"}}); err != nil {
		t.Fatal(err)
	}
	want := "0201030000000000" + "0700000000000000" + "6869000000000000"
	if got := hexOf(e.B); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	d := NewDecoder(e.B)
	got := DecodeParams(d, 0)
	if d.Err() != nil || !reflect.DeepEqual(got, []Value{{Integer, int64(7)}, {Text, "hi"}}) {
		t.Fatalf("decode: %v %v", got, d.Err())
	}
}

// TestRowHeaderGolden pins WIRE.md's row header example: integer, text,
// null gives 31 05 00 00 00 00 00 00.
func TestRowHeaderGolden(t *testing.T) {
	var e Encoder
	if err := EncodeRow(&e, []Value{{Integer, int64(1)}, {Text, "a"}, {Null, nil}}); err != nil {
		t.Fatal(err)
	}
	if got := hexOf(e.B[:8]); got != "3105000000000000" {
		t.Fatalf("row header %s", got)
	}
	d := NewDecoder(e.B)
	if row := DecodeRow(d, 3); d.Err() != nil || row[1].V != "a" || row[2].V != nil {
		t.Fatalf("decode row: %v %v", row, d.Err())
	}
}

// TestFramingGolden pins the header layout and padding of a message.
func TestFramingGolden(t *testing.T) {
	var e Encoder
	e.Text("db")
	msg := AppendMessage(nil, 3, 0, e.B)
	if got := hexOf(msg); got != "01000000"+"03000000"+"6462000000000000" {
		t.Fatalf("message %s", got)
	}
	h, body, err := ReadMessage(bytes.NewReader(msg), MaxMessageBytes)
	if err != nil || h.Type != 3 || h.Words != 1 || NewDecoder(body).Text("name") != "db" {
		t.Fatalf("read: %+v %v", h, err)
	}
}

// TestMalformed checks bad input is an error, never a panic or a large
// allocation.
func TestMalformed(t *testing.T) {
	huge := AppendMessage(nil, 0, 0, nil)
	huge[0], huge[1], huge[2], huge[3] = 0xff, 0xff, 0xff, 0xff
	if _, _, err := ReadMessage(bytes.NewReader(huge), MaxMessageBytes); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized length: %v", err)
	}
	cases := map[string]func() error{
		"missing NUL": func() error {
			d := NewDecoder([]byte("abcdefgh"))
			d.Text("sql")
			return d.Err()
		},
		"truncated u64": func() error {
			d := NewDecoder([]byte{1, 2, 3})
			d.U64("id")
			return d.Err()
		},
		"too many params": func() error {
			d := NewDecoder([]byte{0xff, 0xff, 0, 0, 0, 0, 0, 0})
			DecodeParams(d, 1)
			return d.Err()
		},
		"unknown schema": func() error {
			d := NewDecoder(make([]byte, 8))
			DecodeParams(d, 7)
			return d.Err()
		},
		"unknown type": func() error {
			d := NewDecoder([]byte{1, 99, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})
			DecodeParams(d, 0)
			return d.Err()
		},
		"blob beyond body": func() error {
			d := NewDecoder([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
			d.Blob("data")
			return d.Err()
		},
		"values missing": func() error {
			d := NewDecoder([]byte{2, 1, 1, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0})
			DecodeParams(d, 0)
			return d.Err()
		},
	}
	for name, f := range cases {
		if err := f(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A body that ends after the fixed fields has zero parameters.
	if vals := DecodeParams(NewDecoder(nil), 0); vals != nil {
		t.Errorf("empty tuple: %v", vals)
	}
}

func drawValue(t *rapid.T) Value {
	switch rapid.IntRange(0, 4).Draw(t, "kind") {
	case 0:
		return Value{Integer, rapid.Int64().Draw(t, "i")}
	case 1:
		return Value{Float, rapid.Float64Range(-1e9, 1e9).Draw(t, "f")}
	case 2:
		return Value{Text, rapid.StringMatching(`[a-z0-9 ]{0,20}`).Draw(t, "s")}
	case 3:
		return Value{Blob, rapid.SliceOfN(rapid.Byte(), 0, 20).Draw(t, "b")}
	}
	return Value{Null, nil}
}

// TestTuplesRoundTrip checks random parameter and row tuples decode to
// themselves, for both parameter schemas.
func TestTuplesRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		vals := rapid.SliceOfN(rapid.Custom(drawValue), 0, 12).Draw(t, "vals")
		for _, schema := range []uint8{0, 1} {
			var e Encoder
			if err := EncodeParams(&e, schema, vals); err != nil {
				t.Fatal(err)
			}
			if len(e.B)%8 != 0 {
				t.Fatalf("tuple of %d bytes is not padded", len(e.B))
			}
			d := NewDecoder(e.B)
			got := DecodeParams(d, schema)
			if d.Err() != nil || len(got) != len(vals) || (len(vals) > 0 && !reflect.DeepEqual(got, vals)) {
				t.Fatalf("schema %d: %v -> %v (%v)", schema, vals, got, d.Err())
			}
		}
		if len(vals) == 0 {
			return
		}
		var e Encoder
		if err := EncodeRow(&e, vals); err != nil {
			t.Fatal(err)
		}
		d := NewDecoder(e.B)
		if got := DecodeRow(d, len(vals)); d.Err() != nil || !reflect.DeepEqual(got, vals) {
			t.Fatalf("row: %v -> %v (%v)", vals, got, d.Err())
		}
	})
}

// FuzzDecoders feeds arbitrary bytes to the message reader and the tuple
// decoders: they must return errors, never panic.
func FuzzDecoders(f *testing.F) {
	var e Encoder
	EncodeParams(&e, 0, []Value{{Integer, int64(7)}, {Text, "hi"}, {Blob, []byte{1}}, {Null, nil}})
	f.Add(e.B)
	f.Add(AppendMessage(nil, 4, 0, e.B))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		ReadMessage(bytes.NewReader(b), 1<<16)
		for _, schema := range []uint8{0, 1} {
			DecodeParams(NewDecoder(b), schema)
		}
		DecodeRow(NewDecoder(b), 3)
		NewDecoder(b).Text("x")
		NewDecoder(b).Blob("x")
	})
}

// TestValueErrorNamesItsPosition: a tuple cut short in its second value
// fails as malformed, naming that value; the first decodes.
func TestValueErrorNamesItsPosition(t *testing.T) {
	var e Encoder
	if err := EncodeParams(&e, 0, []Value{{Type: Integer, V: int64(7)}, {Type: Text, V: "hello"}}); err != nil {
		t.Fatal(err)
	}
	body := e.B[:len(e.B)-4] // the text's NUL and padding gone
	d := NewDecoder(body)
	if vals := DecodeParams(d, 0); vals != nil {
		t.Fatalf("decoded %v from a cut tuple", vals)
	}
	if err := d.Err(); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "(value 2)") {
		t.Fatalf("error %v, want malformed naming value 2", err)
	}
	d = NewDecoder(e.B)
	if vals := DecodeParams(d, 0); d.Err() != nil || len(vals) != 2 || vals[0].V != int64(7) || vals[1].V != "hello" {
		t.Fatalf("whole tuple: %v %v", vals, d.Err())
	}
}

// BenchmarkDecodeParams10k: the parameters of the large workload's load
// request (10,000 blobs of 1,000 bytes).
func BenchmarkDecodeParams10k(b *testing.B) {
	vals := make([]Value, 10_000)
	for i := range vals {
		vals[i] = Value{Type: Blob, V: make([]byte, 1000)}
	}
	var e Encoder
	if err := EncodeParams(&e, 1, vals); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(e.B)))
	for b.Loop() {
		d := NewDecoder(e.B)
		if got := DecodeParams(d, 1); len(got) != len(vals) {
			b.Fatal(d.Err())
		}
	}
}
