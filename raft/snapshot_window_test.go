package raft

import "testing"

// Tests of Config.SnapshotChunksInFlight: a leader keeps that many chunks of
// a streamed snapshot unacknowledged, no more, and recovers a lost one
// without resending the window once per refusal.

// snapsTo counts the queued snapshot chunks to node to.
func snapsTo(h *harness, to NodeID) int {
	n := 0
	for _, m := range h.queue {
		if m.Type == MsgSnap && m.To == to {
			n++
		}
	}
	return n
}

// startTransfer heals node 3's links and delivers until the leader sends
// it snapshot chunks, without delivering any of them.
func startTransfer(t *testing.T, sc *streamCluster) {
	t.Helper()
	h := sc.h
	h.heal()
	for i := 0; i < 50 && snapsTo(h, 3) == 0; i++ {
		h.tick(1, 1)
		for len(h.queue) > 0 && snapsTo(h, 3) == 0 {
			m := h.queue[0]
			h.queue = h.queue[1:]
			sc.step(m)
			for _, id := range h.ids {
				h.process(h.nodes[id])
			}
		}
	}
	if snapsTo(h, 3) == 0 {
		t.Fatalf("no snapshot chunks sent to node 3\n%s", h)
	}
}

// TestSnapshotWindow: the leader sends SnapshotChunksInFlight chunks before
// any acknowledgement, and one more per chunk acknowledged.
func TestSnapshotWindow(t *testing.T) {
	const window = 3
	sc := newStreamCluster(t, func(c *Config) { c.SnapshotChunksInFlight = window })
	idx := sc.behind(t)
	startTransfer(t, sc)
	h := sc.h
	if n := snapsTo(h, 3); n != window {
		t.Fatalf("%d chunks sent before any acknowledgement, want %d", n, window)
	}
	sent := 0
	for i := 0; i < 1000 && h.nodes[3].raft.incoming != nil || sent == 0; i++ {
		if len(h.queue) == 0 {
			break
		}
		m := h.queue[0]
		h.queue = h.queue[1:]
		if m.Type == MsgSnap {
			sent++
		}
		sc.step(m)
		for _, id := range h.ids {
			h.process(h.nodes[id])
		}
		if pr := h.nodes[1].raft.prs[3]; pr.state == snapshotState && pr.snapOffset-pr.snapAcked > window*streamChunk {
			t.Fatalf("%d bytes unacknowledged, window %d chunks of %d", pr.snapOffset-pr.snapAcked, window, streamChunk)
		}
		if n := snapsTo(h, 3); n > window {
			t.Fatalf("%d chunks in flight, window %d", n, window)
		}
	}
	if !sc.catchUp("after") {
		t.Fatalf("node 3 did not catch up\n%s", h)
	}
	sc.checkClean(t)
	sc.checkInstalled(t, idx)
	chunks := (streamSize + streamChunk - 1) / streamChunk
	if sink := sc.sinks[3]; sink.writes != chunks || sink.attempts != 1 {
		t.Errorf("sink given %d chunks in %d attempts, want %d in 1", sink.writes, sink.attempts, chunks)
	}
}

// TestSnapshotWindowLostChunk: a chunk lost in the middle of the window is
// resent with the ones after it once, not once per refusal of the chunks
// that followed it; the sink gets every chunk once, in order.
func TestSnapshotWindowLostChunk(t *testing.T) {
	const window = 4
	for _, lose := range []int{0, 1, 5, 15} { // the first, one inside, one in a later window, the last
		sc := newStreamCluster(t, func(c *Config) { c.SnapshotChunksInFlight = window })
		idx := sc.behind(t)
		startTransfer(t, sc)
		h := sc.h
		chunks := (streamSize + streamChunk - 1) / streamChunk
		nth, sent, lost := 0, 0, false
		for i := 0; i < 10000 && len(h.queue) > 0; i++ {
			m := h.queue[0]
			h.queue = h.queue[1:]
			if m.Type == MsgSnap && m.To == 3 {
				sent++
				if nth == lose && !lost {
					lost = true
					continue
				}
				nth++
			}
			sc.step(m)
			for _, id := range h.ids {
				h.process(h.nodes[id])
			}
		}
		if !lost {
			t.Fatalf("lose %d: chunk never sent", lose)
		}
		if !sc.catchUp("after") {
			t.Fatalf("lose %d: node 3 did not catch up\n%s", lose, h)
		}
		sc.checkClean(t)
		sc.checkInstalled(t, idx)
		sink := sc.sinks[3]
		if sink.writes != chunks || sink.attempts != 1 {
			t.Errorf("lose %d: sink given %d chunks in %d attempts, want %d in 1", lose, sink.writes, sink.attempts, chunks)
		}
		// The lost chunk and those in flight behind it go again: at
		// most a window more than the chunks.
		if sent > chunks+window {
			t.Errorf("lose %d: %d chunks sent for %d", lose, sent, chunks)
		}
	}
}
