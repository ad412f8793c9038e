package jepsen

import (
	"math"
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
