package fsm_test

import (
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
)

// TestWorkTimedByPart: with a clock, the DB counts the time of each part
// of its work; a part inside another (the checkpoint a write makes first
// when the ticks' checkpoints were held back, and the record and sync
// inside that) counts for itself only, so the parts of one call add up to
// the time it took.
func TestWorkTimedByPart(t *testing.T) {
	n := newFileNode(t)
	n.db.SetCheckpointFrames(4)
	var clock int64
	n.db.SetClock(func() int64 { clock += 1000; return clock })
	n.write("CREATE TABLE t (b BLOB)")
	const insert = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 40) INSERT INTO t SELECT randomblob(3000) FROM s"
	// A write applied with no tick after it: its checkpoint is due, and
	// its WAL long enough that the next write makes it first.
	n.applyTo("", insert)
	if w := n.db.TakeWork(); w[fsm.WorkExecute] <= 0 || w[fsm.WorkApply] <= 0 || w[fsm.WorkCheckpoint] != 0 {
		t.Fatalf("a write and its apply counted as %v", w)
	}

	before := clock
	if _, _, errs := n.db.ExecuteBatch([]any{&fsm.BatchItem{SQL: insert}}); errs[0] != nil {
		t.Fatal(errs[0])
	}
	took := clock - before
	w := n.db.TakeWork()
	var sum int64
	for part, ns := range w {
		sum += ns
		t.Logf("%s: %d ns", fsm.Work(part), ns)
	}
	for _, part := range []fsm.Work{fsm.WorkExecute, fsm.WorkCheckpoint, fsm.WorkRecord} {
		if w[part] <= 0 {
			t.Errorf("%s: no time counted", part)
		}
	}
	if w[fsm.WorkApply] != 0 || w[fsm.WorkSnapshot] != 0 {
		t.Errorf("apply %d ns, snapshot %d ns: neither happened", w[fsm.WorkApply], w[fsm.WorkSnapshot])
	}
	// Each reading advances the clock by 1000: the last one, at the end of
	// the call, is 1000 before the clock after it.
	if sum != took-1000 {
		t.Errorf("the parts add up to %d ns; the call took %d", sum, took-1000)
	}
	if w := n.db.TakeWork(); w != [fsm.NumWork]int64{} {
		t.Errorf("counts not started again: %v", w)
	}
}
