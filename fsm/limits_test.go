package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/dqlite-go/dqlite/internal/faultfs"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/vfs"
)

// TestFramesMaxCommandBytes checks EncodeFrames at MaxCommandBytes: the most
// 512-byte pages that fit encode (and decode), one page more fails with
// ErrTooLarge.
func TestFramesMaxCommandBytes(t *testing.T) {
	const pageSize = 512
	pg := page(pageSize, 7)
	frames := func(n int) *Frames {
		f := &Frames{Database: "d", PageSize: pageSize, DBSize: uint32(n)}
		for i := 0; i < n; i++ {
			f.PageNumbers = append(f.PageNumbers, uint32(i+1))
			f.Pages = append(f.Pages, pg)
		}
		return f
	}
	one, err := EncodeFrames(frames(1))
	if err != nil {
		t.Fatal(err)
	}
	// len(one) + (n-1) pages, plus up to 2 bytes more of page count varint.
	n := (MaxCommandBytes-len(one)-2)/(4+pageSize) + 1
	b, err := EncodeFrames(frames(n))
	if err != nil {
		t.Fatalf("%d pages (%d bytes of %d): %v", n, len(one)+(n-1)*(4+pageSize), MaxCommandBytes, err)
	}
	if len(b) > MaxCommandBytes || len(b)+4+pageSize <= MaxCommandBytes {
		t.Fatalf("setup: %d pages encode to %d bytes; want the most that fit in %d", n, len(b), MaxCommandBytes)
	}
	if f, err := DecodeFrames(b); err != nil || len(f.Pages) != n {
		t.Fatalf("decoding the largest frames command: %v", err)
	}
	if _, err := EncodeFrames(frames(n + 1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("%d pages, over %d bytes: %v, want ErrTooLarge", n+1, MaxCommandBytes, err)
	}
}

// TestStatementsMaxCommandBytes checks EncodeStatements at MaxCommandBytes:
// a command of exactly MaxCommandBytes encodes, 5 bytes more of SQL fail
// with ErrTooLarge.
func TestStatementsMaxCommandBytes(t *testing.T) {
	exact := exactStatementsSQLBytes(t)
	if b, err := statementsOfSQL(exact); err != nil || len(b) != MaxCommandBytes {
		t.Fatalf("a command of exactly %d bytes: %d bytes, %v", MaxCommandBytes, len(b), err)
	}
	if _, err := statementsOfSQL(exact + trailerBytes + 1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a command of %d bytes (limit %d): %v, want ErrTooLarge", MaxCommandBytes+trailerBytes+1,
			MaxCommandBytes, err)
	}
}

// TestStatementsMaxCommandBytesChecksum checks a statements command one to
// four bytes over MaxCommandBytes fails with ErrTooLarge too.
func TestStatementsMaxCommandBytesChecksum(t *testing.T) {
	exact := exactStatementsSQLBytes(t)
	if b, err := statementsOfSQL(exact + 1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a command of %d bytes (limit %d): %v, want ErrTooLarge", len(b), MaxCommandBytes, err)
	}
}

func statementsOfSQL(sqlBytes int) ([]byte, error) {
	return EncodeStatements(&Statements{Database: "d",
		Statements: []Statement{{SQL: strings.Repeat("x", sqlBytes)}}})
}

// exactStatementsSQLBytes is the SQL length making a one-statement command
// exactly MaxCommandBytes long.
func exactStatementsSQLBytes(t *testing.T) int {
	const sqlBytes = 1 << 21 // a 4-byte length varint, as at the limit
	b, err := statementsOfSQL(sqlBytes)
	if err != nil {
		t.Fatal(err)
	}
	return MaxCommandBytes - (len(b) - sqlBytes)
}

// TestMaxStatements checks fsm.MaxStatements: a statements command of
// exactly MaxStatements encodes and decodes; one more is refused by the
// encoder, and a command claiming one more (valid checksum) is corrupt to
// the decoder.
func TestMaxStatements(t *testing.T) {
	st := &Statements{Database: "d", Statements: make([]Statement, MaxStatements)}
	for i := range st.Statements {
		st.Statements[i].SQL = "S"
	}
	b, err := EncodeStatements(st)
	if err != nil {
		t.Fatalf("%d statements: %v", MaxStatements, err)
	}
	if g, err := DecodeStatements(b); err != nil || len(g.Statements) != MaxStatements {
		t.Fatalf("decoding %d statements: %v", MaxStatements, err)
	}
	st.Statements = append(st.Statements, Statement{SQL: "S"})
	if _, err := EncodeStatements(st); err == nil || !strings.Contains(err.Error(), "statements") {
		t.Fatalf("%d statements encoded: %v", MaxStatements+1, err)
	}
	// The same command by hand with one statement more: header, client,
	// seq, database, count, then count × (sql "S", no parameters).
	raw := append([]byte{commandVersion, byte(KindStatements), 0, 0}, make([]byte, 16)...)
	raw = appendString(raw, "d")
	raw = binary.AppendUvarint(raw, MaxStatements+1)
	raw = append(raw, bytes.Repeat([]byte{1, 'S', 0}, MaxStatements+1)...)
	if _, err := DecodeStatements(appendChecksum(raw)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("decoding %d statements: %v, want ErrCorrupt", MaxStatements+1, err)
	}
}

// TestMaxParams checks fsm.MaxParams the same way: MaxParams parameters
// encode and decode, one more is refused by the encoder and the decoder.
func TestMaxParams(t *testing.T) {
	st := &Statements{Database: "d", Statements: []Statement{{SQL: "S", Params: make([]Value, MaxParams)}}}
	for i := range st.Statements[0].Params {
		st.Statements[0].Params[i].Type = TypeNull
	}
	b, err := EncodeStatements(st)
	if err != nil {
		t.Fatalf("%d parameters: %v", MaxParams, err)
	}
	if g, err := DecodeStatements(b); err != nil || len(g.Statements[0].Params) != MaxParams {
		t.Fatalf("decoding %d parameters: %v", MaxParams, err)
	}
	st.Statements[0].Params = append(st.Statements[0].Params, Value{Type: TypeNull})
	if _, err := EncodeStatements(st); err == nil {
		t.Fatalf("%d parameters encoded", MaxParams+1)
	}
	raw := append([]byte{commandVersion, byte(KindStatements), 0, 0}, make([]byte, 16)...)
	raw = appendString(raw, "d")
	raw = binary.AppendUvarint(raw, 1)
	raw = appendString(raw, "S")
	raw = binary.AppendUvarint(raw, MaxParams+1)
	raw = append(raw, bytes.Repeat([]byte{byte(TypeNull)}, MaxParams+1)...)
	if _, err := DecodeStatements(appendChecksum(raw)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("decoding %d parameters: %v, want ErrCorrupt", MaxParams+1, err)
	}
}

// TestBatchPastMaxStatements checks a statement-mode batch of
// MaxStatements+1 writes: every write gets the limit's error and there is
// no command to propose, so nothing of it is applied.
func TestBatchPastMaxStatements(t *testing.T) {
	v, err := vfs.New("limits-batch", 1, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	db, err := Open(v, "db", 4096, ModeStatements)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	cmd, _, errs := db.ExecuteBatch([]any{&BatchItem{SQL: "CREATE TABLE t (x)"}})
	if errs[0] != nil || cmd == nil {
		t.Fatalf("create: %v", errs[0])
	}
	db.Proposed(1, 1)
	if _, err := db.Apply(raft.Entry{Index: 1, Term: 1, Data: cmd}); err != nil {
		t.Fatal(err)
	}
	items := make([]any, MaxStatements+1)
	for i := range items {
		items[i] = &BatchItem{SQL: "INSERT INTO t VALUES (1)"}
	}
	cmd, _, errs = db.ExecuteBatch(items)
	if cmd != nil {
		t.Fatalf("a batch of %d statements produced a %d-byte command", len(items), len(cmd))
	}
	for i, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "statements") {
			t.Fatalf("write %d of %d: %v, want the statements limit", i, len(items), err)
		}
	}
	rows, err := db.Conn().Query("SELECT count(*) FROM t")
	if err != nil || rows[0][0].(int64) != 0 {
		t.Fatalf("rows after the refused batch: %v %v", rows, err)
	}
}

// TestImageLimit: an image (the DUMP request) of a database past the limit
// is refused before anything is built in memory, with the sizes in the
// error; one within it is built.
func TestImageLimit(t *testing.T) {
	d, err := OpenFiles(faultfs.NewDisk(3), "image-limit", 1, "db", 4096, ModeFrames)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cmd, _, errs := d.ExecuteBatch([]any{&BatchItem{SQL: "CREATE TABLE t(b); INSERT INTO t SELECT randomblob(1000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 100) SELECT i FROM n)"}})
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	d.Proposed(1, 1)
	if _, err := d.Apply(raft.Entry{Index: 1, Term: 1, Data: cmd}); err != nil {
		t.Fatal(err)
	}
	img, err := d.Image("db")
	if err != nil || len(img) < 100*1000 {
		t.Fatalf("image of %d bytes (%v), want the database's", len(img), err)
	}
	defer func(old int64) { imageLimit = old }(imageLimit)
	imageLimit = int64(len(img)) / 2
	if _, err := d.Image("db"); !errors.Is(err, ErrImageTooLarge) {
		t.Fatalf("image past the limit: %v, want ErrImageTooLarge", err)
	}
}
