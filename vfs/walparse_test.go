package vfs

import (
	"errors"
	"reflect"
	"testing"
)

// TestWALRedo checks that a WAL copied from one database and parsed back
// brings another database, holding what the first held before those
// writes, to the same state; that a commit whose last frame is damaged is
// left out, the commits before it kept; and that bytes that are no WAL
// are refused.
func TestWALRedo(t *testing.T) {
	v := newVFS(t)
	w := open(t, v, "db", 4096)
	exec(t, w, "CREATE TABLE t (x INTEGER, y BLOB)")
	commit(t, v, "db")
	for i := 0; i < 20; i++ {
		exec(t, w, "INSERT INTO t VALUES (1, randomblob(3000))")
		commit(t, v, "db")
	}
	exec(t, w, "DELETE FROM t WHERE rowid % 2 = 0")
	commit(t, v, "db")
	b, err := v.AppendWAL(nil, "db")
	if err != nil || len(b) == 0 {
		t.Fatalf("WAL: %d bytes, %v", len(b), err)
	}
	f, err := ParseWAL(b)
	if err != nil || f == nil {
		t.Fatalf("ParseWAL: %v, %v", f, err)
	}
	seen := map[uint32]bool{}
	for _, p := range f.PageNumbers {
		if seen[p] || p > f.DBSize {
			t.Fatalf("page %d repeated or past the size %d", p, f.DBSize)
		}
		seen[p] = true
	}

	// Opened first: SQLite deletes the WAL of an empty database file
	// when it opens one.
	v2 := newVFS(t)
	c2 := open(t, v2, "db", 4096)
	if err := v2.ApplyFrames("db", f); err != nil {
		t.Fatal(err)
	}
	want := query(t, w, "SELECT rowid, x, hex(y) FROM t ORDER BY rowid")
	if got := query(t, c2, "SELECT rowid, x, hex(y) FROM t ORDER BY rowid"); !reflect.DeepEqual(got, want) {
		t.Fatalf("redone database has %d rows, want %d", len(got), len(want))
	}
	if got := query(t, c2, "PRAGMA integrity_check"); got[0][0] != "ok" {
		t.Fatalf("integrity_check: %v", got)
	}

	// Damage the last frame: the DELETE's commit goes, the inserts stay.
	bad := append([]byte(nil), b...)
	last := len(bad) - 100
	bad[last] ^= 0xff
	f2, err := ParseWAL(bad)
	if err != nil || f2 == nil {
		t.Fatalf("ParseWAL of a torn WAL: %v, %v", f2, err)
	}
	v3 := newVFS(t)
	c3 := open(t, v3, "db", 4096)
	if err := v3.ApplyFrames("db", f2); err != nil {
		t.Fatal(err)
	}
	if n := count(t, c3, "t"); n != 20 {
		t.Fatalf("torn WAL redone to %d rows, want the 20 before the damaged commit", n)
	}

	if _, err := ParseWAL(b[:20]); !errors.Is(err, ErrBadWAL) {
		t.Fatalf("short WAL: %v", err)
	}
	junk := append([]byte(nil), b[:64]...)
	junk[0] = 0
	if _, err := ParseWAL(junk); !errors.Is(err, ErrBadWAL) {
		t.Fatalf("bad magic: %v", err)
	}
	if f, err := ParseWAL(nil); f != nil || err != nil {
		t.Fatalf("empty WAL: %v, %v", f, err)
	}
}
