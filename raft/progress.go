package raft

import "fmt"

// progressState is the leader's flow-control state for one follower.
type progressState uint8

const (
	// probeState: the leader does not know where the follower's log matches;
	// it sends one append at a time and waits for the answer (or a
	// heartbeat response) before sending the next.
	probeState progressState = iota + 1
	// replicateState: the follower's log is known to match up to match; the
	// leader streams appends optimistically, up to the in-flight window.
	replicateState
	// snapshotState: the follower needs entries the leader has compacted;
	// the leader sends a snapshot in chunks.
	snapshotState
)

func (s progressState) String() string {
	switch s {
	case probeState:
		return "probe"
	case replicateState:
		return "replicate"
	case snapshotState:
		return "snapshot"
	}
	return "?"
}

// progress is what the leader knows of one follower's log.
type progress struct {
	match, next uint64
	state       progressState
	// probeSent pauses a probing follower until it answers or a heartbeat
	// interval passes.
	probeSent bool
	// inflight holds the last index of each append sent in replicate state
	// and not yet acknowledged, oldest first; bounded by maxInflight.
	inflight []uint64
	// recentActive is set whenever the follower is heard from; check-quorum
	// clears it every election timeout.
	recentActive bool
	// wasActive is recentActive as of the last check-quorum round, so
	// "heard from within about an election timeout" survives the clearing.
	wasActive bool
	// ackSeq is the latest heartbeat round the follower acknowledged.
	ackSeq uint64

	// Snapshot transfer (snapshotState).
	snap        SnapshotMeta
	snapOffset  uint64 // next byte to send
	snapAcked   uint64 // bytes the follower confirmed
	snapIdle    int    // ticks since the last chunk was acknowledged
	snapDone    bool   // the last chunk was sent
	snapStarted bool
	// snapSeq numbers the chunks sent to this replica (Message.Context,
	// echoed by its responses), never reset while this progress lives;
	// a refusal of a chunk numbered up to snapRewindSeq (sent before the
	// transfer last went back or started) is ignored: going back resent
	// that chunk.
	snapSeq, snapRewindSeq uint64
}

func (p *progress) String() string {
	return fmt.Sprintf("match=%d next=%d %s inflight=%d", p.match, p.next, p.state, len(p.inflight))
}

func (p *progress) becomeProbe() {
	if p.state == snapshotState {
		// Resume right after the snapshot the follower now holds (or
		// from where we were if it never arrived).
		p.next = max(p.match, p.snap.Index) + 1
	} else {
		p.next = p.match + 1
	}
	p.state = probeState
	p.probeSent = false
	p.inflight = p.inflight[:0]
	p.snap = SnapshotMeta{}
}

func (p *progress) becomeReplicate() {
	p.state = replicateState
	p.next = p.match + 1
	p.probeSent = false
	p.inflight = p.inflight[:0]
}

func (p *progress) becomeSnapshot(meta SnapshotMeta) {
	p.state = snapshotState
	p.snap = meta
	p.snapOffset = 0
	p.snapAcked = 0
	p.snapIdle = 0
	p.snapDone = false
	p.snapStarted = false
	p.snapRewindSeq = p.snapSeq
	p.inflight = p.inflight[:0]
}

// maybeUpdate records that the follower's log matches up to n. It returns
// false if n is old news.
func (p *progress) maybeUpdate(n uint64) bool {
	updated := false
	if n > p.match {
		p.match = n
		updated = true
		p.probeSent = false
	}
	p.next = max(p.next, n+1)
	// Free in-flight slots up to n.
	i := 0
	for i < len(p.inflight) && p.inflight[i] <= n {
		i++
	}
	p.inflight = p.inflight[i:]
	return updated
}

// maybeDecrTo handles a rejection of the append whose previous index was
// rejected, with the follower's hint. It returns false if the rejection is
// stale.
func (p *progress) maybeDecrTo(rejected, hint uint64) bool {
	if p.state == replicateState {
		if rejected <= p.match {
			return false
		}
		p.next = max(min(rejected, hint+1), p.match+1)
		return true
	}
	if p.next-1 != rejected {
		return false
	}
	p.next = max(min(rejected, hint+1), 1)
	p.probeSent = false
	return true
}

// isPaused reports whether the leader must not send an append now.
func (p *progress) isPaused(maxInflight int) bool {
	switch p.state {
	case probeState:
		return p.probeSent
	case replicateState:
		return len(p.inflight) >= maxInflight
	default:
		return true
	}
}

// sentEntries updates the progress after an append carrying entries up to
// last was sent.
func (p *progress) sentEntries(last uint64, n int) {
	switch p.state {
	case replicateState:
		if n > 0 {
			p.next = last + 1
			p.inflight = append(p.inflight, last)
		}
	case probeState:
		p.probeSent = true
	}
}
