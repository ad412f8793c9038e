package raft

import (
	"errors"
	"fmt"
	"slices"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

// Leases and reads served without a quorum round.
//
// With a Clock (Config.Clock), time, not ticks, decides two things:
//
//   - The vote lease. A node that heard from a leader at time t (on its own
//     clock) neither grants a vote nor stands for election, except in a
//     transfer the leader asked for, before t + V, where V is ElectionTicks
//     ticks of TickNanos. A node that starts (or restarts: it may have
//     acknowledged a leader just before) does the same for V. A leader
//     refuses votes until its own read lease ends. Ticks may come late,
//     early or in bursts (a busy or paused process, a timer catching up):
//     they drive timeouts only, never the lease.
//
//   - The leader's read lease. Every heartbeat round the leader sends is
//     stamped with the time it was made (before it is sent). Once a quorum
//     of voters (the leader included) acknowledged a round sent at time s,
//     each of them heard from this leader after s and refuses the votes
//     that could elect another leader until at least s + V on its clock.
//     If every clock runs at a rate within MaxClockDrift (d) of true time,
//     no other leader can be elected before s + V(1-d)/(1+d) on the
//     leader's clock: the lease. Within it, with an entry of its term
//     committed, the leader's commit index is a linearizable read index,
//     without a round. A new leader waits V before its first lease (any
//     earlier leader's has ended by then), and a leader that asked for a
//     transfer serves no lease read for the rest of its term (the target's
//     election ignores vote leases).
//
// Clocks need not be synchronised: each node measures only its own
// intervals. The assumption is the bounded drift rate, and that the clock
// is monotonic and counts time while the process is stopped
// (CLOCK_MONOTONIC does; a suspended virtual machine may not).
//
// Reads served by any node. A follower or standby serves a linearizable read
// by asking the leader for a read index (MsgReadIndex, one for all the reads
// waiting on the node) and serving once it applied that index. The leader
// answers from its lease or after a heartbeat round.
//
// Freshness. A node also keeps the latest fact of the form "the state at
// index i includes every write committed before time t on my clock": a
// leader learns it from each round a quorum acknowledged (t = the round's
// time, i = its commit index then), a follower from each read index it got
// (t = when it asked). A fact stays true after leadership changes, so a
// bounded-staleness read (ReadStale) is served from local state while t is
// recent enough, whoever leads.

// DefaultMaxClockDrift is the drift rate bound used when the Config leaves
// it at zero: each node's clock runs within 10% of true time.
const DefaultMaxClockDrift = 0.1

// maxLeaseRounds bounds the heartbeat rounds a leader remembers while
// waiting for their acknowledgements (older ones are forgotten: a lease
// from them would be short anyway).
const maxLeaseRounds = 1024

// ErrNoClock is returned by ReadStale on a node configured without a Clock.
var ErrNoClock = errors.New("raft: bounded-staleness reads need a clock")

// ErrTooStale reports a bounded-staleness read this node could not serve
// from its own state (and no leader was known to refresh it).
var ErrTooStale = errors.New("raft: state older than the staleness bound")

// leaseRound is a heartbeat round: its sequence number (the heartbeats'
// Context), when it was made, and the commit index then (0 when no entry of
// the term was committed yet: then it says nothing about freshness).
type leaseRound struct {
	seq    uint64
	at     int64
	commit uint64
}

// forwardBatch is a follower's read index request in flight: the reads
// waiting on it, and when and to whom it was sent.
type forwardBatch struct {
	seq    uint64
	ctxs   []uint64
	sentAt int64
	ticks  int
	lead   NodeID
	term   uint64
}

// pendingRead is a read waiting for the first commit in the leader's term:
// a local one (from None) or a follower's (from, with its batch context).
type pendingRead struct {
	ctx  uint64
	from NodeID
}

// ReadStats counts how this node served read requests since it started.
type ReadStats struct {
	Lease     uint64 // leader reads served from the lease (no round)
	Rounds    uint64 // leader reads confirmed by a heartbeat round
	Forwarded uint64 // reads that asked the leader for a read index
	Stale     uint64 // bounded-staleness reads served from local state
	Answered  uint64 // read index requests of other nodes answered
}

// ReadStats returns the read counters.
func (r *Raft) ReadStats() ReadStats { return r.readStats }

func (r *Raft) hasClock() bool { return r.cfg.Clock != nil }

func (r *Raft) now() int64 {
	if r.cfg.Clock == nil {
		return 0
	}
	return r.cfg.Clock()
}

// voteLeaseNanos is V: how long a node refuses votes after hearing from a
// leader.
func (r *Raft) voteLeaseNanos() int64 { return int64(r.cfg.ElectionTicks) * r.cfg.TickNanos }

// leaseNanos is the leader's read lease, V(1-d)/(1+d), counted from the send
// time of the round a quorum acknowledged.
func (r *Raft) leaseNanos() int64 {
	d := r.cfg.MaxClockDrift
	v := r.voteLeaseNanos()
	if mutant.On(mutant.RaftLeaseTooLong) {
		return 2 * v
	}
	return int64(float64(v) * (1 - d) / (1 + d))
}

// inVoteLease reports whether this node must refuse a vote (and not
// campaign) that no transfer asked for. Without a clock: while it follows a
// leader it heard from within ElectionTicks ticks.
func (r *Raft) inVoteLease() bool {
	if !r.hasClock() || mutant.On(mutant.RaftLeaseFromTicks) {
		return r.lead != None && r.electionElapsed < r.cfg.ElectionTicks
	}
	return r.now() < r.voteLeaseUntil
}

// heardFromLeader extends the vote lease: a message from the leader of our
// term arrived.
func (r *Raft) heardFromLeader() {
	if r.hasClock() {
		r.voteLeaseUntil = max(r.voteLeaseUntil, r.now()+r.voteLeaseNanos())
	}
}

// newRound starts a heartbeat round and returns its sequence number.
func (r *Raft) newRound() uint64 {
	r.readSeq++
	if r.hasClock() {
		var commit uint64
		if r.committedInTerm() {
			commit = r.log.committed
		}
		if len(r.rounds) >= maxLeaseRounds {
			r.rounds = r.rounds[1:]
		}
		r.rounds = append(r.rounds, leaseRound{seq: r.readSeq, at: r.now(), commit: commit})
		r.updateLease()
	}
	return r.readSeq
}

// updateLease moves the lease to the latest round a quorum of voters
// acknowledged.
func (r *Raft) updateLease() {
	if len(r.rounds) == 0 {
		return
	}
	var buf [9]uint64
	acks := buf[:0]
	for _, id := range r.config().Voters() {
		switch pr := r.prs[id]; {
		case id == r.id:
			acks = append(acks, r.readSeq)
		case pr != nil:
			acks = append(acks, pr.ackSeq)
		default:
			acks = append(acks, 0)
		}
	}
	q := r.config().Quorum()
	if len(acks) < q {
		return
	}
	slices.Sort(acks)
	seq := acks[len(acks)-q]
	if seq == 0 {
		return
	}
	i, found := slices.BinarySearchFunc(r.rounds, seq, func(rd leaseRound, s uint64) int {
		switch {
		case rd.seq < s:
			return -1
		case rd.seq > s:
			return 1
		}
		return 0
	})
	if !found {
		return // forgotten, or from an earlier leadership
	}
	rd := r.rounds[i]
	r.rounds = r.rounds[i:]
	if rd.at <= r.leaseAt {
		return
	}
	r.leaseAt = rd.at
	r.voteLeaseUntil = max(r.voteLeaseUntil, rd.at+r.leaseNanos())
	if rd.commit > 0 {
		r.noteFresh(rd.at, rd.commit)
	}
}

// noteFresh records that the state at index includes every write committed
// before at.
func (r *Raft) noteFresh(at int64, index uint64) {
	if at > r.freshAt {
		r.freshAt, r.freshIndex = at, max(r.freshIndex, index)
	}
}

// LeaseValid reports whether this node is the leader and holds a read lease
// now: its commit index is a linearizable read index without a round.
func (r *Raft) LeaseValid() bool {
	if !r.hasClock() || r.cfg.NoLease || r.state != StateLeader || r.leadTransferee != None ||
		r.transferSent || !r.committedInTerm() || r.leaseAt == 0 {
		return false
	}
	now := r.now()
	return now < r.leaseAt+r.leaseNanos() && now >= r.leaderSince+r.voteLeaseNanos()
}

// ReadIndexAny is ReadIndex served by any node with a leader: a follower or
// standby asks the leader for the read index (batched with the other reads
// waiting on it). The answer comes as a ReadState, or a NoticeReadFailed
// when the leader refused, changed, or did not answer within ElectionTicks.
func (r *Raft) ReadIndexAny(ctx uint64) error {
	if r.state == StateLeader {
		return r.ReadIndex(ctx)
	}
	if r.lead == None || r.log.readErr != nil {
		return ErrNotLeader
	}
	n := len(r.forwardWaiting)
	if r.forward != nil {
		n += len(r.forward.ctxs)
	}
	if n >= r.cfg.MaxPendingReads {
		return fmt.Errorf("%w: %d reads pending", ErrTooManyPending, r.cfg.MaxPendingReads)
	}
	r.forwardWaiting = append(r.forwardWaiting, ctx)
	r.readStats.Forwarded++
	if r.forward == nil {
		r.sendForward()
	}
	return nil
}

// ReadStale is a read that accepts state older than maxAge nanoseconds (on
// this node's clock), but no older: it is served at once from local state
// when this node knows its state is fresh enough (see Freshness), and
// otherwise as ReadIndexAny. Without a known leader and fresh state it
// fails with ErrTooStale.
func (r *Raft) ReadStale(ctx uint64, maxAge int64) error {
	if !r.hasClock() {
		return ErrNoClock
	}
	now := r.now()
	if r.freshAt != 0 && now-r.freshAt <= maxAge {
		r.readStates = append(r.readStates, ReadState{Index: r.freshIndex, Context: ctx})
		r.readStats.Stale++
		if now-r.freshAt > maxAge/2 && r.state != StateLeader && r.forward == nil && r.lead != None {
			// Refresh ahead of need, so a steady stream of such reads
			// never waits for a round.
			r.sendForward()
		}
		return nil
	}
	if r.state == StateLeader || r.lead != None {
		return r.ReadIndexAny(ctx)
	}
	age := "never known"
	if r.freshAt != 0 {
		age = fmt.Sprintf("%dms old", (now-r.freshAt)/1e6)
	}
	return fmt.Errorf("%w: no leader known and this node's state is %s (bound %dms)", ErrTooStale, age, maxAge/1e6)
}

// sendForward sends the waiting reads' batch to the leader (also with none
// waiting: a freshness refresh).
func (r *Raft) sendForward() {
	r.forwardSeq++
	r.forward = &forwardBatch{seq: r.forwardSeq, ctxs: r.forwardWaiting, sentAt: r.now(), lead: r.lead, term: r.term}
	r.forwardWaiting = nil
	r.send(Message{Type: MsgReadIndex, To: r.lead, Context: r.forwardSeq})
}

// failForwarded fails the reads in flight to a leader and waiting to be
// sent (the leader changed, or this node's state did).
func (r *Raft) failForwarded(err error) {
	r.failBatch(err)
	for _, ctx := range r.forwardWaiting {
		r.notices = append(r.notices, Notice{Kind: NoticeReadFailed, Context: ctx, Err: err})
	}
	r.forwardWaiting = nil
}

// failBatch fails the reads of the batch in flight.
func (r *Raft) failBatch(err error) {
	if r.forward == nil {
		return
	}
	for _, ctx := range r.forward.ctxs {
		r.notices = append(r.notices, Notice{Kind: NoticeReadFailed, Context: ctx, Err: err})
	}
	r.forward = nil
}

// tickForward fails a batch the leader did not answer within ElectionTicks
// (the request or its answer was lost) and sends the waiting ones.
func (r *Raft) tickForward() {
	if r.forward == nil {
		return
	}
	r.forward.ticks++
	if r.forward.ticks < r.cfg.ElectionTicks {
		return
	}
	r.failBatch(fmt.Errorf("%w: the leader did not answer a read index request", ErrLeadershipLost))
	if len(r.forwardWaiting) > 0 {
		r.sendForward()
	}
}

// handleReadIndexRequest answers a follower's MsgReadIndex of our term.
func (r *Raft) handleReadIndexRequest(m Message) {
	reject := Message{Type: MsgReadIndexResp, To: m.From, Context: m.Context, Reject: true}
	pr := r.prs[m.From]
	if r.state != StateLeader || pr == nil {
		// Not a replica (removed, a spare): it would never apply the
		// index.
		r.send(reject)
		return
	}
	pr.recentActive = true
	r.readStats.Answered++
	if r.LeaseValid() {
		r.send(Message{Type: MsgReadIndexResp, To: m.From, Context: m.Context, Index: r.log.committed})
		return
	}
	if len(r.reads)+len(r.readsWaiting) >= r.cfg.MaxPendingReads {
		r.send(reject)
		return
	}
	if !r.committedInTerm() && !mutant.On(mutant.RaftReadBeforeTermCommit) {
		r.readsWaiting = append(r.readsWaiting, pendingRead{ctx: m.Context, from: m.From})
		return
	}
	r.startRead(m.Context, m.From)
}

// handleReadIndexResponse takes the leader's answer to our batch.
func (r *Raft) handleReadIndexResponse(m Message) {
	b := r.forward
	if b == nil || m.Context != b.seq || m.From != b.lead || m.Term != b.term {
		return // late, duplicated, or from an earlier leader
	}
	if m.Reject {
		r.failForwarded(fmt.Errorf("%w: the leader refused a read index request", ErrLeadershipLost))
		return
	}
	// The index is committed, and what we verified against this leader
	// matches its log: commit what both cover (as a heartbeat would).
	r.log.commitTo(min(m.Index, r.matched, r.log.lastIndex()))
	for _, ctx := range b.ctxs {
		r.readStates = append(r.readStates, ReadState{Index: m.Index, Context: ctx})
	}
	r.noteFresh(b.sentAt, m.Index)
	r.forward = nil
	if len(r.forwardWaiting) > 0 {
		r.sendForward()
	}
}
