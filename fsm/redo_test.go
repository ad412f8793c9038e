package fsm_test

import (
	"fmt"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/faultfs"
)

// TestStatementModeCrashInCheckpoint crashes a statement-mode node at
// every write of its database's files during a checkpoint (the redo
// journal, the file's pages, its sync, its mark, the record), restarts it
// and replays the whole log: every crash leaves the database exactly as
// the log says. The statements are not idempotent (UPDATE x = x + 1), so
// re-running any of them over a file that already holds it shows.
func TestStatementModeCrashInCheckpoint(t *testing.T) {
	crashes, redone := statementCrashSweep(t)
	t.Logf("%d crash points, %d restarts brought forward by a redo journal", crashes, redone)
	if crashes < 5 || redone == 0 {
		t.Fatalf("%d crash points in the checkpoint, %d redone: the sweep misses the journal", crashes, redone)
	}
}

// TestStatementModeNoRedoIsCaught plants the bug the redo journal
// prevents (a checkpoint that writes none) and checks the sweep above
// catches it.
func TestStatementModeNoRedoIsCaught(t *testing.T) {
	*fsm.SkipRedo = true
	defer func() { *fsm.SkipRedo = false }()
	ft := &failT{}
	statementCrashSweep(ft)
	if !ft.failed {
		t.Fatal("checkpoints without a redo journal survived every crash point")
	}
	t.Logf("caught: %s", ft.msg)
}

// tb is the part of testing.T the sweep uses, so that a planted bug's
// failure can be observed.
type tb interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

type failT struct {
	failed bool
	msg    string
}

type failed struct{}

func (f *failT) Helper()                   {}
func (f *failT) Logf(string, ...any)       {}
func (f *failT) Fatal(args ...any)         { f.fail(fmt.Sprint(args...)) }
func (f *failT) Fatalf(s string, a ...any) { f.fail(fmt.Sprintf(s, a...)) }
func (f *failT) fail(msg string) {
	f.failed, f.msg = true, msg
	panic(failed{})
}

// statementCrashSweep runs the crash sweep and returns how many crash
// points it tried, and after how many the restart used a redo journal.
func statementCrashSweep(t tb) (crashes, redone int) {
	if _, ok := t.(*failT); ok {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(failed); !ok {
					panic(r)
				}
			}
		}()
	}
	for at := 1; ; at++ {
		disk := faultfs.NewDisk(uint64(at))
		n := &crashNode{reviewNode{t: t, fs: &armFS{Disk: disk}, mode: fsm.ModeStatements}}
		n.open()
		n.write("CREATE TABLE t (id INTEGER PRIMARY KEY, x INTEGER, b BLOB)")
		for i := 0; i < 30; i++ {
			n.write(fmt.Sprintf("INSERT INTO t (x, b) VALUES (%d, randomblob(2000))", i))
		}
		if err := n.db.CheckpointAll(); err != nil {
			t.Fatal(err)
		}
		// Changes all over the file: every row's x, new pages, freed ones.
		n.write("UPDATE t SET x = x + 1")
		// A snapshot view's passive checkpoint copies the WAL into the
		// file; the next write restarts the WAL.
		if _, err := n.db.OpenView(); err != nil {
			t.Fatal(err)
		}
		n.db.CloseView()
		n.write("DELETE FROM t WHERE id % 3 = 0")
		for i := 0; i < 10; i++ {
			n.write(fmt.Sprintf("INSERT INTO t (x, b) VALUES (%d, randomblob(3000))", 100+i))
		}
		n.write("UPDATE t SET x = x * 2 WHERE id % 2 = 0")
		want := n.state()
		disk.CrashAtFile("sqlite-", at)
		_ = n.db.CheckpointAll()
		crashed := disk.Crashed() || disk.Unsynced() != ""
		n.db.Close()
		disk.ClearFaults()
		disk.Crash()
		n.open()
		if n.db.Redone() > 0 {
			redone++
		}
		n.replay()
		if got := n.state(); got != want {
			t.Fatalf("crash at the checkpoint's write %d: state %s after the restart, want %s", at, got, want)
		}
		n.db.Close()
		if !crashed {
			return at - 1, redone
		}
	}
}

// crashNode is a statement-mode reviewNode (its armFS unarmed) that
// replays its whole log after a restart.
type crashNode struct {
	reviewNode
}

func (n *crashNode) replay() {
	n.t.Helper()
	for _, e := range n.log {
		if _, err := n.db.Apply(e); err != nil {
			n.t.Fatalf("replaying %d: %v", e.Index, err)
		}
		n.db.AppliedTo(e.Index)
	}
	if err := n.db.FinishReplay(); err != nil {
		n.t.Fatal(err)
	}
}

// state is the rows' digest and the integrity check's answer.
func (n *crashNode) state() string {
	n.t.Helper()
	r, err := n.db.Conn().Query("SELECT count(*), total(x), total(length(b)), (SELECT group_concat(integrity_check) FROM pragma_integrity_check) FROM t")
	if err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprint(r[0])
}
