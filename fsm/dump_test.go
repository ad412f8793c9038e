package fsm_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
)

const dumpInsert = "INSERT INTO t SELECT randomblob(1000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 5000) SELECT i FROM n)"

// TestDumpFromFile: a DUMP opened on a database whose WAL holds frames
// brings the file up to date and pauses its checkpoints: the bytes read
// later, after a write that makes a checkpoint due and a tick, are the
// image of the state it was opened at. Released, the checkpoint runs.
func TestDumpFromFile(t *testing.T) {
	l := newFileNode(t)
	l.write("CREATE TABLE t(b)")
	l.write("INSERT INTO t VALUES (randomblob(1000))")
	if l.db.WALSize() == 0 {
		t.Fatal("the WAL is empty: the dump would not bring the file up to date")
	}
	img, err := l.db.Image("db")
	if err != nil {
		t.Fatal(err)
	}
	u, err := l.db.OpenDump("db")
	if err != nil || u == nil {
		t.Fatalf("OpenDump: %v, %v", u, err)
	}
	l.write(dumpInsert) // its tick would checkpoint: the dump holds it back
	if l.db.WALSize() == 0 {
		t.Fatal("a checkpoint ran while the dump was open")
	}
	got, err := io.ReadAll(u)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) != u.Size() || !bytes.Equal(got, img) {
		t.Fatalf("the dump has %d bytes (size %d), the image at its opening %d: not the same", len(got), u.Size(), len(img))
	}
	u.Close()
	l.db.Release(u)
	if err := l.db.Maintain(); err != nil {
		t.Fatal(err)
	}
	if w := l.db.WALSize(); w != 0 {
		t.Fatalf("the WAL holds %d bytes after the dump was released and a tick", w)
	}
}

// TestDumpAbortedWhenHeldTooLong: a dump that holds its database's
// checkpoints back while the WAL passes MaxHeldWALBytes is aborted (its
// reads fail); once released, checkpoints resume.
func TestDumpAbortedWhenHeldTooLong(t *testing.T) {
	l := newFileNode(t)
	l.write("CREATE TABLE t(b)")
	l.write("INSERT INTO t VALUES (1)")
	u, err := l.db.OpenDump("db")
	if err != nil || u == nil {
		t.Fatalf("OpenDump: %v, %v", u, err)
	}
	for l.db.WALSize() <= fsm.MaxHeldWALBytes {
		l.write(dumpInsert)
	}
	if _, err := u.Read(make([]byte, 4096)); !errors.Is(err, fsm.ErrDumpAborted) {
		t.Fatalf("reading a dump held past MaxHeldWALBytes: %v, want ErrDumpAborted", err)
	}
	u.Close()
	l.db.Release(u)
	if err := l.db.Maintain(); err != nil {
		t.Fatal(err)
	}
	if w := l.db.WALSize(); w != 0 {
		t.Fatalf("the WAL holds %d bytes after the aborted dump was released and a tick", w)
	}
}

// TestDumpsCannotHoldCheckpointsForever: while a dump is aborted (and not
// yet released), or MaxDumps are open, a new DUMP is refused, so a client
// sending DUMP after DUMP cannot keep the database's checkpoints back; once
// they are released a tick checkpoints.
func TestDumpsCannotHoldCheckpointsForever(t *testing.T) {
	l := newFileNode(t)
	l.write("CREATE TABLE t(b)")
	l.write("INSERT INTO t VALUES (1)")
	var open []*fsm.Dump
	for i := 0; i < fsm.MaxDumps; i++ {
		u, err := l.db.OpenDump("db")
		if err != nil || u == nil {
			t.Fatalf("dump %d: %v, %v", i, u, err)
		}
		open = append(open, u)
	}
	if _, err := l.db.OpenDump("db"); !errors.Is(err, fsm.ErrDumpLater) {
		t.Fatalf("dump %d: %v, want ErrDumpLater", fsm.MaxDumps+1, err)
	}
	for l.db.WALSize() <= fsm.MaxHeldWALBytes {
		l.write(dumpInsert) // aborts the open dumps
	}
	last := open[len(open)-1]
	last.Close()
	l.db.Release(last)
	open = open[:len(open)-1]
	if _, err := l.db.OpenDump("db"); !errors.Is(err, fsm.ErrDumpLater) {
		t.Fatalf("a dump while others are aborted: %v, want ErrDumpLater", err)
	}
	for _, u := range open {
		u.Close()
		l.db.Release(u)
	}
	if err := l.db.Maintain(); err != nil {
		t.Fatal(err)
	}
	if w := l.db.WALSize(); w != 0 {
		t.Fatalf("the WAL holds %d bytes after the dumps were released and a tick", w)
	}
	u, err := l.db.OpenDump("db")
	if err != nil || u == nil {
		t.Fatalf("a dump after the others were released: %v, %v", u, err)
	}
	u.Close()
	l.db.Release(u)
}
