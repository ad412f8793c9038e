package sim

import (
	"errors"
	"fmt"
	"time"

	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
)

// op is one client operation of the history.
type op struct {
	client        int
	input         kvInput
	output        kvOutput
	call, return_ int64
	note          string // how a read was served (for reports)
}

// client issues one operation at a time to the node it believes leads.
type client struct {
	id      int
	target  raft.NodeID
	n       int
	pending *pendingOp
	bank    bool // the SQLite bank workload's client
	tx      *bankTx
	counter *counterState // the SQLite counter workload's client
	// avoid: a node the client does not send to (it gave up on a stale
	// leader, whatever the others still say of it).
	avoid raft.NodeID
	// readsOnly, writesOnly: the client issues only reads, or only
	// writes, for now.
	readsOnly, writesOnly bool
}

type pendingOp struct {
	req   uint64
	input kvInput
	call  time.Duration
	node  raft.NodeID // where it was sent
	// A read's level, and for ReadStale its bound on the node's clock.
	read loop.ReadOptions
}

// readOptions picks a read's level: a third at each, the bound of a
// bounded-staleness read among 20ms, 100ms and 500ms.
func (s *Sim) readOptions() loop.ReadOptions {
	switch s.rng.IntN(3) {
	case 0:
		return loop.ReadOptions{Level: loop.ReadLeader}
	case 1:
		return loop.ReadOptions{Level: loop.ReadLinearizable}
	}
	bounds := []time.Duration{20 * time.Millisecond, 100 * time.Millisecond, 500 * time.Millisecond}
	return loop.ReadOptions{Level: loop.ReadStale, MaxStaleness: bounds[s.rng.IntN(len(bounds))]}
}

// effectiveCall is when a read may take effect from: its call, or for a
// bounded-staleness read served by n, its bound (on n's clock, so in true
// time bound*skew) before the call.
func (p *pendingOp) effectiveCall(n *node) time.Duration {
	if p.read.Level != loop.ReadStale {
		return p.call
	}
	return p.call - time.Duration(float64(p.read.MaxStaleness)*n.skew)
}

// clientTimeout is how long a client waits for a reply before it gives up
// (the outcome of a write is then unknown).
const clientTimeout = 600 * time.Millisecond

func (s *Sim) clientStep(c *client) {
	if !s.clientsOn || c.pending != nil {
		return
	}
	n := s.nodes[c.target]
	// A third of the requests go to any node (as clients spread over a
	// cluster do): some reach a deposed leader that does not know it yet.
	if n == nil || !n.up || n.removed || s.rng.IntN(3) == 0 || (c.avoid != raft.None && c.target == c.avoid) {
		ids := s.sortedIDs()
		n = s.nodes[ids[s.rng.IntN(len(ids))]]
		for i := 0; n.id == c.avoid && i < 8; i++ {
			n = s.nodes[ids[s.rng.IntN(len(ids))]]
		}
		c.target = n.id
	}
	c.n++
	key := fmt.Sprintf("k%d", s.rng.IntN(s.opts.Keys))
	in := kvInput{key: key}
	if (s.rng.IntN(2) == 0 || c.writesOnly) && !c.readsOnly {
		in.put, in.value = true, fmt.Sprintf("c%d-%d", c.id, c.n)
	}
	s.nextReq++
	p := &pendingOp{req: s.nextReq, input: in, call: s.now, node: n.id}
	if !in.put {
		p.read = s.readOptions()
	}
	c.pending = p
	s.reqOwner[p.req] = c
	s.after(clientTimeout, &event{kind: evClient, fn: func() { s.clientTimeout(c, p) }})
	s.tracef("client %d req %d -> node %d: %+v", c.id, p.req, n.id, in)
	if !n.up || n.paused {
		return // the request is lost; the timeout resolves it
	}
	switch {
	case s.opts.SQLite && in.put:
		s.sqlPut(n, p.req, key, in.value)
	case s.opts.SQLite:
		s.sqlGet(n, p.req, key, p.read)
	case in.put:
		s.take(n, n.loop.Propose(p.req, []byte(key+"="+in.value)))
	default:
		kv := n.kv
		s.take(n, n.loop.ReadWith(p.req, 0, p.read, func() (any, error) { return kv.m[key], nil }))
	}
}

// connectionsReset answers the clients waiting on a node that just
// crashed at once, as a reset connection does: a write's outcome is
// unknown, and the client moves on to another node instead of waiting out
// its timeout (so clients reach a new leader within its first moments).
func (s *Sim) connectionsReset(n *node) {
	for _, c := range s.clients {
		p := c.pending
		if p == nil || p.node != n.id {
			continue
		}
		switch {
		case c.bank:
			if c.tx != nil {
				s.abandonTx(c)
			}
			s.bankDone(c, p)
		case c.counter != nil:
			s.counterUnknown(c)
			s.counterDone(c, p)
		default:
			s.clientTimeout(c, p)
		}
		c.target = raft.None
	}
}

func (s *Sim) clientTimeout(c *client, p *pendingOp) {
	if c.pending != p {
		return
	}
	s.finishOp(c, p, kvOutput{unknown: true}, false)
}

// reply delivers a loop's answer to the client waiting on it.
func (s *Sim) reply(n *node, r loop.Reply) {
	c := s.reqOwner[r.ID]
	if c == nil || c.pending == nil || c.pending.req != r.ID {
		return // the client gave up on it
	}
	p := c.pending
	s.tracef("client %d req %d <- node %d: result=%v err=%v", c.id, r.ID, n.id, r.Result, r.Err)
	if c.bank {
		s.bankReply(n, c, r)
		return
	}
	if c.counter != nil {
		s.counterReply(n, c, r)
		return
	}
	switch {
	case r.Err == nil:
		out := kvOutput{}
		if p.input.put {
			s.noteAckedWrite(p.input.key, p.input.value, r.Index)
		} else {
			out.value, _ = r.Result.(string)
			s.checkFreshRead(n, p, out.value)
			s.countRead(n, p)
		}
		s.finishOpFrom(c, p, out, true, p.effectiveCall(n))
	case errors.Is(r.Err, loop.ErrTimeout), errors.Is(r.Err, loop.ErrStopped), errors.Is(r.Err, loop.ErrUnknownOutcome):
		s.finishOp(c, p, kvOutput{unknown: true}, false)
	default:
		// Refused (not leader, busy, transfer) or the entry left the log
		// (leadership lost): the operation did not happen.
		if lead := n.loop.Raft().Basic().Lead; lead != raft.None {
			c.target = lead
		} else {
			c.target = raft.None
		}
		s.finishOp(c, p, kvOutput{}, false)
		s.count("client-retry")
		return
	}
}

// ackedWrite is a write acknowledged to a client: when, and the index of
// its entry.
type ackedWrite struct {
	at    time.Duration
	index uint64
}

// noteAckedWrite remembers an acknowledged write for the stale-read oracle.
func (s *Sim) noteAckedWrite(key, value string, index uint64) {
	s.acked[key] = append(s.acked[key], ackedWrite{at: s.now, index: index})
	if _, ok := s.valueIndex[value]; !ok && index > 0 {
		s.valueIndex[value] = index
	}
}

// checkFreshRead: a read returns a value at least as new as every write to
// its key acknowledged to any client before the read began (a direct
// stale-read check beside porcupine, which names the read). A value whose
// write's index is unknown (its outcome never reached a client, in SQLite
// mode) is not judged here.
// countRead counts the reads served, by level and by the role of the node
// that served them (the summary shows every level was exercised).
func (s *Sim) countRead(n *node, p *pendingOp) {
	role := "follower"
	if n.loop.Raft().Basic().State == raft.StateLeader {
		role = "leader"
	}
	s.count([...]string{"read-leader", "read-any", "read-stale"}[p.read.Level] + "-" + role)
}

func (s *Sim) checkFreshRead(n *node, p *pendingOp, value string) {
	var idx uint64
	if value != "" {
		var ok bool
		if idx, ok = s.valueIndex[value]; !ok {
			return
		}
	}
	from := p.effectiveCall(n)
	for _, w := range s.acked[p.input.key] {
		if w.at < from && w.index > idx {
			s.violate("stale-read", "node %d answered a read (%s) of %s begun at %v (may reflect the state from %v) with the write at index %d, but the write at index %d was acknowledged at %v",
				n.id, readName(p.read), p.input.key, p.call, from, idx, w.index, w.at)
			return
		}
	}
}

// finishOp records the operation (if it may have happened) and schedules
// the client's next one.
func (s *Sim) finishOp(c *client, p *pendingOp, out kvOutput, ok bool) {
	s.finishOpFrom(c, p, out, ok, p.call)
}

// readName describes a read level for messages.
func readName(o loop.ReadOptions) string {
	switch o.Level {
	case loop.ReadLinearizable:
		return "linearizable, any node"
	case loop.ReadStale:
		return fmt.Sprintf("at most %v stale", o.MaxStaleness)
	}
	return "linearizable, leader"
}

// finishOpFrom is finishOp for an operation that may take effect from
// call on (a bounded-staleness read: its bound before it was sent, so
// porcupine checks it as a linearizable read over that longer interval).
func (s *Sim) finishOpFrom(c *client, p *pendingOp, out kvOutput, ok bool, call time.Duration) {
	delete(s.reqOwner, p.req)
	c.pending = nil
	switch {
	case ok:
		s.history = append(s.history, op{client: c.id, input: p.input, output: out,
			call: int64(call), return_: int64(s.now), note: fmt.Sprintf("%s node=%d sent=%v", readName(p.read), p.node, p.call)})
	case out.unknown && p.input.put:
		// May or may not have happened: it may take effect any time after
		// its call, so it returns at the end of history.
		s.history = append(s.history, op{client: c.id, input: p.input, output: out,
			call: int64(p.call), return_: -1})
	}
	if out.unknown {
		c.target = raft.None
	}
	s.after(s.randDuration(time.Millisecond, 20*time.Millisecond), &event{kind: evClient, fn: func() { s.clientStep(c) }})
}
