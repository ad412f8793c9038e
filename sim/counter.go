package sim

import (
	"errors"
	"time"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/loop"
)

// The counter workload (SQLite mode): one client increments a counter
// through the state machine's deduplication (fsm.BatchItem's Client and
// Seq), retrying a write whose outcome it never learned under the same
// sequence number on another node, and now and then resending one that
// succeeded (as a client whose reply was lost does). Each sequence number
// must apply once: at the end the counter lies between the number of
// increments acknowledged and the number of distinct ones attempted.

// counterClientID is the deduplication identity of the counter client.
const counterClientID = 1 << 40

// counterRetries bounds the submissions of one sequence number.
const counterRetries = 6

// counterDB is the counter's database, apart from the bank's and the
// registers' (the default one): entries of two databases interleave in the
// log, and snapshots and restores carry both.
const counterDB = "counter.db"

// counterSQL creates the counter on its first increment.
const counterSQL = "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); " +
	"INSERT OR IGNORE INTO counter (id, n) VALUES (0, 0); UPDATE counter SET n = n + 1 WHERE id = 0"

// counterState is the counter client's memory.
type counterState struct {
	seq    uint64 // the write in progress
	tries  int    // its submissions so far
	resend bool   // the write in progress was acknowledged: resend it once
	// acked and attempted count distinct sequence numbers.
	acked, attempted uint64
}

func (s *Sim) counterStep(c *client) {
	if !s.clientsOn || c.pending != nil {
		return
	}
	if !s.schemaDone {
		s.after(20*time.Millisecond, &event{kind: evClient, fn: func() { s.counterStep(c) }})
		return
	}
	k := c.counter
	n := s.nodes[c.target]
	if n == nil || !n.up || n.removed || n.paused || k.tries > 0 {
		n = s.pickLive() // a retry goes wherever the client can reach
		if n == nil {
			s.after(20*time.Millisecond, &event{kind: evClient, fn: func() { s.counterStep(c) }})
			return
		}
		c.target = n.id
	}
	if k.tries == 0 && !k.resend {
		k.seq++
		k.attempted = k.seq
	}
	k.tries++
	s.nextReq++
	p := &pendingOp{req: s.nextReq, call: s.now, node: n.id}
	c.pending = p
	s.reqOwner[p.req] = c
	s.after(clientTimeout, &event{kind: evClient, fn: func() {
		if c.pending == p {
			s.counterUnknown(c)
			s.counterDone(c, p)
		}
	}})
	n.vfs.SetTime(simClock + s.now.Milliseconds())
	s.tracef("counter seq %d try %d -> node %d", k.seq, k.tries, n.id)
	s.take(n, n.loop.SubmitWrite(loop.WriteRequest{ID: p.req, Group: counterDB, Batch: &fsm.BatchItem{
		Database: counterDB, SQL: counterSQL, Client: counterClientID, Seq: k.seq}}))
}

// counterUnknown handles a write whose outcome is unknown: retried under
// the same sequence number, up to counterRetries submissions.
func (s *Sim) counterUnknown(c *client) {
	k := c.counter
	if k.resend || k.tries >= counterRetries {
		k.tries, k.resend = 0, false
		return
	}
	s.count("dedup-retry")
}

func (s *Sim) counterReply(n *node, c *client, r loop.Reply) {
	k, p := c.counter, c.pending
	switch {
	case r.Err == nil:
		if k.resend {
			k.resend = false
		} else {
			k.acked++
			if k.resend = s.rng.IntN(8) == 0; k.resend {
				s.count("dedup-resend")
			}
		}
		k.tries = 0
	case errors.Is(r.Err, loop.ErrTimeout), errors.Is(r.Err, loop.ErrStopped), errors.Is(r.Err, loop.ErrUnknownOutcome):
		s.counterUnknown(c)
	default:
		// Refused, or its entry left the log: it did not happen here;
		// send it again (same sequence number) to the leader named.
		k.tries--
		c.target = n.loop.Raft().Basic().Lead
	}
	s.counterDone(c, p)
}

func (s *Sim) counterDone(c *client, p *pendingOp) { s.opDone(c, p, s.counterStep) }

// checkCounter: every sequence number applied at most once, and every
// acknowledged one applied.
func (s *Sim) checkCounter() {
	var k *counterState
	for _, c := range s.clients {
		if c.counter != nil {
			k = c.counter
		}
	}
	l := s.leader()
	if k == nil || l == nil || !s.schemaDone {
		return
	}
	conn := l.db.ConnOf(counterDB)
	if conn == nil {
		return // no increment reached this node's state: nothing to judge
	}
	rows, err := conn.Query("SELECT n FROM counter WHERE id = 0")
	if err != nil || len(rows) != 1 {
		return
	}
	n, _ := rows[0][0].(int64)
	if s.opts.Statements {
		// Statement mode carries no request ids (as rqlite): a retried
		// increment may apply again, so only "at least once" holds.
		s.count("dedup-check-at-least-once")
		if uint64(n) < k.acked {
			s.violate("dedup", "the counter is %d after %d increments acknowledged (each applies at least once)", n, k.acked)
		}
		return
	}
	s.count("dedup-check")
	if uint64(n) < k.acked || uint64(n) > k.attempted {
		s.violate("dedup", "the counter is %d after %d increments acknowledged and %d attempted (each applies once)",
			n, k.acked, k.attempted)
	}
}
