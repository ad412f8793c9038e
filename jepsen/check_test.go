package jepsen

import (
	"math"
	"strings"
	"testing"

	"github.com/anishathalye/porcupine"
)

// TestDropUnobservedUnknownWrites checks the history reduction keeps what
// decides linearizability: an unknown write whose value was read stays (a
// read of it is legal only through it), one never read goes, and a
// violation is still found after the reduction.
func TestDropUnobservedUnknownWrites(t *testing.T) {
	w := func(c int, v int64, call, ret int64, unknown bool) porcupine.Operation {
		return porcupine.Operation{ClientId: c, Input: regInput{true, 1, v}, Output: regOutput{unknown: unknown}, Call: call, Return: ret}
	}
	r := func(c int, v int64, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: c, Input: regInput{false, 1, 0}, Output: regOutput{value: v}, Call: call, Return: ret}
	}
	h := []porcupine.Operation{
		w(1, 10, 0, 1, false),
		w(2, 20, 2, math.MaxInt64, true), // read later: kept
		w(3, 30, 3, math.MaxInt64, true), // never read: dropped
		r(4, 20, 5, 6),
		w(1, 40, 7, 8, false),
		r(4, 40, 9, 10),
	}
	kept := dropUnobservedUnknownWrites(h)
	if len(kept) != 5 {
		t.Fatalf("kept %d operations, want 5", len(kept))
	}
	for _, op := range kept {
		if op.Input.(regInput).value == 30 {
			t.Fatal("the unread unknown write was kept")
		}
	}
	if res := porcupine.CheckOperations(registerModel, kept); !res {
		t.Fatal("reduced legal history judged not linearizable")
	}
	// A stale read after the acknowledged write of 40 stays a violation.
	bad := append(append([]porcupine.Operation(nil), h...), r(5, 20, 11, 12))
	if porcupine.CheckOperations(registerModel, dropUnobservedUnknownWrites(bad)) {
		t.Fatal("a stale read passed after the reduction")
	}
}

// TestReadCountsCheck checks the read-spread check: counts summed over
// restarts, a node that served nothing flagged, no follower serving reads
// flagged, and a single follower without reads only noted.
func TestReadCountsCheck(t *testing.T) {
	sample := func(fwd, lease, round, leader float64) map[string]float64 {
		return map[string]float64{
			`dqlite_reads_total{path="forwarded"}`: fwd, `dqlite_reads_total{path="lease"}`: lease,
			`dqlite_reads_total{path="round"}`: round, `dqlite_role{role="voter"}`: 1,
			"dqlite_is_leader": leader, "dqlite_leader_id": 1,
		}
	}
	rc := newReadCounts(4)
	for i := 0; i < minFollowerSamples; i++ {
		rc.observe(0, 1, sample(float64(10*i), 0, 0, 0)) // a follower serving reads
		rc.observe(1, 1, sample(0, float64(i), 0, 1))    // the leader throughout
		rc.observe(2, 1, sample(0, 0, 0, 0))             // a follower never read from
		rc.observe(3, 1, sample(0, 5, 0, 0))             // led once, then followed without reads
	}
	// Node 0 restarts: its counters start again.
	rc.observe(0, 2, sample(3, 0, 0, 0))
	reads, bad, notes := rc.check()
	if got := reads["n1"]; got != [3]int64{10*(minFollowerSamples-1) + 3, 0, 0} {
		t.Errorf("n1 counts %v: not summed over the restart", got)
	}
	if len(bad) != 1 || !strings.HasPrefix(bad[0], "n3 served no reads") {
		t.Errorf("flagged %q, want n3 (no reads)", bad)
	}
	if len(notes) != 1 || !strings.HasPrefix(notes[0], "n4 followed") {
		t.Errorf("noted %q, want n4 (no read as a follower)", notes)
	}
	// Reads at the leader level only: every node led once, none forwarded.
	rc = newReadCounts(3)
	for i := 0; i < minFollowerSamples; i++ {
		for n := 0; n < 3; n++ {
			rc.observe(n, 1, sample(0, 7, 1, 0))
		}
	}
	if _, bad, _ := rc.check(); len(bad) != 1 || !strings.HasPrefix(bad[0], "no node served a read as a follower") {
		t.Errorf("flagged %q, want no read as a follower", bad)
	}
	// Without the read counters (an older binary) a sample is ignored.
	rc = newReadCounts(1)
	rc.observe(0, 1, map[string]float64{"dqlite_is_leader": 0})
	if _, bad, _ := rc.check(); len(bad) != 0 {
		t.Errorf("flagged %q without samples", bad)
	}
}
