package sim

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/anishathalye/porcupine"

	"github.com/dqlite-go/dqlite/raft"
)

func entryHash(e raft.Entry) uint64 {
	h := fnv.New64a()
	h.Write([]byte{byte(e.Type)})
	h.Write(e.Data)
	return h.Sum64()
}

// checkEntry: an (index, term) pair names one entry across all nodes and
// all time (the basis of Log Matching).
func (s *Sim) checkEntry(id raft.NodeID, e raft.Entry) {
	key := [2]uint64{e.Index, e.Term}
	h := entryHash(e)
	if prev, ok := s.entries[key]; ok && prev != h {
		s.violate("log-matching", "node %d persisted a different entry at %d/%d", id, e.Index, e.Term)
		return
	}
	s.entries[key] = h
}

// checkApply: every node applies the same entry at each index (state
// machine safety).
func (s *Sim) checkApply(id raft.NodeID, e raft.Entry) {
	a := appliedEntry{term: e.Term, hash: entryHash(e)}
	if prev, ok := s.applied[e.Index]; ok && prev != a {
		s.violate("state-machine-safety", "node %d applied %d/%d (data hash %x), another node applied %d/%d (data hash %x) there",
			id, e.Index, e.Term, a.hash, e.Index, prev.term, prev.hash)
		return
	}
	s.applied[e.Index] = a
	s.tracef("apply %d %d/%d", id, e.Index, e.Term)
	if !s.opts.SQLite && e.Type == raft.EntryNormal {
		if _, val, ok := strings.Cut(string(e.Data), "="); ok {
			if _, known := s.valueIndex[val]; !known {
				s.valueIndex[val] = e.Index
			}
		}
	}
}

// checkStep runs after every event: one leader per term, commit never going
// back, applied <= commit, and leader completeness (a leader holds every
// entry committed in an earlier term).
func (s *Sim) checkStep() {
	for _, id := range s.sortedIDs() {
		n := s.nodes[id]
		if !n.up {
			continue
		}
		b := n.loop.Raft().Basic()
		prev, known := s.commits[id]
		if known && b.Commit < prev {
			s.violate("commit-monotonic", "node %d commit index went back from %d to %d", id, prev, b.Commit)
		}
		if b.State == raft.StateLeader {
			if l, ok := s.leaders[b.Term]; ok && l != id {
				s.violate("election-safety", "two leaders in term %d: %d and %d", b.Term, l, id)
			}
			s.leaders[b.Term] = id
			if known {
				if s.leaderTerm[id] == b.Term {
					s.checkCommitOwnTerm(n, prev, b)
				}
				s.recordCommits(n, prev, b)
			}
			s.leaderTerm[id] = b.Term
			s.checkLeaderComplete(n, b.Term)
		}
		if b.State != raft.StateLeader {
			delete(s.leaderTerm, id)
		}
		s.checkConfigInForce(n, b)
		s.commits[id] = b.Commit
		if b.Applied > b.Commit {
			s.violate("applied-le-commit", "node %d applied %d beyond commit %d", id, b.Applied, b.Commit)
		}
	}
}

// checkDurableBeforeSend: a vote grant leaves only once the vote is
// durable, and an acknowledgement of entries only once they are (what a
// crash right after sending would otherwise let the node forget).
func (s *Sim) checkDurableBeforeSend(n *node, m raft.Message) {
	d := n.disk
	switch {
	case m.Type == raft.MsgVoteResp && !m.Reject:
		if d.hard.Term != m.Term || d.hard.Vote != m.To {
			s.violate("durability", "node %d granted its vote in term %d to %d, but its durable term/vote is %d/%d",
				n.id, m.Term, m.To, d.hard.Term, d.hard.Vote)
		}
	case m.Type == raft.MsgAppResp && !m.Reject && m.Index > d.last:
		s.violate("durability", "node %d acknowledged entries up to %d to %d, but its durable log ends at %d",
			n.id, m.Index, m.To, d.last)
	}
}

// checkConfigInForce: once a node's log is all durable, the configuration
// it acts on is the last configuration entry of that log (or of its
// snapshot): not one whose entry was truncated, nor an older one.
func (s *Sim) checkConfigInForce(n *node, b raft.BasicStatus) {
	if b.Persisted != b.LastIndex || n.disk.last != b.LastIndex {
		return // entries wait to be written, or a snapshot to be installed
	}
	want, ok := n.disk.lastConfig()
	if !ok {
		return
	}
	r := n.loop.Raft()
	if got := r.ConfigIndex(); got != want.index {
		s.violate("config-in-force", "node %d acts on the configuration of index %d, its log's last configuration entry is at %d",
			n.id, got, want.index)
		return
	}
	if n.checkedConfig == want.index {
		return
	}
	n.checkedConfig = want.index
	if got := string(raft.EncodeMembership(r.Status().Config)); got != want.data {
		s.violate("config-in-force", "node %d's configuration in force differs from its log's entry %d", n.id, want.index)
	}
}

// checkCommitOwnTerm: a leader advances its commit index only to an entry
// of its own term (earlier terms' entries commit with it, never by being
// counted on their own: Raft §5.4.2).
func (s *Sim) checkCommitOwnTerm(n *node, prev uint64, b raft.BasicStatus) {
	if b.Commit <= prev {
		return
	}
	t, err := n.loop.Raft().Term(b.Commit)
	if err == nil && t != b.Term {
		s.violate("commit-own-term", "leader %d (term %d) moved its commit index from %d to %d, an entry of term %d",
			n.id, b.Term, prev, b.Commit, t)
	}
}

// commitInfo is what the oracle knows of a committed index: the entry's
// term and the term of the leader that committed it.
type commitInfo struct {
	entryTerm, commitTerm uint64
}

// recordCommits notes the indexes a leader just committed.
func (s *Sim) recordCommits(n *node, prev uint64, b raft.BasicStatus) {
	r := n.loop.Raft()
	for idx := max(prev, s.maxCommitted) + 1; idx <= b.Commit; idx++ {
		t, err := r.Term(idx)
		if err != nil {
			continue
		}
		s.commitInfo[idx] = commitInfo{entryTerm: t, commitTerm: b.Term}
		s.maxCommitted = idx
	}
}

// checkLeaderComplete verifies, incrementally, that a leader of term T holds
// every entry committed in a term before T.
func (s *Sim) checkLeaderComplete(n *node, term uint64) {
	key := [2]uint64{uint64(n.id), term}
	r := n.loop.Raft()
	idx := s.leaderCheck[key] + 1
	for ; idx <= s.maxCommitted; idx++ {
		c, ok := s.commitInfo[idx]
		if !ok || c.commitTerm >= term {
			continue
		}
		t, err := r.Term(idx)
		if errors.Is(err, raft.ErrCompacted) {
			continue // in the leader's snapshot
		}
		if err != nil {
			s.violate("leader-completeness", "leader %d (term %d) lacks %d/%d, committed in term %d (its log ends at %d): %v",
				n.id, term, idx, c.entryTerm, c.commitTerm, r.Basic().LastIndex, err)
			break
		}
		if t != c.entryTerm {
			s.violate("leader-completeness", "leader %d (term %d) has %d/%d, but %d/%d was committed in term %d",
				n.id, term, idx, t, idx, c.entryTerm, c.commitTerm)
			break
		}
	}
	s.leaderCheck[key] = idx - 1
}

// heal runs the liveness and convergence phase: with faults off and every
// node back, a leader must commit a write within the heal phase, and every
// member must reach the same applied index and state.
func (s *Sim) heal() {
	deadline := s.now + s.opts.HealPhase
	probe := uint64(math.MaxUint64 - 1)
	committed := false
	for s.now < deadline && !committed {
		s.runUntil(s.now + s.electionTimeout())
		l := s.leader()
		if l == nil {
			continue
		}
		s.reqOwner[probe] = nil
		if s.opts.SQLite {
			// The schema may not exist yet if no client reached a leader.
			s.sqlWrite(l, probe, schemaSQL+"INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
				"liveness", "probe")
		} else {
			out := l.loop.Propose(probe, []byte("liveness=probe"))
			s.take(l, out)
		}
		probe--
		s.runUntil(s.now + 5*s.electionTimeout())
		committed = s.anyApplied("liveness=probe")
	}
	if !committed {
		victim := ""
		if v := s.healVictim; v != nil {
			victim = fmt.Sprintf(" (node %d %s)", v.id, s.opts.HealMode)
		}
		s.violate("liveness", "no write committed within %v after faults stopped%s", s.opts.HealPhase, victim)
		return
	}
	s.restoreHealVictim()
	for s.now < deadline {
		s.runUntil(s.now + s.electionTimeout())
		if s.converged() == "" {
			return
		}
	}
	s.violate("convergence", "%s after %v", s.converged(), s.opts.HealPhase)
}

func (s *Sim) anyApplied(cmd string) bool {
	key, val, _ := cutString(cmd)
	for _, id := range s.sortedIDs() {
		n := s.nodes[id]
		if !n.up {
			continue
		}
		if s.opts.SQLite {
			rows, err := n.db.Conn().Query("SELECT v FROM kv WHERE k = ?", key)
			if err == nil && len(rows) == 1 && rows[0][0] == val {
				return true
			}
			continue
		}
		if n.kv.m[key] == val {
			return true
		}
	}
	return false
}

func cutString(cmd string) (string, string, bool) {
	for i := 0; i < len(cmd); i++ {
		if cmd[i] == '=' {
			return cmd[:i], cmd[i+1:], true
		}
	}
	return cmd, "", false
}

// converged returns "" when every voter and standby of the leader's
// membership is up with the leader's applied index and state.
func (s *Sim) converged() string {
	l := s.leader()
	if l == nil {
		return "no leader"
	}
	lb := l.loop.Raft().Basic()
	want, err := s.stateHash(l)
	if err != nil {
		return err.Error()
	}
	for _, sv := range l.loop.Raft().Status().Config.Servers {
		if sv.Role == raft.Spare {
			continue
		}
		n := s.nodes[sv.ID]
		if n == nil || !n.up {
			return fmt.Sprintf("member %d is down", sv.ID)
		}
		if n.loop.Applied() != l.loop.Applied() || n.loop.Raft().Basic().Commit != lb.Commit {
			return fmt.Sprintf("node %d applied %d, leader %d applied %d", sv.ID, n.loop.Applied(), l.id, l.loop.Applied())
		}
		if h, err := s.stateHash(n); err != nil || h != want {
			return fmt.Sprintf("node %d state differs from leader %d", sv.ID, l.id)
		}
	}
	return ""
}

// check runs the linearizability check on the history.
func (s *Sim) check() {
	end := int64(s.now) + 1
	ops := make([]porcupine.Operation, 0, len(s.history))
	for _, o := range s.history {
		ret := o.return_
		if ret < 0 {
			ret = end
		}
		ops = append(ops, porcupine.Operation{ClientId: o.client, Input: o.input, Output: o.output,
			Call: o.call, Return: ret})
	}
	s.linearizable, s.linInfo = porcupine.CheckOperationsVerbose(kvModel, ops, s.opts.CheckTimeout)
	if s.linearizable == porcupine.Illegal {
		s.violate("linearizability", "the history of %d operations is not linearizable", len(ops))
	}
}

// WriteVisualization writes porcupine's HTML timeline of the last run's
// history to dir and returns its path.
func writeVisualization(dir string, seed uint64, info porcupine.LinearizationInfo) (string, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("dqlite-sim-seed-%d.html", seed))
	return path, porcupine.VisualizePath(kvModel, info, path)
}

// stateHash digests a node's replicated state.
func (s *Sim) stateHash(n *node) (uint64, error) {
	if s.opts.SQLite {
		return sqlState(n)
	}
	return n.kv.hash(), nil
}
