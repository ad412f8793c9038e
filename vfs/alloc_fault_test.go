package vfs

import (
	"errors"
	"fmt"
	"testing"
)

// allocFaultCase is a write transaction to fail at each of its allocations.
type allocFaultCase struct {
	name     string
	pageSize int
	// setup runs (and is replicated) before the write; pragmas are the
	// writer's connection settings.
	setup, pragmas []string
	// restart checkpoints every frame before the write, so the write
	// restarts the WAL.
	restart bool
	write   string
}

var allocFaultCases = []allocFaultCase{{
	name:  "multi-page",
	write: "INSERT INTO t (v) SELECT randomblob(3000) FROM seq WHERE n <= 20",
}, {
	// The transaction spills frames to the WAL long before its commit.
	name:    "spill",
	pragmas: []string{"PRAGMA cache_size=10"},
	write:   "BEGIN; INSERT INTO t (v) SELECT randomblob(1000) FROM seq WHERE n <= 2000; COMMIT",
}, {
	// More than 4062 frames, all written at commit (no spill): the index
	// region for the last ones is mapped after the commit frame is written.
	name:     "index region",
	pageSize: 512,
	pragmas:  []string{"PRAGMA cache_size=-100000"},
	write:    "INSERT INTO t (v) SELECT randomblob(400) FROM seq WHERE n <= 5000",
}, {
	name:    "WAL restart",
	restart: true,
	write:   "INSERT INTO t (v) SELECT randomblob(3000) FROM seq WHERE n <= 20",
}}

// allocFaultFixture is a leader (writer w, reader r) and a follower (fc),
// in step after the case's setup.
type allocFaultFixture struct {
	lv, fv   *VFS
	w, r, fc *Conn
}

func newAllocFaultFixture(t *testing.T, c allocFaultCase) *allocFaultFixture {
	t.Helper()
	pageSize := c.pageSize
	if pageSize == 0 {
		pageSize = 4096
	}
	x := &allocFaultFixture{lv: newVFS(t), fv: newVFS(t)}
	x.w, x.r = open(t, x.lv, "db", pageSize), open(t, x.lv, "db", pageSize)
	x.fc = open(t, x.fv, "db", pageSize)
	replicateWrite(t, x.lv, x.fv, x.w, "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
	replicateWrite(t, x.lv, x.fv, x.w, "CREATE TABLE seq (n INTEGER PRIMARY KEY)")
	replicateWrite(t, x.lv, x.fv, x.w, "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 5000) "+
		"INSERT INTO seq SELECT n FROM s")
	replicateWrite(t, x.lv, x.fv, x.w, "INSERT INTO t (v) VALUES (x'00')")
	for _, s := range c.setup {
		replicateWrite(t, x.lv, x.fv, x.w, s)
	}
	for _, p := range c.pragmas {
		x.w.trust(true) // the node's own setting: clients may not change it
		exec(t, x.w, p)
		x.w.trust(false)
	}
	if c.restart {
		x.w.trust(true)
		exec(t, x.w, "PRAGMA wal_checkpoint(PASSIVE)")
		x.w.trust(false)
	}
	return x
}

// runWrite runs the case's write with the nth allocation failing (none if
// n is 0) and returns how many allocations it made up to the failure (all
// of them if none failed) and its error.
func (x *allocFaultFixture) runWrite(c allocFaultCase, n int64) (int64, error) {
	const unarmed = 1 << 40
	arm := n
	if arm == 0 {
		arm = unarmed
	}
	failAllocAfter(arm)
	err := x.w.Exec(c.write)
	left := allocFaultCountdown()
	failAllocAfter(0)
	if n == 0 {
		return unarmed - left, err
	}
	return n - left, err
}

const allocFaultDigest = "SELECT count(*), total(k), total(length(v)) FROM t"

// TestAllocationFailureFailsTheWrite fails, for each case, every
// allocation the VFS makes during the write in turn (the first run counts
// them), and checks the outcome is one of two: the write fails, leaving
// nothing pending, nothing visible to either connection, and the next write
// captured and replicated normally; or it succeeds and is captured whole
// (the same frames as without a failure), invisible until applied.
// Replicating to a follower that never saw a failed write and comparing the
// leader's rows with it checks no trace of the failed write is visible.
func TestAllocationFailureFailsTheWrite(t *testing.T) {
	for _, c := range allocFaultCases {
		t.Run(c.name, func(t *testing.T) {
			var allocs int64
			var frames int
			t.Run("count", func(t *testing.T) {
				x := newAllocFaultFixture(t, c)
				n, err := x.runWrite(c, 0)
				if err != nil {
					t.Fatalf("write without a fault: %v", err)
				}
				f, err := x.lv.Poll("db")
				if err != nil {
					t.Fatalf("write without a fault not captured: %v", err)
				}
				allocs, frames = n, len(f.Pages)
			})
			if allocs == 0 {
				t.Fatal("the write made no allocation to fail")
			}
			t.Logf("%d allocations, %d frames", allocs, frames)
			for n := int64(1); n <= allocs; n++ {
				t.Run(fmt.Sprintf("alloc%d", n), func(t *testing.T) {
					x := newAllocFaultFixture(t, c)
					before := query(t, x.r, allocFaultDigest)
					made, err := x.runWrite(c, n)
					if made != n {
						t.Fatalf("allocation %d of %d never happened (%d made): the write is not deterministic", n, allocs, made)
					}
					if err != nil {
						x.checkFailed(t, err, before)
					} else {
						x.checkCaptured(t, frames, before)
					}
					x.checkNextWrites(t)
				})
			}
		})
	}
}

// checkFailed checks a write that failed left no trace on the leader.
func (x *allocFaultFixture) checkFailed(t *testing.T, err error, before [][]any) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || (e.Code&0xff != 7 && e.Code&0xff != 10) {
		t.Fatalf("write failed with %v, want SQLITE_NOMEM or SQLITE_IOERR", err)
	}
	if !x.w.Autocommit() {
		// A statement failed inside BEGIN ... COMMIT; the transaction
		// is still open. The node rolls it back.
		exec(t, x.w, "ROLLBACK")
	}
	if x.lv.Pending("db") {
		t.Fatalf("a failed write (%v) left a pending transaction", err)
	}
	if _, perr := x.lv.Poll("db"); perr != ErrNoPending {
		t.Fatalf("poll after a failed write: %v", perr)
	}
	for name, c := range map[string]*Conn{"reader": x.r, "writer": x.w} {
		if got := query(t, c, allocFaultDigest); fmt.Sprint(got) != fmt.Sprint(before) {
			t.Fatalf("%s sees %v after a failed write (%v), want %v", name, got, err, before)
		}
	}
}

// checkNextWrites replicates a write each way, the follower's first: the
// leader's WAL index is then rebuilt from its WAL, so frames a failed
// write left there would be read as committed.
func (x *allocFaultFixture) checkNextWrites(t *testing.T) {
	t.Helper()
	replicateWrite(t, x.fv, x.lv, x.fc, "INSERT INTO t (v) VALUES (x'fe')")
	sameRows(t, x.r, x.fc, "SELECT k, v FROM t ORDER BY k")
	replicateWrite(t, x.lv, x.fv, x.w, "INSERT INTO t (v) VALUES (x'ff')")
	sameRows(t, x.w, x.fc, "SELECT k, v FROM t ORDER BY k")
	for name, c := range map[string]*Conn{"leader": x.w, "follower": x.fc} {
		if rows := query(t, c, "PRAGMA integrity_check"); rows[0][0] != "ok" {
			t.Fatalf("%s integrity: %v", name, rows)
		}
	}
}

// checkCaptured checks a write that succeeded is pending with all its
// frames, hidden until applied, and replicates.
func (x *allocFaultFixture) checkCaptured(t *testing.T, frames int, before [][]any) {
	t.Helper()
	if !x.lv.Pending("db") {
		t.Fatal("the write succeeded without being captured: it is visible and will never be replicated")
	}
	f, err := x.lv.Poll("db")
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Pages) != frames {
		t.Fatalf("captured %d frames, want %d", len(f.Pages), frames)
	}
	if got := query(t, x.r, allocFaultDigest); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Fatalf("reader sees %v of a pending write, want %v", got, before)
	}
	if err := x.lv.Apply("db"); err != nil {
		t.Fatal(err)
	}
	if err := x.fv.ApplyFrames("db", f); err != nil {
		t.Fatal(err)
	}
	sameRows(t, x.r, x.fc, allocFaultDigest)
}

// TestAllocationFailureInApplyFrames fails, in turn, each allocation a
// follower makes to append replicated frames: the call fails leaving the
// WAL as it was (a failure part way once left frames behind), and applying
// the frames again brings the follower level with the leader.
func TestAllocationFailureInApplyFrames(t *testing.T) {
	c := allocFaultCases[0]
	setup := func(t *testing.T) (*allocFaultFixture, *Frames) {
		x := newAllocFaultFixture(t, c)
		exec(t, x.w, c.write)
		return x, commit(t, x.lv, "db")
	}
	var allocs int64
	t.Run("count", func(t *testing.T) {
		x, f := setup(t)
		failAllocAfter(1 << 40)
		err := x.fv.ApplyFrames("db", f)
		allocs = 1<<40 - allocFaultCountdown()
		failAllocAfter(0)
		if err != nil {
			t.Fatal(err)
		}
	})
	if allocs == 0 {
		t.Fatal("applying frames made no allocation to fail")
	}
	for n := int64(1); n <= allocs; n++ {
		t.Run(fmt.Sprintf("alloc%d", n), func(t *testing.T) {
			x, f := setup(t)
			size := x.fv.WALSize("db")
			failAllocAfter(n)
			err := x.fv.ApplyFrames("db", f)
			failAllocAfter(0)
			if err != nil {
				if got := x.fv.WALSize("db"); got != size {
					t.Fatalf("failed apply (%v) changed the WAL from %d to %d bytes", err, size, got)
				}
				if err := x.fv.ApplyFrames("db", f); err != nil {
					t.Fatal(err)
				}
			}
			sameRows(t, x.r, x.fc, "SELECT k, v FROM t ORDER BY k")
			x.checkNextWrites(t)
		})
	}
}
