package fsm

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"testing"

	"pgregory.net/rapid"
)

func page(size int, fill byte) []byte { return bytes.Repeat([]byte{fill}, size) }

// TestFramesGolden pins the byte layout of a frames command.
func TestFramesGolden(t *testing.T) {
	f := &Frames{Client: 1, Seq: 2, Database: "db", PageSize: 512, DBSize: 3,
		PageNumbers: []uint32{3}, Pages: [][]byte{page(512, 0xab)}}
	b, err := EncodeFrames(f)
	if err != nil {
		t.Fatal(err)
	}
	head := "01010000" + "0100000000000000" + "0200000000000000" + "02" + "6462" +
		"00020000" + "03000000" + "01" + "03000000"
	if got := hex.EncodeToString(b[:len(head)/2]); got != head {
		t.Fatalf("header\n got %s\nwant %s", got, head)
	}
	if len(b) != len(head)/2+512+4 {
		t.Fatalf("length %d", len(b))
	}
}

// TestFramesPageSize65536 checks the largest SQLite page size is carried.
func TestFramesPageSize65536(t *testing.T) {
	f := &Frames{Database: "x", PageSize: 65536, DBSize: 2, PageNumbers: []uint32{1, 2},
		Pages: [][]byte{page(65536, 1), page(65536, 2)}}
	b, err := EncodeFrames(f)
	if err != nil {
		t.Fatal(err)
	}
	g, err := DecodeFrames(b)
	if err != nil || g.PageSize != 65536 || !bytes.Equal(g.Pages[1], f.Pages[1]) {
		t.Fatalf("decode: %v %v", g.PageSize, err)
	}
}

// TestFramesRoundTrip checks random frames commands decode to themselves.
func TestFramesRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		ps := uint32(1) << rapid.IntRange(9, 12).Draw(t, "log2size")
		n := rapid.IntRange(0, 5).Draw(t, "n")
		f := &Frames{Client: rapid.Uint64().Draw(t, "client"), Seq: rapid.Uint64().Draw(t, "seq"),
			Database: rapid.StringN(0, 20, -1).Draw(t, "name"), PageSize: ps, DBSize: rapid.Uint32().Draw(t, "dbsize")}
		for i := 0; i < n; i++ {
			f.PageNumbers = append(f.PageNumbers, rapid.Uint32Range(1, 1<<31).Draw(t, "pgno"))
			f.Pages = append(f.Pages, rapid.SliceOfN(rapid.Byte(), int(ps), int(ps)).Draw(t, "page"))
		}
		b, err := EncodeFrames(f)
		if err != nil {
			t.Fatal(err)
		}
		g, err := DecodeFrames(b)
		if err != nil {
			t.Fatal(err)
		}
		if g.Client != f.Client || g.Seq != f.Seq || g.Database != f.Database || g.DBSize != f.DBSize ||
			len(g.Pages) != n {
			t.Fatalf("got %+v want %+v", g, f)
		}
		for i := range f.Pages {
			if g.PageNumbers[i] != f.PageNumbers[i] || !bytes.Equal(g.Pages[i], f.Pages[i]) {
				t.Fatalf("page %d differs", i)
			}
		}
	})
}

// TestStatementsRoundTrip checks random statements commands decode to
// themselves.
func TestStatementsRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := &Statements{Client: rapid.Uint64().Draw(t, "c"), Seq: rapid.Uint64().Draw(t, "s"),
			Database: rapid.StringN(0, 10, -1).Draw(t, "db")}
		for i := rapid.IntRange(0, 4).Draw(t, "n"); i > 0; i-- {
			st := Statement{SQL: rapid.String().Draw(t, "sql")}
			for j := rapid.IntRange(0, 4).Draw(t, "np"); j > 0; j-- {
				v := Value{Type: ValueType(rapid.IntRange(1, 5).Draw(t, "type"))}
				switch v.Type {
				case TypeInteger:
					v.Int = rapid.Int64().Draw(t, "i")
				case TypeFloat:
					v.Float = rapid.Float64().Draw(t, "f")
				case TypeText:
					v.Text = rapid.String().Draw(t, "t")
				case TypeBlob:
					v.Blob = rapid.SliceOfN(rapid.Byte(), 1, 10).Draw(t, "b")
				}
				st.Params = append(st.Params, v)
			}
			s.Statements = append(s.Statements, st)
		}
		b, err := EncodeStatements(s)
		if err != nil {
			t.Fatal(err)
		}
		g, err := DecodeStatements(b)
		if err != nil {
			t.Fatal(err)
		}
		if g.Client != s.Client || g.Seq != s.Seq || g.Database != s.Database || len(g.Statements) != len(s.Statements) {
			t.Fatalf("got %+v want %+v", g, s)
		}
		for i, st := range s.Statements {
			gs := g.Statements[i]
			if gs.SQL != st.SQL || len(gs.Params) != len(st.Params) {
				t.Fatalf("statement %d differs", i)
			}
			for j, v := range st.Params {
				w := gs.Params[j]
				same := v.Type == w.Type && v.Int == w.Int && v.Text == w.Text && bytes.Equal(v.Blob, w.Blob) &&
					(v.Float == w.Float || math.IsNaN(v.Float) && math.IsNaN(w.Float))
				if !same {
					t.Fatalf("param %d/%d: got %+v want %+v", i, j, w, v)
				}
			}
		}
	})
}

// TestEveryBitFlipIsCorruption flips each bit of an encoded command in turn
// and checks the decoder reports corruption every time.
func TestEveryBitFlipIsCorruption(t *testing.T) {
	b, err := EncodeStatements(&Statements{Database: "d", Statements: []Statement{{SQL: "INSERT INTO t VALUES (?)",
		Params: []Value{{Type: TypeInteger, Int: 42}}}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(b)*8; i++ {
		c := append([]byte(nil), b...)
		c[i/8] ^= 1 << (i % 8)
		if _, err := DecodeStatements(c); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flip of bit %d: %v", i, err)
		}
	}
}

// TestMalformedCommands checks structurally bad commands (with a valid
// checksum) are rejected as corruption, and bad inputs to the encoders are
// refused.
func TestMalformedCommands(t *testing.T) {
	withSum := func(b []byte) []byte { return appendChecksum(b) }
	cases := map[string][]byte{
		"short":         {1, 1},
		"version":       withSum([]byte{9, 1, 0, 0}),
		"kind":          withSum([]byte{1, 9, 0, 0}),
		"frames short":  withSum([]byte{1, 1, 0, 0, 1}),
		"bad page size": withSum(append([]byte{1, 1, 0, 0}, make([]byte, 16+1+4+4+1)...)),
		"stmts count":   withSum(append(append([]byte{1, 2, 0, 0}, make([]byte, 17)...), 0xff, 0xff, 0x03)),
	}
	for name, b := range cases {
		_, err1 := DecodeFrames(b)
		_, err2 := DecodeStatements(b)
		if !errors.Is(err1, ErrCorrupt) || !errors.Is(err2, ErrCorrupt) {
			t.Errorf("%s: %v / %v", name, err1, err2)
		}
	}
	bad := []*Frames{
		{PageSize: 1000},
		{PageSize: 512, PageNumbers: []uint32{1}},
		{PageSize: 512, PageNumbers: []uint32{1}, Pages: [][]byte{page(10, 0)}},
		{PageSize: 512, PageNumbers: []uint32{0}, Pages: [][]byte{page(512, 0)}},
		{PageSize: 512, Database: string(make([]byte, MaxNameBytes+1))},
	}
	for i, f := range bad {
		if _, err := EncodeFrames(f); err == nil {
			t.Errorf("bad frames %d encoded", i)
		}
	}
	if _, err := EncodeStatements(&Statements{Statements: []Statement{{Params: []Value{{Type: 9}}}}}); err == nil {
		t.Error("unknown parameter type encoded")
	}
	// Kinds are not interchangeable.
	fb, _ := EncodeFrames(&Frames{PageSize: 512})
	if _, err := DecodeStatements(fb); !errors.Is(err, ErrCorrupt) {
		t.Errorf("frames decoded as statements: %v", err)
	}
}

// FuzzDecode checks the decoders never panic and that whatever decodes
// re-encodes to the same bytes.
func FuzzDecode(f *testing.F) {
	fb, _ := EncodeFrames(&Frames{Database: "main", PageSize: 512, DBSize: 1, PageNumbers: []uint32{1},
		Pages: [][]byte{page(512, 7)}})
	sb, _ := EncodeStatements(&Statements{Database: "main", Statements: []Statement{{SQL: "SELECT ?",
		Params: []Value{{Type: TypeText, Text: "x"}, {Type: TypeNull}, {Type: TypeFloat, Float: 1.5}}}}})
	f.Add(fb)
	f.Add(sb)
	f.Add([]byte{1, 2, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if fr, err := DecodeFrames(b); err == nil {
			again, err := EncodeFrames(fr)
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("frames re-encode differs: %v", err)
			}
		}
		if st, err := DecodeStatements(b); err == nil {
			if _, err := EncodeStatements(st); err != nil {
				t.Fatalf("statements re-encode: %v", err)
			}
		}
	})
}
