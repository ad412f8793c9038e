package raft

import (
	"errors"
	"fmt"
	"slices"

	"github.com/dqlite-go/dqlite/internal/assert"
	"github.com/dqlite-go/dqlite/internal/mutant"
)

// Propose appends data as a new entry on the leader. It returns the entry's
// index and term: the entry is committed if and when an applied entry with
// that index carries that term.
func (r *Raft) Propose(data []byte) (index, term uint64, err error) {
	if err := r.checkPropose(uint64(len(data))); err != nil {
		return 0, 0, err
	}
	return r.appendProposal(Entry{Type: EntryNormal, Data: data})
}

func (r *Raft) checkPropose(size uint64) error {
	switch {
	case r.state != StateLeader:
		return ErrNotLeader
	case r.leadTransferee != None:
		return ErrTransferInProgress
	case size+entryOverheadBytes > r.cfg.MaxMsgBytes:
		return fmt.Errorf("%w: %d bytes, limit %d", ErrProposalTooLarge, size, r.cfg.MaxMsgBytes)
	case r.uncommitted+size > r.cfg.MaxUncommittedBytes:
		return fmt.Errorf("%w: %d bytes uncommitted, limit %d", ErrTooManyPending, r.uncommitted, r.cfg.MaxUncommittedBytes)
	}
	return nil
}

func (r *Raft) appendProposal(e Entry) (uint64, uint64, error) {
	e.Index, e.Term = r.log.lastIndex()+1, r.term
	r.appendEntries(e)
	size := e.size()
	r.proposed = append(r.proposed, proposedSize{index: e.Index, size: size})
	r.uncommitted += size
	r.needBcast = true
	return e.Index, e.Term, nil
}

// bcastAppend sends what each replica is missing (or an empty append
// carrying the commit index).
func (r *Raft) bcastAppend() {
	for _, id := range r.replicas {
		r.sendAppend(id, true)
	}
}

// sendAppend sends appends to one replica while its flow control allows and
// there is something to send. With sendIfEmpty it sends at least one (empty)
// append, to carry the commit index, when not paused.
func (r *Raft) sendAppend(to NodeID, sendIfEmpty bool) {
	pr := r.prs[to]
	for r.log.readErr == nil && !pr.isPaused(r.cfg.MaxInflightMsgs) {
		prevIndex := pr.next - 1
		assert.That(prevIndex <= r.log.lastIndex(), "next %d for %d beyond last index %d",
			pr.next, to, r.log.lastIndex())
		prevTerm, errT := r.log.term(prevIndex)
		ents, errE := r.log.slice(pr.next, r.log.lastIndex()+1, r.cfg.MaxMsgBytes)
		switch {
		case r.log.readErr != nil:
			return // reported through Update.StorageErr
		case errors.Is(errT, ErrCompacted) || errors.Is(errE, ErrCompacted):
			r.startSnapshot(to, pr)
			return
		case errT != nil || errE != nil:
			assert.Fail("reading log for %d at %d: %v %v", to, pr.next, errT, errE)
		}
		if len(ents) == 0 && !sendIfEmpty {
			return
		}
		r.send(Message{Type: MsgApp, To: to, Index: prevIndex, LogTerm: prevTerm,
			Entries: ents, Commit: r.log.committed})
		last := prevIndex + uint64(len(ents))
		pr.sentEntries(last, len(ents))
		if pr.state != replicateState || len(ents) == 0 || last >= r.log.lastIndex() {
			return
		}
		sendIfEmpty = false
	}
}

// bcastHeartbeat sends a heartbeat round: its acknowledgements confirm the
// reads started before it and extend the lease.
func (r *Raft) bcastHeartbeat() {
	r.bcastHeartbeatRound(r.hasClock())
}

// bcastHeartbeatRound sends heartbeats with a new round number (fresh) or
// the last one. Without a clock only reads need new rounds (no lease).
func (r *Raft) bcastHeartbeatRound(fresh bool) {
	seq := r.readSeq
	if fresh {
		seq = r.newRound()
	}
	for _, id := range r.replicas {
		r.send(r.heartbeat(id, seq))
	}
}

// heartbeat carries the commit index capped at what the follower is known
// to hold: the follower may commit up to it without verifying its log
// itself (it acknowledged those entries in this term, and only this leader
// writes to its log in this term).
func (r *Raft) heartbeat(to NodeID, readCtx uint64) Message {
	commit := min(r.prs[to].match, r.log.committed)
	if mutant.On(mutant.RaftCommitBeyondMatch) {
		commit = r.log.committed
	}
	return Message{Type: MsgHeartbeat, From: r.id, To: to, Term: r.term, Commit: commit, Context: readCtx}
}

func (r *Raft) handleLeaderResponse(m Message) {
	pr := r.prs[m.From]
	if pr == nil {
		return // removed meanwhile
	}
	pr.recentActive = true
	switch m.Type {
	case MsgAppResp:
		r.handleAppendResponse(m, pr)
	case MsgHeartbeatResp:
		pr.probeSent = false
		if pr.state == replicateState && len(pr.inflight) >= r.cfg.MaxInflightMsgs {
			// The window may be full of lost appends: free a slot so
			// the follower hears from us and rejects or acknowledges.
			pr.inflight = pr.inflight[1:]
		}
		if pr.state != snapshotState && pr.match < r.log.lastIndex() {
			// Send even if there is nothing new: an append whose
			// previous entry the follower lacks makes it reject, and
			// the rejection puts us back to probing.
			r.sendAppend(m.From, true)
		}
		if m.Context > pr.ackSeq {
			pr.ackSeq = m.Context
		}
		r.handleReadAck(m.From, m.Context)
		r.updateLease()
	case MsgSnapResp:
		r.handleSnapshotResponse(m, pr)
	}
}

func (r *Raft) handleAppendResponse(m Message, pr *progress) {
	if m.Reject {
		if pr.state == snapshotState {
			return
		}
		hint := m.RejectHint
		if m.LogTerm > 0 {
			// Skip every entry of ours whose term the follower's log at
			// the hint cannot match.
			hint, _ = r.log.findConflictByTerm(m.RejectHint, m.LogTerm)
		}
		if pr.maybeDecrTo(m.Index, hint) {
			if pr.state == replicateState {
				pr.becomeProbe()
			}
			r.sendAppend(m.From, true)
		}
		return
	}
	if !pr.maybeUpdate(m.Index) {
		return
	}
	switch {
	case pr.state == probeState:
		pr.becomeReplicate()
	case pr.state == snapshotState && pr.match >= pr.snap.Index:
		pr.becomeProbe()
		pr.becomeReplicate()
	}
	if r.maybeCommit() {
		r.needBcast = true
	} else {
		r.sendAppend(m.From, false)
	}
	if m.From == r.leadTransferee && pr.match == r.log.lastIndex() {
		r.sendTimeoutNow(m.From)
	}
	r.checkPromotionRound()
}

// maybeCommit advances the commit index to the highest index persisted by a
// quorum of voters, if that entry is of the current term (Raft §5.4.2).
func (r *Raft) maybeCommit() bool {
	var matches []uint64
	for _, id := range r.config().Voters() {
		switch {
		case id == r.id:
			matches = append(matches, r.log.persisted())
		case r.prs[id] != nil:
			matches = append(matches, r.prs[id].match)
		default:
			matches = append(matches, 0)
		}
	}
	slices.Sort(matches)
	slices.Reverse(matches)
	var idx uint64
	if len(matches) > 0 {
		idx = matches[r.config().Quorum()-1]
	}
	if mutant.On(mutant.RaftCommitWithoutQuorum) {
		idx = max(idx, r.log.persisted())
	}
	if idx <= r.log.committed || (r.log.termOr(idx) != r.term && !mutant.On(mutant.RaftFigure8)) {
		return false
	}
	r.log.commitTo(idx)
	r.onCommit()
	return true
}

// onCommit runs the leader's work that waits on the commit index.
func (r *Raft) onCommit() {
	i := 0
	for i < len(r.proposed) && r.proposed[i].index <= r.log.committed {
		r.uncommitted -= r.proposed[i].size
		i++
	}
	r.proposed = r.proposed[i:]
	if len(r.readsWaiting) > 0 {
		waiting := r.readsWaiting
		r.readsWaiting = nil
		for _, pr := range waiting {
			r.startRead(pr.ctx, pr.from)
		}
	}
	// A leader that is no longer a voter leaves once the change that
	// removed (or demoted) it is committed, handing over to the most
	// up-to-date voter right away.
	if !r.isVoter() && r.configIndex() <= r.log.committed {
		if to := r.mostUpToDateVoter(); to != None {
			r.sendAppend(to, true)
			if r.prs[to].match == r.log.lastIndex() {
				r.sendTimeoutNow(to)
			}
		}
		r.becomeFollower(r.term, None)
	}
}

func (r *Raft) committedInTerm() bool { return r.log.termOr(r.log.committed) == r.term }

// ReadIndex asks for a linearizable read point. The answer comes as a
// ReadState with the same ctx once a quorum confirmed this node is still the
// leader; if leadership is lost first, a NoticeReadFailed with ctx.
func (r *Raft) ReadIndex(ctx uint64) error {
	if r.state != StateLeader {
		return ErrNotLeader
	}
	if len(r.reads)+len(r.readsWaiting) >= r.cfg.MaxPendingReads {
		return fmt.Errorf("%w: %d reads pending", ErrTooManyPending, r.cfg.MaxPendingReads)
	}
	if !r.committedInTerm() && !mutant.On(mutant.RaftReadBeforeTermCommit) {
		// Our commit index may lag the previous leader's until our first
		// entry commits.
		r.readsWaiting = append(r.readsWaiting, pendingRead{ctx: ctx})
		return nil
	}
	if r.LeaseValid() {
		r.readStates = append(r.readStates, ReadState{Index: r.log.committed, Context: ctx})
		r.readStats.Lease++
		return nil
	}
	r.readStats.Rounds++
	r.startRead(ctx, None)
	return nil
}

// startRead confirms leadership for a read, local (from None) or a
// follower's, with a heartbeat round.
func (r *Raft) startRead(ctx uint64, from NodeID) {
	if len(r.config().Voters()) == 1 && r.isVoter() {
		r.confirmRead(readRequest{ctx: ctx, from: from, index: r.log.committed})
		return
	}
	r.reads = append(r.reads, readRequest{ctx: ctx, from: from, index: r.log.committed, seq: r.readSeq + 1,
		acks: map[NodeID]bool{r.id: true}})
	r.bcastHeartbeatRound(true)
}

// confirmRead answers a read whose read index is confirmed.
func (r *Raft) confirmRead(rr readRequest) {
	if rr.from == None {
		r.readStates = append(r.readStates, ReadState{Index: rr.index, Context: rr.ctx})
		return
	}
	r.send(Message{Type: MsgReadIndexResp, To: rr.from, Context: rr.ctx, Index: rr.index})
}

// sendTimeoutNow tells the transfer's target to campaign at once. Its
// election ignores vote leases, so this leader's lease ends here for the
// rest of its term.
func (r *Raft) sendTimeoutNow(to NodeID) {
	r.transferSent = true
	r.send(Message{Type: MsgTimeoutNow, To: to})
}

// handleReadAck counts a heartbeat acknowledgement for every read request up
// to seq, releasing those confirmed by a quorum (and all before them).
func (r *Raft) handleReadAck(from NodeID, seq uint64) {
	if len(r.reads) == 0 || seq == 0 {
		return
	}
	confirmed := -1
	for i := range r.reads {
		rr := &r.reads[i]
		if rr.seq > seq {
			break
		}
		rr.acks[from] = true
		n := 0
		for _, id := range r.config().Voters() {
			if rr.acks[id] {
				n++
			}
		}
		if n >= r.config().Quorum() || mutant.On(mutant.RaftReadIndexNoQuorum) {
			confirmed = i
		}
	}
	for i := 0; i <= confirmed; i++ {
		r.confirmRead(r.reads[i])
	}
	r.reads = r.reads[confirmed+1:]
}

// TransferLeadership hands leadership to the voter to, or with None to the
// most up-to-date voter. Proposals are refused until it completes or times
// out (one election timeout, reported as NoticeTransferFailed).
func (r *Raft) TransferLeadership(to NodeID) error {
	if r.state != StateLeader {
		return ErrNotLeader
	}
	if to == None {
		to = r.mostUpToDateVoter()
		if to == None {
			return fmt.Errorf("%w: no other voter to transfer to", ErrUnknownNode)
		}
	}
	if to == r.id {
		return nil
	}
	if r.config().RoleOf(to) != Voter {
		return fmt.Errorf("%w: %d is not a voter", ErrUnknownNode, to)
	}
	if r.leadTransferee == to {
		return nil
	}
	r.leadTransferee = to
	r.electionElapsed = 0 // the transfer gets a full election timeout
	pr := r.prs[to]
	if pr.match == r.log.lastIndex() {
		r.sendTimeoutNow(to)
	} else {
		r.sendAppend(to, true)
	}
	return nil
}

// LeadTransferee is the voter a leadership transfer in progress hands
// leadership to (None: no transfer in progress).
func (r *Raft) LeadTransferee() NodeID { return r.leadTransferee }

// mostUpToDateVoter returns the voter other than us with the highest match
// index (lowest id on ties), or None.
func (r *Raft) mostUpToDateVoter() NodeID {
	best, bestMatch := None, uint64(0)
	for _, id := range r.config().Voters() {
		pr := r.prs[id]
		if id == r.id || pr == nil {
			continue
		}
		if best == None || pr.match > bestMatch {
			best, bestMatch = id, pr.match
		}
	}
	return best
}

// KeepAliveHeartbeats returns the heartbeats a leader would send now, for
// the runtime to resend while the node is busy for longer than the
// heartbeat interval (one long SQLite step): without them the followers
// would elect another leader although this one is alive. They change no
// state and carry no read context, so resending them, even late, only
// tells followers what was already true when they were made. Nil unless
// leader.
func (r *Raft) KeepAliveHeartbeats() []Message {
	if r.state != StateLeader {
		return nil
	}
	msgs := make([]Message, 0, len(r.replicas))
	for _, id := range r.replicas {
		msgs = append(msgs, r.heartbeat(id, 0))
	}
	return msgs
}
