package fsm_test

import (
	"fmt"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/faultfs"
)

// BenchmarkApplyFrames10MB: a follower applying one entry of 2,500 pages
// (the large workload's 10,000-row INSERT), its WAL checkpointed between
// iterations (not timed).
func BenchmarkApplyFrames10MB(b *testing.B) {
	leader := &fileNode{t: b, disk: faultfs.NewDisk(7)}
	leader.open()
	defer leader.db.Close()
	leader.write("CREATE TABLE t(b)")
	leader.write("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 10000) INSERT INTO t SELECT randomblob(1000) FROM n")
	db, err := fsm.OpenFiles(faultfs.NewDisk(8), fmt.Sprintf("bench-%d", vfsSeq.Add(1)), 1, "db", 4096, fsm.ModeFrames)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Apply(leader.log[0]); err != nil {
		b.Fatal(err)
	}
	e := leader.log[1]
	b.SetBytes(int64(len(e.Data)))
	for i := 0; b.Loop(); i++ {
		e.Index = uint64(i + 2)
		if _, err := db.Apply(e); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		db.AppliedTo(e.Index)
		if err := db.CheckpointAll(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
