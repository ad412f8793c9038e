package raft

import (
	"github.com/dqlite-go/dqlite/internal/assert"
	"github.com/dqlite-go/dqlite/internal/mutant"
)

type campaignKind uint8

const (
	campaignPreVote campaignKind = iota + 1
	campaignElection
	campaignTransfer
)

// Step feeds a peer message into the state machine. Every message is
// checked before anything in it is acted upon (see validate.go). Step
// returns an error wrapping ErrInvalidMessage for a message no correct peer
// could send to this node in its state; such a message changed nothing.
// Messages a correct cluster can produce (from stale terms, duplicated,
// delayed or reordered, from a removed server) are dropped or handled
// silently.
func (r *Raft) Step(m Message) error {
	err := r.step(m)
	r.stopOnStorageErr()
	return err
}

func (r *Raft) step(m Message) error {
	if err := checkFields(m, r.id); err != nil {
		return err
	}
	if r.log.readErr != nil {
		return nil // storage failed: take nothing more (see stopOnStorageErr)
	}
	if ok, err := r.checkSender(m); !ok {
		return err
	}
	if m.Term < r.term {
		r.stepStale(m)
		return nil
	}
	if ok, err := r.checkState(m); !ok {
		return err
	}
	if !r.stepTerm(m) {
		return nil
	}
	switch m.Type {
	case MsgVote, MsgPreVote:
		r.handleVoteRequest(m)
	case MsgVoteResp, MsgPreVoteResp:
		r.noteLeadHint(m)
		r.handleVoteResponse(m)
	case MsgApp, MsgHeartbeat, MsgSnap:
		r.handleFromLeader(m)
	case MsgTimeoutNow:
		if r.state == StateFollower && r.isVoter() {
			r.campaign(campaignTransfer)
		}
	case MsgAppResp, MsgHeartbeatResp, MsgSnapResp:
		if r.state == StateLeader {
			r.handleLeaderResponse(m)
		}
	case MsgReadIndex:
		r.handleReadIndexRequest(m)
	case MsgReadIndexResp:
		r.handleReadIndexResponse(m)
	}
	return nil
}

// stepStale answers a message from an older term, which is otherwise
// dropped.
func (r *Raft) stepStale(m Message) {
	switch m.Type {
	case MsgApp, MsgHeartbeat:
		// A deposed leader: tell it the term so it steps down (it may be
		// cut off from everyone else and never learn).
		r.send(Message{Type: MsgAppResp, To: m.From})
	case MsgPreVote:
		r.rejectVote(m)
	case MsgReadIndex:
		// Tell the asker the term: its leader is gone.
		r.send(Message{Type: MsgReadIndexResp, To: m.From, Context: m.Context, Reject: true})
	}
}

// stepTerm applies the rules for a message of a newer term. It returns false
// when the message must not be processed further.
func (r *Raft) stepTerm(m Message) bool {
	if m.Term == r.term {
		return true
	}
	if m.Type == MsgVote || m.Type == MsgPreVote {
		// A live leader is known: refuse to be disrupted, unless the
		// leader itself asked for this election. A pre-vote hears who
		// leads, without any change here.
		if r.inVoteLease() && !m.Transfer {
			if m.Type == MsgPreVote {
				r.rejectVote(m)
			}
			return false
		}
	}
	switch {
	case m.Type == MsgPreVote:
		// Pre-votes never change our term.
	case m.Type == MsgPreVoteResp && (!m.Reject || mutant.On(mutant.RaftPreVoteRejectTerm)):
		// A grant echoes the term we asked for.
	case m.Type == MsgApp || m.Type == MsgHeartbeat || m.Type == MsgSnap:
		r.becomeFollower(m.Term, m.From)
	default:
		r.becomeFollower(m.Term, None)
	}
	return true
}

// rejectVote refuses a (pre-)vote, naming the leader we follow: a voter
// that missed the membership changes adding that leader learns it may
// follow it (see checkSender).
func (r *Raft) rejectVote(m Message) {
	typ := MsgVoteResp
	if m.Type == MsgPreVote {
		typ = MsgPreVoteResp
	}
	r.send(Message{Type: typ, To: m.From, Reject: true, RejectHint: uint64(r.lead)})
}

// noteLeadHint records the leader a member named in a vote rejection of our
// term.
func (r *Raft) noteLeadHint(m Message) {
	if hint := NodeID(m.RejectHint); m.Reject && m.Term == r.term && hint != None && hint != r.id {
		r.leadHint = hint
	}
}

// campaign starts a pre-election, election, or transfer election.
func (r *Raft) campaign(kind campaignKind) {
	if !r.canCampaign() || r.log.readErr != nil {
		// A node that cannot read its log must not lead.
		return
	}
	if kind != campaignTransfer && r.hasClock() && r.inVoteLease() {
		// A leader may still count on us (lease.go): try again later.
		return
	}
	var typ MessageType
	term := r.term + 1
	if kind == campaignPreVote {
		r.becomePreCandidate()
		typ = MsgPreVote
	} else {
		r.becomeCandidate()
		typ = MsgVote
		term = r.term
	}
	r.votes[r.id] = true
	if r.wonVote() {
		r.winVote()
		return
	}
	for _, id := range r.config().Voters() {
		if id == r.id {
			continue
		}
		r.send(Message{Type: typ, To: id, Term: term, Index: r.log.lastIndex(),
			LogTerm: r.log.lastTerm(), Transfer: kind == campaignTransfer})
	}
}

func (r *Raft) wonVote() bool {
	granted := 0
	for _, id := range r.config().Voters() {
		if r.votes[id] {
			granted++
		}
	}
	return granted >= r.config().Quorum()
}

func (r *Raft) lostVote() bool {
	rejected := 0
	for _, id := range r.config().Voters() {
		if v, ok := r.votes[id]; ok && !v {
			rejected++
		}
	}
	return rejected >= r.config().Quorum()
}

func (r *Raft) winVote() {
	if r.state == StatePreCandidate {
		r.campaign(campaignElection)
		return
	}
	r.becomeLeader()
}

func (r *Raft) handleVoteRequest(m Message) {
	pre := m.Type == MsgPreVote
	respType := MsgVoteResp
	if pre {
		respType = MsgPreVoteResp
	}
	canVote := r.vote == m.From ||
		(r.vote == None && r.lead == None) ||
		(pre && m.Term > r.term) ||
		mutant.On(mutant.RaftDoubleVote)
	if r.hasClock() && !m.Transfer && r.vote != m.From && r.inVoteLease() {
		// Whatever the term: a node can reach a newer term without a
		// leader (a rejection, a response) while a leader still counts
		// on its refusal (lease.go).
		canVote = false
	}
	// Without a readable log we cannot tell whether the candidate's is
	// up to date.
	upToDate := r.log.isUpToDate(m.Index, m.LogTerm) || mutant.On(mutant.RaftVoteIgnoresLog)
	if canVote && upToDate && r.log.readErr == nil {
		// A pre-vote grant echoes the requested term so the candidate can
		// match it; a vote grant is in our (now equal) term.
		r.send(Message{Type: respType, To: m.From, Term: m.Term})
		if !pre {
			r.electionElapsed = 0
			r.vote = m.From
		}
		return
	}
	r.rejectVote(m)
}

func (r *Raft) handleVoteResponse(m Message) {
	switch {
	case r.state == StatePreCandidate && m.Type == MsgPreVoteResp:
		if !m.Reject && m.Term != r.term+1 {
			return // an answer to an older pre-vote
		}
	case r.state == StateCandidate && m.Type == MsgVoteResp:
	default:
		return
	}
	if _, seen := r.votes[m.From]; seen {
		return
	}
	r.votes[m.From] = !m.Reject
	if r.wonVote() {
		r.winVote()
	} else if r.lostVote() {
		r.becomeFollower(r.term, None)
	}
}

// handleFromLeader handles MsgApp, MsgHeartbeat and MsgSnap of the current
// term: only its leader sends them.
func (r *Raft) handleFromLeader(m Message) {
	if r.state != StateFollower || r.lead != m.From {
		r.becomeFollower(m.Term, m.From)
	}
	r.electionElapsed = 0
	r.heardFromLeader()
	switch m.Type {
	case MsgApp:
		r.handleAppend(m)
	case MsgHeartbeat:
		// The leader caps m.Commit at what we acknowledged in its term.
		r.log.commitTo(min(m.Commit, r.log.lastIndex()))
		r.send(Message{Type: MsgHeartbeatResp, To: m.From, Context: m.Context})
	case MsgSnap:
		r.handleSnapshot(m)
	}
}

func (r *Raft) handleAppend(m Message) {
	if m.Index < r.log.committed {
		// Everything up to our commit index matches any leader's log.
		r.matched = max(r.matched, r.log.committed)
		r.send(Message{Type: MsgAppResp, To: m.From, Index: min(r.log.committed, r.log.persisted())})
		return
	}
	lastNew, appended, ok := r.log.maybeAppend(m.Index, m.LogTerm, m.Entries)
	if !ok {
		hint := min(m.Index, r.log.lastIndex())
		hint, hintTerm := r.log.findConflictByTerm(hint, m.LogTerm)
		r.send(Message{Type: MsgAppResp, To: m.From, Index: m.Index, Reject: true,
			RejectHint: hint, LogTerm: hintTerm})
		return
	}
	err := r.trackConfigs(appended)
	assert.NoError(err, "config entries checked in Step")
	r.matched = max(r.matched, lastNew)
	r.log.commitTo(min(m.Commit, r.matched))
	if r.log.persisted() >= lastNew || mutant.On(mutant.RaftAckBeforePersist) {
		r.acked = max(r.acked, lastNew)
		r.send(Message{Type: MsgAppResp, To: m.From, Index: lastNew})
		return
	}
	r.pendingAck = true
}

// findConflictByTerm returns the largest index <= index whose term is <=
// term, and that term, for fast back-off.
func (l *raftLog) findConflictByTerm(index, term uint64) (uint64, uint64) {
	for ; index > 0; index-- {
		t, err := l.term(index)
		if err != nil {
			return index, 0
		}
		if t <= term {
			return index, t
		}
	}
	return 0, 0
}
