package raft

import "testing"

// BenchmarkCommit measures proposals committed per second through a 3-node
// in-memory harness with synchronous persistence, one proposal per round
// trip (no batching) and 64 per round trip (batched).
func BenchmarkCommit(b *testing.B) {
	for _, batch := range []int{1, 64} {
		b.Run(map[int]string{1: "single", 64: "batch64"}[batch], func(b *testing.B) {
			h := newHarness(1, nil)
			h.bootstrap(1, 2, 3)
			h.campaign(1)
			r := h.nodes[1].raft
			data := make([]byte, 100)
			b.ResetTimer()
			for i := 0; i < b.N; i += batch {
				for j := 0; j < batch; j++ {
					if _, _, err := r.Propose(data); err != nil {
						b.Fatal(err)
					}
				}
				h.stabilize()
				// Keep memory flat: compact what every node applied.
				if i%4096 == 0 {
					for _, id := range h.ids {
						n := h.nodes[id]
						n.applied = n.applied[:0]
					}
					clear(h.applied)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}
