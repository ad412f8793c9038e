package fsm_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/raft"
)

// stream sends the leader's open view at index to the follower's sink in
// chunks of chunk bytes, and returns the number of chunks.
func stream(t *testing.T, from, to *fsm.DB, index uint64, chunk int) int {
	t.Helper()
	meta := raft.SnapshotMeta{Index: index, Term: 1}
	var off uint64
	for n := 1; ; n++ {
		data, last, err := from.ReadView(index, off, chunk)
		if err != nil {
			t.Fatalf("reading the view at %d: %v", off, err)
		}
		if len(data) > chunk {
			t.Fatalf("chunk of %d bytes, asked for %d", len(data), chunk)
		}
		if err := to.WriteSnapshotChunk(meta, off, data, last); err != nil {
			t.Fatalf("writing chunk at %d: %v", off, err)
		}
		off += uint64(len(data))
		if last {
			return n
		}
	}
}

// TestStreamedSnapshot sends a leader's databases (two, one over several
// checkpoints) to an empty node as a stream of small chunks while the
// leader goes on writing: the receiver installs exactly the state at the
// view's index, writes made after it are not in it, and the receiver's
// record covers the index (a restart needs no restore).
func TestStreamedSnapshot(t *testing.T) {
	l := newFileNode(t)
	l.write("CREATE TABLE t(b)")
	for i := 0; i < 1500; i++ {
		l.write("INSERT INTO t VALUES (randomblob(1000))")
	}
	idx, err := l.db.OpenView()
	if err != nil {
		t.Fatal(err)
	}
	if idx != uint64(len(l.log)) {
		t.Fatalf("view at %d, applied %d", idx, len(l.log))
	}
	for i := 0; i < 20; i++ { // after the view: not in it
		l.write("INSERT INTO t VALUES (randomblob(1000))")
	}
	f := newFileNode(t)
	chunks := stream(t, l.db, f.db, idx, 64<<10)
	if err := f.db.InstallReceived(idx); err != nil {
		t.Fatal(err)
	}
	if got := f.count(); got != 1500 {
		t.Fatalf("installed %d rows, want the view's 1500", got)
	}
	if !f.db.Covers(idx) || f.db.DurableIndex() != idx {
		t.Fatalf("after the install the files cover %v, durable index %d, want %d", f.db.Covers(idx), f.db.DurableIndex(), idx)
	}
	t.Logf("%d chunks", chunks)
	// The receiver survives a crash right after the install.
	f.log = l.log[:idx]
	f.restart(true, idx)
	if got := f.count(); got != 1500 {
		t.Fatalf("%d rows after a crash following the install, want 1500", got)
	}
}

// TestStreamRejectsCorruption: a flipped byte in any chunk makes the last
// chunk fail its checksum, and the receiver keeps its old state.
func TestStreamRejectsCorruption(t *testing.T) {
	l := newFileNode(t)
	l.write("CREATE TABLE t(b)")
	for i := 0; i < 50; i++ {
		l.write("INSERT INTO t VALUES (randomblob(1000))")
	}
	idx, err := l.db.OpenView()
	if err != nil {
		t.Fatal(err)
	}
	f := newFileNode(t)
	f.write("CREATE TABLE t(b)")
	f.write("INSERT INTO t VALUES (1)")
	meta := raft.SnapshotMeta{Index: idx, Term: 1}
	var off uint64
	var last bool
	var werr error
	for i := 0; !last; i++ {
		var data []byte
		data, last, err = l.db.ReadView(idx, off, 4096)
		if err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			data = append([]byte(nil), data...)
			data[100] ^= 1
		}
		werr = f.db.WriteSnapshotChunk(meta, off, data, last)
		off += uint64(len(data))
	}
	if !errors.Is(werr, fsm.ErrCorrupt) {
		t.Fatalf("last chunk of a corrupted stream: %v, want a corruption error", werr)
	}
	if err := f.db.InstallReceived(idx); err == nil {
		t.Fatal("installed a stream that failed its checksum")
	}
	if got := f.count(); got != 1 {
		t.Fatalf("the receiver holds %d rows, want its own 1", got)
	}
}

// TestViewHoldsCheckpoints: while a view is open, checkpoints wait (the
// files it reads must not change) and the WAL grows; past MaxHeldWALBytes
// the view closes and reads of it fail with ErrSnapshotChanged.
func TestViewHoldsCheckpoints(t *testing.T) {
	l := newFileNode(t)
	l.write("CREATE TABLE t(b)")
	idx, err := l.db.OpenView()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1500; i++ {
		l.write("INSERT INTO t VALUES (randomblob(3000))")
	}
	if w := l.db.WALSize(); w < 1400*4096 {
		t.Fatalf("WAL of %d bytes with a view open: a checkpoint ran under the view", w)
	}
	if _, _, err := l.db.ReadView(idx, 0, 4096); err != nil {
		t.Fatalf("the view is gone early: %v", err)
	}
	peak := int64(0)
	for i := 0; ; i++ {
		if _, open := l.db.ViewOpen(); !open {
			break
		}
		if i > 2*fsm.MaxHeldWALBytes/100000 {
			t.Fatalf("the view is still open with a WAL of %d bytes", l.db.WALSize())
		}
		peak = max(peak, l.db.WALSize())
		l.write(fmt.Sprintf("INSERT INTO t VALUES (randomblob(%d))", 100000))
	}
	if peak > fsm.MaxHeldWALBytes+200000 {
		t.Fatalf("the WAL reached %d bytes under the view, bound %d", peak, fsm.MaxHeldWALBytes)
	}
	l.write("INSERT INTO t VALUES (1)")
	if _, _, err := l.db.ReadView(idx, 0, 4096); !errors.Is(err, raft.ErrSnapshotChanged) {
		t.Fatalf("read of a view past the WAL bound: %v, want raft.ErrSnapshotChanged", err)
	}
	if w := l.db.WALSize(); w > 2*(4096+24)*1000 {
		t.Fatalf("WAL of %d bytes after the view closed: checkpoints did not resume", w)
	}
}

// TestInstallQuickCheckRejectsCorruptSource: a database the leader's file
// holds corrupt streams with a matching checksum (it is computed over what
// is sent); the receiver's quick_check, run on databases up to
// MaxInstallCheckBytes, refuses the install, and the receiver keeps its
// old state.
func TestInstallQuickCheckRejectsCorruptSource(t *testing.T) {
	l := newFileNode(t)
	l.write("CREATE TABLE t(b)")
	l.write("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000) INSERT INTO t SELECT randomblob(1000) FROM n")
	if err := l.db.CheckpointAll(); err != nil {
		t.Fatal(err)
	}
	names, err := l.disk.List()
	if err != nil {
		t.Fatal(err)
	}
	flipped := 0
	for _, name := range names {
		if strings.HasPrefix(name, "sqlite-") && strings.HasSuffix(name, ".db") && l.disk.Size(name) > 64*4096 {
			for pg := int64(1); pg < 64; pg += 7 { // a page's type byte
				if err := l.disk.FlipBit(name, pg*4096, 6); err != nil {
					t.Fatal(err)
				}
			}
			flipped++
		}
	}
	if flipped != 1 {
		t.Fatalf("corrupted %d database files, want 1 (files %v)", flipped, names)
	}
	idx, err := l.db.OpenView()
	if err != nil {
		t.Fatal(err)
	}
	f := newFileNode(t)
	f.write("CREATE TABLE t(b)")
	f.write("INSERT INTO t VALUES (1)")
	stream(t, l.db, f.db, idx, 1<<20) // every chunk accepted: the checksum matches
	if err := f.db.InstallReceived(idx); !errors.Is(err, fsm.ErrCorrupt) {
		t.Fatalf("installing a corrupt database: %v, want ErrCorrupt from quick_check", err)
	}
	if got := f.count(); got != 1 {
		t.Fatalf("%d rows after the refused install, want the old 1", got)
	}
}
