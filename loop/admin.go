package loop

import (
	"errors"
	"fmt"

	"github.com/dqlite-go/dqlite/raft"
)

// Membership changes and leadership transfers: tracked requests answered
// by Raft notices or state changes.

// RequestMembership starts a membership change whose reply comes once its
// entry is applied (or with the error that stopped it).
func (l *Loop) RequestMembership(id uint64, cc raft.ConfigChange) Output {
	return l.startTracked(id, func() error { return l.raft.ProposeConfigChange(cc) },
		&request{id: id, conf: true}, &l.confReq)
}

// RequestTransfer hands leadership to the voter to (None: the most
// up-to-date one); the reply comes once this node knows the target leads
// (so a client asking any of the two who leads is told the target), or
// with an error: the transfer timed out while this node still led (one
// election timeout), no leader was known within transferWaitElections
// election timeouts of this node stepping down, or another node won.
func (l *Loop) RequestTransfer(id uint64, to raft.NodeID) Output {
	reply := func(err error) Output {
		l.out.Replies = append(l.out.Replies, Reply{ID: id, Err: err})
		return l.flush()
	}
	if l.transferReq != 0 && l.pending[l.transferReq] != nil {
		return reply(errors.New("loop: a leadership transfer is already under way"))
	}
	if err := l.admit(id); err != nil {
		return reply(err)
	}
	b := l.raft.Basic()
	if err := l.raft.TransferLeadership(to); err != nil {
		return reply(err)
	}
	target := l.raft.LeadTransferee()
	if target == raft.None {
		return reply(nil) // to is this node, which leads already
	}
	l.track(&request{id: id, transfer: true})
	l.transferReq, l.transferTo, l.transferTerm, l.transferTicks = id, target, b.Term, 0
	return l.flush()
}

// transferWaitElections bounds, in election timeouts, how long a transfer
// waits for a leader once this node stopped leading.
const transferWaitElections = 2

// transferDone answers the transfer being waited on once this node no
// longer leads and knows the leader of a later term.
func (l *Loop) transferDone() {
	id := l.transferReq
	if id == 0 {
		return
	}
	if l.pending[id] == nil {
		l.transferReq = 0 // timed out or canceled
		return
	}
	b := l.raft.Basic()
	var err error
	switch {
	case b.Term == l.transferTerm && b.State == raft.StateLeader:
		return // the transfer is under way (raft bounds it)
	case b.State == raft.StateLeader:
		err = fmt.Errorf("loop: leadership transfer to %d failed: this node won the election of term %d", l.transferTo, b.Term)
	case b.Lead == raft.None || b.Lead == l.cfg.Raft.ID || b.Term == l.transferTerm:
		election := l.cfg.Raft.ElectionTicks
		if election == 0 {
			election = raft.DefaultElectionTicks
		}
		if l.transferTicks > transferWaitElections*election {
			err = fmt.Errorf("loop: leadership transfer to %d: no leader known %d election timeouts after this node stepped down", l.transferTo, transferWaitElections)
			break
		}
		return
	case b.Lead != l.transferTo:
		err = fmt.Errorf("loop: leadership transfer to %d failed: %d leads term %d", l.transferTo, b.Lead, b.Term)
	}
	l.transferReq = 0
	l.finish(id, Reply{ID: id, Err: err})
}

// startTracked admits a request, starts it, and on success records it in
// slot until a notice (or a state change) answers it.
func (l *Loop) startTracked(id uint64, start func() error, req *request, slot *uint64) Output {
	err := l.admit(id)
	if err == nil {
		err = start()
	}
	if err != nil {
		l.out.Replies = append(l.out.Replies, Reply{ID: id, Err: err})
		return l.flush()
	}
	l.track(req)
	*slot = id
	return l.flush()
}

func (l *Loop) handleNotice(n raft.Notice) {
	switch n.Kind {
	case raft.NoticeReadFailed:
		l.finish(n.Context, Reply{ID: n.Context, Err: ErrLeadershipLost})
	case raft.NoticeConfigAppended:
		if req := l.pending[l.confReq]; req != nil {
			req.index, req.term = n.Index, n.Term
			l.byIndex[n.Index] = append(l.byIndex[n.Index], req.id)
		}
	case raft.NoticeConfigFailed:
		if id := l.confReq; id != 0 {
			l.confReq = 0
			l.finish(id, Reply{ID: id, Err: n.Err})
		}
	case raft.NoticeTransferFailed:
		if id := l.transferReq; id != 0 {
			l.transferReq = 0
			l.finish(id, Reply{ID: id, Err: n.Err})
		}
	}
}
