package node

import (
	"errors"
	"time"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
)

// The loop goroutine: each event, carrying out its output (messages, the
// write job for the disk goroutine, replies), the disk goroutine, and the
// logs of what an event changed.

// monotonicClock is the node's clock for leases: nanoseconds on the
// monotonic clock since the node started (Go's time.Since reads
// CLOCK_MONOTONIC, which wall-clock changes do not move).
func monotonicClock() func() int64 {
	start := time.Now()
	return func() int64 { return int64(time.Since(start)) + 1 }
}

// run is the loop goroutine.
func (n *Node) run() {
	defer n.wg.Done()
	ticker := time.NewTicker(n.cfg.Tick)
	defer ticker.Stop()
	for {
		select {
		case <-n.stop:
			n.failWaiters(ErrClosed)
			return
		case <-ticker.C:
			start := time.Now()
			n.busySince.Store(start.UnixNano())
			n.vfs.SetTime(start.UnixMilli())
			n.eventKind = "tick"
			n.handle(n.loop.Tick())
			n.prepareKeepAlive()
			n.busySince.Store(0)
			n.noteEvent(start)
		case fn := <-n.events:
			start := time.Now()
			n.busySince.Store(start.UnixNano())
			fn()
			n.busySince.Store(0)
			n.noteEvent(start)
		}
	}
}

// slowEvent is the loop event duration counted as slow (a client or peer
// waits that long for anything the loop does).
const slowEvent = 100 * time.Millisecond

// noteEvent records how long the loop event that began at start took.
func (n *Node) noteEvent(start time.Time) {
	d := time.Since(start)
	if uint64(d) > n.metrics.eventMaxNanos.Load() {
		n.metrics.eventMaxNanos.Store(uint64(d)) // one writer: the loop
	}
	kind := n.eventKind
	n.eventKind = ""
	var work [fsm.NumWork]int64
	if n.db != nil {
		work = n.db.TakeWork()
	}
	handled := time.Duration(n.handleNanos)
	n.handleNanos = 0
	if d > slowEvent {
		n.metrics.eventsSlow.Add(1)
		if kind == "" {
			kind = "other"
		}
		// What the databases' work took of it; the rest is Raft, the
		// log's bookkeeping and the replies.
		attrs := []any{"duration", d, "event", kind}
		rest := d
		for w, ns := range work {
			if ns > 0 {
				attrs = append(attrs, fsm.Work(w).String(), time.Duration(ns))
				rest -= time.Duration(ns)
			}
		}
		// handle: sending the messages, answering the clients, logging.
		attrs = append(attrs, "handle", handled, "rest", rest-handled)
		n.log.Warn("slow loop event", attrs...)
	}
}

// handle carries out a loop output.
func (n *Node) handle(out loop.Output) {
	start := time.Now()
	defer func() { n.handleNanos += int64(time.Since(start)) }()
	for _, m := range out.Messages {
		n.send(m)
	}
	if out.Write != nil {
		select { // capacity 1: the loop has at most one write in flight
		case n.disk <- out.Write:
		case <-n.stop:
		}
	}
	for _, r := range out.Replies {
		if ch, ok := n.waiters[r.ID]; ok {
			delete(n.waiters, r.ID)
			ch <- r
		}
	}
	if out.Again {
		// The loop left work for another event (a write waiting for the
		// checkpoint this one ran). When the queue is full, the events
		// in it carry on instead (as does the next tick).
		select {
		case n.events <- n.continueEvent:
		default:
		}
	}
	// The membership changes with its entry's index (or, when an entry is
	// overwritten at the same index, with the term).
	if ci, t := n.loop.Raft().ConfigIndex(), n.loop.Raft().Basic().Term; ci != n.seenConfigIndex || t != n.seenConfigTerm || n.members.Load() == nil {
		n.seenConfigIndex, n.seenConfigTerm = ci, t
		m := n.loop.Raft().Status().Config
		n.members.Store(m)
		if str := m.String(); str != n.seenMembers {
			n.seenMembers = str
			n.log.Info("membership", "index", ci, "servers", str)
		}
	}
	n.leading.Store(n.IsLeaderLocked())
	n.raftLeading.Store(n.loop.Raft().Basic().State == raft.StateLeader)
	if b := n.loop.Raft().Basic(); b.State != raft.StateLeader {
		if n.keepAlive.Load() != nil {
			n.keepAlive.Store(nil)
		}
	} else if ka := n.keepAlive.Load(); ka == nil || ka.term != b.Term {
		n.prepareKeepAlive() // a new leader: do not wait for the next tick
	}
	n.logRaftChanges()
	n.logProgress()
	n.logStop()
	n.changedMu.Lock()
	close(n.changed)
	n.changed = make(chan struct{})
	n.changedMu.Unlock()
}

// logStop logs, once, why the loop stopped the node (a storage failure or
// an entry it could not apply).
func (n *Node) logStop() {
	err := n.loop.Err()
	if err == nil || n.stopLogged {
		return
	}
	n.stopLogged = true
	if errors.Is(err, loop.ErrApplyFailed) {
		n.log.Error("a committed entry failed to apply: the node stopped applying and writing "+
			"(it would diverge from the others); restart it, or replace it with a fresh node", "applied", n.loop.Applied(), "err", err)
		return
	}
	n.log.Error("storage failed: the node stopped writing", "err", err)
}

// logRaftChanges logs changes of term, state and known leader.
func (n *Node) logRaftChanges() {
	b := n.loop.Raft().Basic()
	if b.Term == n.seenTerm && b.State == n.seenState && b.Lead == n.seenLead {
		return
	}
	n.seenTerm, n.seenState, n.seenLead = b.Term, b.State, b.Lead
	n.log.Info("raft state", "term", b.Term, "state", b.State.String(), "leader", b.Lead)
}

// progressEvery is how many applied entries pass between progress lines
// while the node catches up (start-up replay, a follower far behind).
const progressEvery = 10000

// logProgress logs catching up with a long backlog of committed entries.
func (n *Node) logProgress() {
	b := n.loop.Raft().Basic()
	applied := n.loop.Applied()
	if n.progressFrom == 0 && (applied >= b.Commit || b.Commit-applied < progressEvery) {
		return
	}
	switch {
	case n.progressFrom == 0:
		n.progressFrom, n.progressLogged = applied, applied
		n.log.Info("catching up with committed entries", "applied", applied, "commit", b.Commit)
	case applied >= b.Commit:
		n.log.Info("caught up", "applied", applied, "entries", applied-n.progressFrom)
		n.progressFrom = 0
	case applied-n.progressLogged >= progressEvery:
		n.progressLogged = applied
		n.log.Info("catching up", "applied", applied, "commit", b.Commit)
	}
}

// diskWriter performs appends outside the loop.
func (n *Node) diskWriter() {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case job := <-n.disk:
			start := time.Now()
			err := n.wal.Append(job.Entries)
			d := uint64(time.Since(start))
			n.metrics.fsyncs.Add(1)
			n.metrics.fsyncNanos.Add(d)
			n.metrics.appendEntries.Add(uint64(len(job.Entries)))
			for _, e := range job.Entries {
				n.metrics.appendBytes.Add(uint64(len(e.Data)))
			}
			if d > n.metrics.fsyncMaxNanos.Load() {
				n.metrics.fsyncMaxNanos.Store(d) // one writer: this goroutine
			}
			if err != nil {
				n.log.Error("log append failed: the node stops writing", "err", err)
			}
			if !n.post(func() {
				n.eventKind = "log written"
				n.handle(n.loop.WriteDone(job, err))
			}) {
				return
			}
			// Segments a compaction dropped from the log: removed here,
			// after the write's result is on its way, not on the loop.
			if err := n.wal.RemoveCompacted(); err != nil {
				n.log.Error("removing compacted log segments failed: the node stops writing", "err", err)
			}
		}
	}
}

// post queues fn for the loop goroutine; false once the node is closing.
func (n *Node) post(fn func()) bool {
	select {
	case n.events <- fn:
		return true
	case <-n.stop:
		return false
	}
}

func (n *Node) failWaiters(err error) {
	for id, ch := range n.waiters {
		delete(n.waiters, id)
		ch <- loop.Reply{ID: id, Err: err}
	}
}

// do runs fn in the loop goroutine and waits for it.
func (n *Node) do(fn func()) bool {
	done := make(chan struct{})
	if !n.post(func() { fn(); close(done) }) {
		return false
	}
	select {
	case <-done:
		return true
	case <-n.stop:
		return false
	}
}
