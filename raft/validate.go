package raft

import (
	"errors"
	"fmt"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

// ErrInvalidMessage is wrapped by the error Step returns for a peer message
// that no correct peer could send to this node in its current state: a
// malformed one, numbers past the bounds below, an undecodable config entry,
// snapshot metadata that makes no sense, an acknowledgement of entries the
// leader never had, entries contradicting what is already committed, a
// second leader in one term, a response from a server that was never a
// member. The message was not acted upon. The caller should log the error
// and drop the link to the sender: a correct peer never causes it, whatever
// the network does to its messages (delay, duplication, reordering) and
// across restarts of either side.
var ErrInvalidMessage = errors.New("raft: invalid message")

// Bounds on the numbers in a message. A correct cluster never comes near
// them (one term per election, one index per entry, one offset per byte of
// a snapshot: 2^62 of any takes centuries), and below them the arithmetic
// on terms, indexes and offsets (r.term+1, m.Index+1+i, Offset+len(Data))
// cannot overflow.
const (
	termMax   = 1 << 62
	indexMax  = 1 << 62
	offsetMax = 1 << 62
)

func invalid(m Message, format string, args ...any) error {
	return fmt.Errorf("%w: %s from %d in term %d: %s", ErrInvalidMessage, m.Type, m.From, m.Term,
		fmt.Sprintf(format, args...))
}

// checkFields checks what can be checked without looking at our state: the
// envelope, the bounds, and the consistency of the message with itself.
func checkFields(m Message, self NodeID) error {
	switch {
	case m.Type == 0 || m.Type > MsgReadIndexResp:
		return invalid(m, "unknown type")
	case m.From == None || m.From == self:
		return invalid(m, "sender %d", m.From)
	case m.To != self:
		return invalid(m, "addressed to %d, this is %d", m.To, self)
	case (m.Type == MsgSnap) != (m.Snapshot != nil):
		return invalid(m, "snapshot metadata present=%v", m.Snapshot != nil)
	case m.Term > termMax:
		return invalid(m, "term beyond %d", uint64(termMax))
	}
	switch m.Type {
	case MsgApp:
		return checkAppend(m)
	case MsgAppResp:
		if m.Index > indexMax || (m.Reject && m.RejectHint > m.Index) {
			return invalid(m, "index %d, reject=%v with hint %d", m.Index, m.Reject, m.RejectHint)
		}
	case MsgVote, MsgPreVote:
		if m.Index > indexMax || m.LogTerm > termMax {
			return invalid(m, "last entry %d/%d", m.Index, m.LogTerm)
		}
	case MsgHeartbeat:
		if m.Commit > indexMax {
			return invalid(m, "commit %d", m.Commit)
		}
	case MsgSnap:
		return checkSnapshotMeta(m)
	case MsgReadIndexResp:
		if m.Index > indexMax {
			return invalid(m, "read index %d", m.Index)
		}
	case MsgSnapResp:
		if m.Index > indexMax || m.Offset > offsetMax {
			return invalid(m, "snapshot %d offset %d", m.Index, m.Offset)
		}
	}
	return nil
}

// checkAppend checks a MsgApp's entries are consecutive after m.Index, carry
// non-decreasing terms no greater than the message's (as in any leader's
// log), have known types, and that config entries decode.
func checkAppend(m Message) error {
	if m.Index > indexMax || m.Commit > indexMax || m.LogTerm > m.Term {
		return invalid(m, "previous entry %d/%d, commit %d", m.Index, m.LogTerm, m.Commit)
	}
	prevTerm := m.LogTerm
	for i, e := range m.Entries {
		switch {
		case e.Index != m.Index+1+uint64(i):
			return invalid(m, "entry %d at position %d after %d", e.Index, i, m.Index)
		case e.Term == 0 || e.Term > m.Term || e.Term < prevTerm:
			return invalid(m, "entry %d has term %d after term %d", e.Index, e.Term, prevTerm)
		case e.Type < EntryNormal || e.Type > EntryConfig:
			return invalid(m, "entry %d has type %d", e.Index, e.Type)
		}
		if e.Type == EntryConfig {
			if _, err := DecodeMembership(e.Data); err != nil {
				return invalid(m, "config entry %d: %v", e.Index, err)
			}
		}
		prevTerm = e.Term
	}
	return nil
}

func checkSnapshotMeta(m Message) error {
	s := m.Snapshot
	switch {
	case s.Index == 0 || s.Index > indexMax || s.Term == 0 || s.Term > m.Term:
		return invalid(m, "snapshot at %d/%d", s.Index, s.Term)
	case s.ConfigIndex > s.Index:
		return invalid(m, "snapshot at %d has its config from %d", s.Index, s.ConfigIndex)
	case m.Offset > offsetMax:
		return invalid(m, "snapshot offset %d", m.Offset)
	}
	if err := s.Config.Validate(); err != nil {
		return invalid(m, "snapshot config: %v", err)
	}
	return nil
}

// checkSender decides about a message from a server named by no membership
// this node held since it started (and not its leader). It returns ok=false
// to drop the message, with an error when no correct peer could send it.
//
// Such a sender may be legitimate: a leader of a membership this node has
// not caught up with (it is being added, or it missed the changes that
// added that leader), or a removed server that does not know it yet. So:
// a node that is not a voter follows whoever leads, as a joining node must
// (it cannot vote, so following a stranger cannot elect or commit
// anything); a voter follows such a leader only once a member named it as
// the leader (leadHint, from a vote rejection); vote requests are answered
// (see below); a transfer's timeout-now is dropped.
// Responses are another matter: this node sends only to servers it knows,
// so a response from a stranger is invalid.
func (r *Raft) checkSender(m Message) (bool, error) {
	if _, known := r.knownIDs[m.From]; known || m.From == r.lead {
		return true, nil
	}
	switch m.Type {
	case MsgApp, MsgHeartbeat, MsgSnap:
		// (Or the candidate this node voted for in this term: it won.)
		return !r.isVoter() || (m.From == r.leadHint && m.Term >= r.term) || (m.From == r.vote && m.Term == r.term), nil
	case MsgVote, MsgPreVote:
		// Answered under the usual rules (the lease, one vote per
		// term, the up-to-date check): a voter added by a change this
		// node has not received may hold the longest log, and then no
		// leader can be elected without this node's vote (the Raft
		// dissertation, §4.2: servers answer requests without
		// consulting their configuration). A vote counts only among the
		// voters of the candidate's configuration.
		return !mutant.On(mutant.RaftStrangerVotesDropped), nil
	case MsgTimeoutNow, MsgReadIndex:
		// A read index is for members only (a removed standby may ask
		// until it learns it was removed).
		return false, nil
	case MsgReadIndexResp:
		// The answer of the leader we asked (a joining node may follow
		// a leader it knows no membership of); it may come after we
		// stopped following it.
		return r.forward != nil && r.forward.lead == m.From, nil
	}
	if m.Term < r.term {
		return false, nil // stale anyway
	}
	return false, invalid(m, "a response from a server that was never a member")
}

// checkState checks a message of our term or a newer one against our state,
// before any of it (a newer term included) is adopted. It returns ok=false
// to drop the message, with an error when no correct peer could send it.
func (r *Raft) checkState(m Message) (bool, error) {
	switch m.Type {
	case MsgApp, MsgHeartbeat, MsgSnap:
		if err := r.checkFromLeader(m); err != nil {
			return false, err
		}
	case MsgAppResp, MsgHeartbeatResp, MsgSnapResp:
		if r.state == StateLeader && m.Term == r.term {
			if err := r.checkResponse(m); err != nil {
				return false, err
			}
		}
	case MsgVoteResp, MsgPreVoteResp:
		if m.Type == MsgVoteResp && !m.Reject && m.Term > r.term {
			// A grant is in the candidate's own term.
			return false, invalid(m, "a grant for a term we never asked")
		}
	case MsgTimeoutNow:
		return r.checkTimeoutNow(m)
	}
	return true, nil
}

// checkFromLeader checks MsgApp, MsgHeartbeat and MsgSnap: one leader per
// term, and what the leader sends agrees with what we know is settled.
func (r *Raft) checkFromLeader(m Message) error {
	if m.Term == r.term {
		if r.state == StateLeader {
			return invalid(m, "we lead this term")
		}
		if r.lead != None && r.lead != m.From {
			return invalid(m, "%d leads this term", r.lead)
		}
	}
	switch m.Type {
	case MsgHeartbeat:
		// The leader caps the commit at what we acknowledged in its term,
		// which we hold durably.
		if last := r.log.lastIndex(); m.Commit > last {
			return invalid(m, "commit %d beyond our last index %d", m.Commit, last)
		}
	case MsgApp:
		if err := r.checkSettled(m, m.Index, m.LogTerm); err != nil {
			return err
		}
		for _, e := range m.Entries {
			if err := r.checkSettled(m, e.Index, e.Term); err != nil {
				return err
			}
		}
	case MsgSnap:
		if end := m.Offset + uint64(len(m.Data)); end > r.cfg.MaxSnapshotBytes {
			return invalid(m, "snapshot of at least %d bytes, beyond MaxSnapshotBytes %d", end, r.cfg.MaxSnapshotBytes)
		}
		return r.checkSettled(m, m.Snapshot.Index, m.Snapshot.Term)
	}
	return nil
}

// checkSettled reports an entry (index, term) from a leader that
// contradicts our log where it is settled: at or below the commit index
// (every leader holds committed entries) or, in the leader's own term, at
// or below what we already verified against it (a leader never rewrites
// its log). Entries we cannot read are not checked.
func (r *Raft) checkSettled(m Message, index, term uint64) error {
	settled := r.log.committed
	if m.Term == r.term {
		settled = max(settled, r.matched)
	}
	if index > settled {
		return nil
	}
	if t, err := r.log.term(index); err == nil && t != term {
		return invalid(m, "entry %d/%d contradicts our settled entry %d/%d (settled up to %d)",
			index, term, index, t, settled)
	}
	return nil
}

// checkResponse checks a response to the leader of its term: it answers
// something this leader sent in this term.
func (r *Raft) checkResponse(m Message) error {
	last := r.log.lastIndex()
	switch m.Type {
	case MsgAppResp:
		if m.Index > last {
			return invalid(m, "index %d beyond our last index %d", m.Index, last)
		}
	case MsgHeartbeatResp:
		if m.Context > r.readSeq {
			return invalid(m, "read context %d beyond the last sent, %d", m.Context, r.readSeq)
		}
	case MsgSnapResp:
		if m.Index > last {
			return invalid(m, "snapshot %d beyond our last index %d", m.Index, last)
		}
		if rd := r.snapshotReadFor(m.From); m.Index == rd.index && m.Offset > rd.end {
			return invalid(m, "offset %d in snapshot %d beyond the %d bytes sent", m.Offset, m.Index, rd.end)
		}
	}
	return nil
}

// checkTimeoutNow accepts MsgTimeoutNow only from our leader in its term. A
// leader sends it once we acknowledged its whole log in its term, so we know
// that term durably and followed that leader. Only a restart in between
// (we forgot who leads) makes it legitimately unexpected: it is dropped.
func (r *Raft) checkTimeoutNow(m Message) (bool, error) {
	switch {
	case m.Term > r.term:
		return false, invalid(m, "a leader of a term we never acknowledged")
	case r.lead != None && r.lead != m.From:
		return false, invalid(m, "%d leads this term", r.lead)
	}
	return r.lead == m.From, nil
}
