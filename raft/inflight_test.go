package raft

import "testing"

// TestInflightWindow checks MaxInflightMsgs: a leader streaming to a follower
// that never answers sends exactly MaxInflightMsgs appends and then nothing
// more, however many entries commit through the other follower; a heartbeat
// response frees one slot (one more append), an append response frees the
// slots it acknowledges.
func TestInflightWindow(t *testing.T) {
	const window = 3
	// One 60-byte entry per append: MaxMsgBytes holds one, not two.
	h := newHarness(1, func(c *Config) { c.MaxInflightMsgs = window; c.MaxMsgBytes = 100 })
	h.bootstrap(1, 2, 3)
	h.campaign(1)
	l := h.nodes[1].raft
	pr := l.prs[3]
	if l.state != StateLeader || pr.state != replicateState {
		t.Fatalf("setup: leader state %v, follower 3 %v\n%s", l.state, pr, h)
	}
	// Node 3 hears nothing and says nothing; node 2 answers, so entries
	// commit and the leader keeps broadcasting.
	appendsTo3 := 0
	drain := func() {
		for moved := true; moved; {
			moved = false
			for _, id := range h.ids {
				if h.process(h.nodes[id]) {
					moved = true
				}
			}
			msgs := h.queue
			h.queue = nil
			for _, m := range msgs {
				if m.To == 3 {
					if m.Type == MsgApp && len(m.Entries) > 0 {
						appendsTo3++
					}
					continue
				}
				moved = true
				h.queue = append(h.queue, m)
				h.deliverOne(len(h.queue) - 1)
			}
		}
	}
	const proposals = 10
	for i := 0; i < proposals; i++ {
		if _, _, err := l.Propose(make([]byte, 60)); err != nil {
			t.Fatal(err)
		}
		drain()
	}
	if appendsTo3 != window || len(pr.inflight) != window {
		t.Fatalf("after %d proposals: %d appends to the silent follower, %d in flight; want %d (%v)",
			proposals, appendsTo3, len(pr.inflight), window, pr)
	}
	if st := l.Status(); st.Commit != st.LastIndex {
		t.Fatalf("the answering follower did not keep committing: %+v", st)
	}
	// A heartbeat response frees one slot: exactly one more append.
	must(l.Step(Message{Type: MsgHeartbeatResp, From: 3, To: 1, Term: l.term}))
	drain()
	if appendsTo3 != window+1 || len(pr.inflight) != window {
		t.Fatalf("after a heartbeat response: %d appends, %d in flight; want %d, %d (%v)",
			appendsTo3, len(pr.inflight), window+1, window, pr)
	}
	// Acknowledging the two oldest in-flight appends frees two slots.
	must(l.Step(Message{Type: MsgAppResp, From: 3, To: 1, Term: l.term, Index: pr.inflight[1]}))
	drain()
	if appendsTo3 != window+3 || len(pr.inflight) != window {
		t.Fatalf("after acknowledging two appends: %d appends, %d in flight; want %d, %d (%v)",
			appendsTo3, len(pr.inflight), window+3, window, pr)
	}
}
