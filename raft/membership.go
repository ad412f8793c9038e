package raft

import (
	"fmt"
)

// ConfigChangeType is the kind of a membership change.
type ConfigChangeType uint8

const (
	// ConfigAdd adds a new server as a spare.
	ConfigAdd ConfigChangeType = iota + 1
	// ConfigAssign gives an existing server a new role.
	ConfigAssign
	// ConfigRemove removes a server (the leader too).
	ConfigRemove
)

func (t ConfigChangeType) String() string {
	switch t {
	case ConfigAdd:
		return "add"
	case ConfigAssign:
		return "assign"
	case ConfigRemove:
		return "remove"
	}
	return fmt.Sprintf("ConfigChangeType(%d)", uint8(t))
}

// ConfigChange is one membership change.
type ConfigChange struct {
	Type    ConfigChangeType
	ID      NodeID
	Address string // for ConfigAdd
	Role    Role   // for ConfigAssign
}

// apply returns the membership after the change, or an error.
func (cc ConfigChange) apply(m Membership) (Membership, error) {
	out := m.Clone()
	cur, exists := m.Get(cc.ID)
	if cc.ID == None {
		return out, fmt.Errorf("%w: id 0", ErrBadConfigChange)
	}
	switch cc.Type {
	case ConfigAdd:
		if exists {
			return out, fmt.Errorf("%w: %d is already a member", ErrBadConfigChange, cc.ID)
		}
		out.Servers = append(out.Servers, Server{ID: cc.ID, Address: cc.Address, Role: Spare})
		out.sortServers()
	case ConfigAssign:
		if !exists {
			return out, fmt.Errorf("%w: %d is not a member", ErrBadConfigChange, cc.ID)
		}
		if cc.Role < Voter || cc.Role > Spare {
			return out, fmt.Errorf("%w: unknown role %d", ErrBadConfigChange, cc.Role)
		}
		if cur.Role == cc.Role {
			return out, fmt.Errorf("%w: %d is already a %s", ErrBadConfigChange, cc.ID, cc.Role)
		}
		for i := range out.Servers {
			if out.Servers[i].ID == cc.ID {
				out.Servers[i].Role = cc.Role
			}
		}
	case ConfigRemove:
		if !exists {
			return out, fmt.Errorf("%w: %d is not a member", ErrBadConfigChange, cc.ID)
		}
		out.Servers = out.Servers[:0]
		for _, s := range m.Servers {
			if s.ID != cc.ID {
				out.Servers = append(out.Servers, s)
			}
		}
	default:
		return out, fmt.Errorf("%w: unknown type %d", ErrBadConfigChange, cc.Type)
	}
	if err := out.Validate(); err != nil {
		return out, fmt.Errorf("%w: %v", ErrBadConfigChange, err)
	}
	return out, nil
}

// ProposeConfigChange starts a membership change on the leader. Only one
// change is in flight at a time: the previous one must be committed. A
// promotion to voter first replicates to the node in rounds until it is
// caught up. The outcome comes as a Notice: NoticeConfigAppended with the
// entry's index and term, or NoticeConfigFailed.
func (r *Raft) ProposeConfigChange(cc ConfigChange) error {
	switch {
	case r.state != StateLeader:
		return ErrNotLeader
	case r.leadTransferee != None:
		return ErrTransferInProgress
	case r.promoting != nil || r.configIndex() > r.log.committed:
		return ErrConfigInProgress
	case !r.committedInTerm():
		// The previous leader's uncommitted change may still be pending
		// (the single-server change bug found after the Raft paper).
		return ErrNotReady
	}
	next, err := cc.apply(r.config())
	if err != nil {
		return err
	}
	// A change that takes a voter away must leave a membership whose live
	// voters are a quorum: otherwise its own entry can never commit and
	// every later change waits behind it (a cluster wedged for good).
	if cur, _ := r.config().Get(cc.ID); cur.Role == Voter && (cc.Type == ConfigRemove || cc.Type == ConfigAssign && cc.Role != Voter) {
		if live, quorum, ok := r.liveQuorum(next); !ok {
			return fmt.Errorf("%w: without %d, %d of the voters answer, fewer than the quorum of %d",
				ErrNoLiveQuorum, cc.ID, live, quorum)
		}
	}
	if cc.Type == ConfigAssign && cc.Role == Voter && cc.ID != r.id {
		s, _ := next.Get(cc.ID)
		r.promoting = &promotion{server: s}
		r.updateReplicas()
		r.startPromotionRound()
		return nil
	}
	return r.appendConfig(next)
}

func (r *Raft) appendConfig(next Membership) error {
	if err := r.checkPropose(uint64(len(EncodeMembership(next)))); err != nil {
		return err
	}
	index, term, err := r.appendProposal(Entry{Type: EntryConfig, Data: EncodeMembership(next)})
	if err != nil {
		return err
	}
	r.notices = append(r.notices, Notice{Kind: NoticeConfigAppended, Index: index, Term: term})
	return nil
}

// catchUpRoundTicksMax bounds one catch-up round, in election timeouts: a
// node that makes no progress for this long fails its promotion.
const catchUpRoundTicksMax = 10

func (r *Raft) startPromotionRound() {
	p := r.promoting
	p.round++
	p.roundTarget = r.log.lastIndex()
	p.roundElapsed = 0
	r.sendAppend(p.server.ID, true)
	r.checkPromotionRound()
}

// checkPromotionRound ends a catch-up round when the node reached the
// round's target: if the round took less than an election timeout the node
// is caught up and the change is appended; otherwise another round starts.
func (r *Raft) checkPromotionRound() {
	p := r.promoting
	if p == nil {
		return
	}
	pr := r.prs[p.server.ID]
	if pr == nil || pr.match < p.roundTarget {
		return
	}
	if p.roundElapsed < r.cfg.ElectionTicks {
		r.promoting = nil
		next, err := ConfigChange{Type: ConfigAssign, ID: p.server.ID, Role: Voter}.apply(r.config())
		if err == nil {
			err = r.appendConfig(next)
		}
		if err != nil {
			r.notices = append(r.notices, Notice{Kind: NoticeConfigFailed, Err: err})
		}
		r.updateReplicas()
		return
	}
	if p.round >= r.cfg.CatchUpRounds {
		r.failPromotion(fmt.Errorf("%w: %d rounds", ErrCatchUpFailed, p.round))
		return
	}
	r.startPromotionRound()
}

func (r *Raft) tickPromotion() {
	p := r.promoting
	if p == nil {
		return
	}
	p.roundElapsed++
	if p.roundElapsed > catchUpRoundTicksMax*r.cfg.ElectionTicks {
		r.failPromotion(fmt.Errorf("%w: round %d made no progress", ErrCatchUpFailed, p.round))
	}
}

func (r *Raft) failPromotion(err error) {
	r.promoting = nil
	r.notices = append(r.notices, Notice{Kind: NoticeConfigFailed, Err: err})
	r.updateReplicas()
}
