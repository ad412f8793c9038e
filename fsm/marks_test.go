package fsm_test

import (
	"errors"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/wal"
)

// countFS counts the files created, by name.
type countFS struct {
	wal.FS
	created map[string]int
}

func (c *countFS) Create(name string) (wal.File, error) {
	c.created[name]++
	return c.FS.Create(name)
}

// TestCheckpointsMarkTheirIndex: once a database's file is recorded, its
// checkpoints record how far it goes in its mark file (the dirty index
// before the copy, F after the sync), not by replacing the record: the
// record is written once, the mark's number grows by two a checkpoint,
// and a restart after a crash starts from the marked F and replays only
// what follows to the same rows.
func TestCheckpointsMarkTheirIndex(t *testing.T) {
	n := newFileNode(t)
	cfs := &countFS{FS: n.disk, created: map[string]int{}}
	n.os = cfs
	n.db.Close()
	n.open()
	n.db.SetCheckpointFrames(4)
	n.write("CREATE TABLE t (b BLOB)")
	n.write("INSERT INTO t VALUES (randomblob(30000))")
	if err := n.db.Maintain(); err != nil { // the first checkpoint's sync: the record names the file
		t.Fatal(err)
	}
	records := cfs.created["fsm-databases.tmp"]
	ins, err := fsm.InspectFiles(n.disk)
	if err != nil || len(ins.Databases) != 1 {
		t.Fatalf("%+v, %v", ins, err)
	}
	first := ins.Databases[0].Mark
	for i := 0; i < 5; i++ {
		n.write("INSERT INTO t VALUES (randomblob(30000))") // a checkpoint at its tick
		if err := n.db.Maintain(); err != nil {             // and its sync
			t.Fatal(err)
		}
	}
	if got := cfs.created["fsm-databases.tmp"]; got != records {
		t.Errorf("the record was replaced %d times by 5 checkpoints of a recorded file", got-records)
	}
	ins, err = fsm.InspectFiles(n.disk)
	if err != nil || len(ins.Databases) != 1 || ins.Databases[0].Problem != "" {
		t.Fatalf("%+v, %v", ins, err)
	}
	d := ins.Databases[0]
	if d.Mark != first+10 || d.Index != uint64(len(n.log)) {
		t.Fatalf("mark %d (first %d), index %d after 5 checkpoints of %d entries: want mark %d, index %d",
			d.Mark, first, d.Index, len(n.log), first+10, len(n.log))
	}
	n.restart(true, d.Index) // the log before F is gone: the mark must be right
	if got := n.count(); got != 6 {
		t.Fatalf("%d rows after the restart, want 6", got)
	}
}

// TestTornMarkSlot: a crash while a mark is written tears its slot only;
// the other slot holds the mark before it, which the restart uses (a lower
// F: more of the log replayed, the same rows). A mark file with neither
// slot valid cannot come from a crash: the set refuses to open.
func TestTornMarkSlot(t *testing.T) {
	n := newFileNode(t)
	n.db.SetCheckpointFrames(4)
	n.write("CREATE TABLE t (b BLOB)")
	for i := 0; i < 3; i++ {
		n.write("INSERT INTO t VALUES (randomblob(30000))")
		if err := n.db.Maintain(); err != nil {
			t.Fatal(err)
		}
	}
	ins, err := fsm.InspectFiles(n.disk)
	if err != nil || len(ins.Databases) != 1 {
		t.Fatalf("%+v, %v", ins, err)
	}
	d := ins.Databases[0]
	n.db.Close()
	markFile := d.File[:len(d.File)-len(".db")] + ".mark"
	f, err := n.disk.Open(markFile)
	if err != nil {
		t.Fatal(err)
	}
	newest := int64(d.Mark%2) * 4096
	if _, err := f.WriteAt([]byte("torn"), newest+10); err != nil {
		t.Fatal(err)
	}
	n.open()
	ins, err = fsm.InspectFiles(n.disk)
	if err != nil || ins.Databases[0].Mark != d.Mark-1 || ins.Databases[0].Index > d.Index {
		t.Fatalf("after tearing mark %d: %+v, %v (want mark %d)", d.Mark, ins, err, d.Mark-1)
	}
	n.db.Close()
	n.open()
	for _, e := range n.log[ins.Databases[0].Index:] {
		if _, err := n.db.Apply(e); err != nil {
			t.Fatalf("replaying entry %d: %v", e.Index, err)
		}
		n.db.AppliedTo(e.Index)
	}
	if err := n.db.FinishReplay(); err != nil {
		t.Fatal(err)
	}
	if got := n.count(); got != 3 {
		t.Fatalf("%d rows after the replay, want 3", got)
	}
	n.db.Close()
	if _, err := f.WriteAt([]byte("torn"), 4096-newest+10); err != nil {
		t.Fatal(err)
	}
	f.Close()
	db, err := fsm.OpenFiles(n.disk, "torn-marks", 1, "db", 4096, fsm.ModeFrames)
	if err == nil {
		db.Close()
		t.Fatal("a set whose mark file has no valid slot opened")
	}
	if !errors.Is(err, fsm.ErrCorrupt) {
		t.Fatalf("opening with no valid mark: %v, want ErrCorrupt", err)
	}
	n.db = nil
}
