package vfs

import (
	"reflect"
	"testing"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

// captureOfGrowingTx replicates a table's creation and a transaction that
// writes several pages and grows the database, and returns the latter's
// capture, the leader's page count after it, and whether the follower
// reads the same rows as the leader.
func captureOfGrowingTx(t *testing.T) (f *Frames, pages int64, same bool) {
	lv, fv := newVFS(t), newVFS(t)
	lc, fc := open(t, lv, "db", 4096), open(t, fv, "db", 4096)
	replicate(t, lv, fv, lc, "CREATE TABLE t (k INTEGER PRIMARY KEY, v)")
	exec(t, lc, "INSERT INTO t VALUES (1, randomblob(3000)), (2, randomblob(3000)), (3, randomblob(3000))")
	f = commit(t, lv, "db")
	if err := fv.ApplyFrames("db", f); err != nil {
		t.Fatalf("apply frames: %v", err)
	}
	pages = query(t, lc, "PRAGMA page_count")[0][0].(int64)
	want := query(t, lc, "SELECT k, v FROM t ORDER BY k")
	got, err := fc.Query("SELECT k, v FROM t ORDER BY k")
	return f, pages, err == nil && reflect.DeepEqual(got, want)
}

// TestCaptureHoldsTheWholeTransaction checks the capture of a transaction
// holds every page it wrote and the database size of its commit frame, so
// a follower applying it reads what the leader reads. With
// mutant.VFSCaptureDropsPage a page is missing from it, with
// mutant.VFSCaptureNoSize its size is lost: the follower differs.
func TestCaptureHoldsTheWholeTransaction(t *testing.T) {
	f, pages, same := captureOfGrowingTx(t)
	if len(f.Pages) < 4 || int64(f.DBSize) != pages || !same {
		t.Fatalf("capture of %d pages, size %d (leader %d pages), follower same: %v", len(f.Pages), f.DBSize, pages, same)
	}
	t.Run("drops-page", func(t *testing.T) {
		mutant.Use(t, mutant.VFSCaptureDropsPage)
		g, _, same := captureOfGrowingTx(t)
		if len(g.Pages) != len(f.Pages)-1 || same {
			t.Fatalf("%s: capture of %d pages (%d without the bug), follower same: %v",
				mutant.VFSCaptureDropsPage, len(g.Pages), len(f.Pages), same)
		}
	})
	t.Run("no-size", func(t *testing.T) {
		mutant.Use(t, mutant.VFSCaptureNoSize)
		g, pages, same := captureOfGrowingTx(t)
		if int64(g.DBSize) == pages || same {
			t.Fatalf("%s: capture size %d (leader %d pages), follower same: %v", mutant.VFSCaptureNoSize, g.DBSize, pages, same)
		}
	})
}
