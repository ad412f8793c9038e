package raft

import (
	"bytes"
	"flag"
	"fmt"
	"testing"

	"pgregory.net/rapid"
)

// TestRapidFaultSchedules draws a fault schedule as a list of actions (ticks,
// deliveries in any order, drops, duplicates, partitions, crashes, stalled
// disks, proposals, transfers, membership changes, snapshots, reads) and
// checks Raft's safety properties after every action. A failure shrinks to a
// minimal script of actions. After the faults, everything heals and the
// cluster must elect a leader and commit a write (liveness).
func TestRapidFaultSchedules(t *testing.T) {
	// Long schedules find more: raise rapid's default of 30 actions per
	// run unless the command line set it.
	if f := flag.Lookup("rapid.steps"); f != nil && f.Value.String() == "30" {
		must(f.Value.Set("200"))
		defer f.Value.Set("30")
	}
	rapid.Check(t, func(t *rapid.T) {
		seed := rapid.Uint64().Draw(t, "seed")
		h := newHarness(seed, func(c *Config) { c.MaxSnapshotChunkBytes = 8; c.MaxMsgBytes = 128 })
		h.bootstrap(1, 2, 3)
		h.addNode(4, NewMemoryStorage())
		m := &model{h: h}
		t.Repeat(map[string]func(*rapid.T){
			"":          m.checkInvariants,
			"tick":      m.tick,
			"tickAll":   m.tickAll,
			"flush":     m.flush,
			"deliver":   m.deliver,
			"drop":      m.drop,
			"duplicate": m.duplicate,
			"cut":       m.cutLink,
			"heal":      func(*rapid.T) { h.heal() },
			"crash":     m.crash,
			"hold":      m.hold,
			"release":   m.release,
			"propose":   m.propose,
			"transfer":  m.transfer,
			"conf":      m.conf,
			"snapshot":  m.snapshot,
			"read":      m.read,
		})
		m.liveness(t)
	})
}

type model struct {
	h        *harness
	proposed int
}

func (m *model) pickNode(t *rapid.T, label string) *hnode {
	return m.h.nodes[rapid.SampledFrom(m.h.ids).Draw(t, label)]
}

func (m *model) tick(t *rapid.T) {
	n := m.pickNode(t, "node")
	count := rapid.IntRange(1, 12).Draw(t, "ticks")
	m.h.tick(n.id, count)
}

func (m *model) tickAll(t *rapid.T) {
	count := rapid.IntRange(1, 5).Draw(t, "ticks")
	for i := 0; i < count; i++ {
		for _, id := range m.h.ids {
			if n := m.h.nodes[id]; !n.down {
				n.raft.Tick()
				m.h.process(n)
			}
		}
	}
}

// flush delivers every queued message, in a drawn order, and what they
// cause, for a few rounds.
func (m *model) flush(t *rapid.T) {
	rounds := rapid.IntRange(1, 4).Draw(t, "rounds")
	for r := 0; r < rounds && len(m.h.queue) > 0; r++ {
		n := len(m.h.queue)
		for i := 0; i < n && len(m.h.queue) > 0; i++ {
			m.h.deliverOne(rapid.IntRange(0, min(len(m.h.queue)-1, 3)).Draw(t, "msg"))
		}
		for _, id := range m.h.ids {
			m.h.process(m.h.nodes[id])
		}
	}
}

func (m *model) deliver(t *rapid.T) {
	if len(m.h.queue) == 0 {
		t.Skip("no message")
	}
	count := rapid.IntRange(1, 8).Draw(t, "count")
	for i := 0; i < count && len(m.h.queue) > 0; i++ {
		m.h.deliverOne(rapid.IntRange(0, len(m.h.queue)-1).Draw(t, "msg"))
		for _, id := range m.h.ids {
			m.h.process(m.h.nodes[id])
		}
	}
}

func (m *model) drop(t *rapid.T) {
	if len(m.h.queue) == 0 {
		t.Skip("no message")
	}
	i := rapid.IntRange(0, len(m.h.queue)-1).Draw(t, "msg")
	m.h.queue = append(m.h.queue[:i], m.h.queue[i+1:]...)
}

func (m *model) duplicate(t *rapid.T) {
	if len(m.h.queue) == 0 {
		t.Skip("no message")
	}
	i := rapid.IntRange(0, len(m.h.queue)-1).Draw(t, "msg")
	m.h.queue = append(m.h.queue, m.h.queue[i])
}

func (m *model) cutLink(t *rapid.T) {
	a := rapid.SampledFrom(m.h.ids).Draw(t, "from")
	b := rapid.SampledFrom(m.h.ids).Draw(t, "to")
	m.h.cut[[2]NodeID{a, b}] = true
}

func (m *model) crash(t *rapid.T) {
	n := m.pickNode(t, "node")
	if n.down {
		m.h.restart(n.id)
		return
	}
	m.h.crash(n.id)
}

func (m *model) hold(t *rapid.T) { m.pickNode(t, "node").holdWrites = true }

func (m *model) release(t *rapid.T) {
	n := m.pickNode(t, "node")
	if n.down {
		t.Skip("down")
	}
	n.holdWrites = false
	m.h.release(n.id)
	m.h.process(n)
}

func (m *model) leaderNode(t *rapid.T) *hnode {
	l := m.h.leader()
	if l == None {
		t.Skip("no leader")
	}
	return m.h.nodes[l]
}

func (m *model) propose(t *rapid.T) {
	n := m.leaderNode(t)
	m.proposed++
	_, _, _ = n.raft.Propose([]byte(fmt.Sprintf("v%d", m.proposed)))
	m.h.process(n)
}

func (m *model) transfer(t *rapid.T) {
	n := m.leaderNode(t)
	to := NodeID(rapid.IntRange(0, 4).Draw(t, "to"))
	_ = n.raft.TransferLeadership(to)
	m.h.process(n)
}

func (m *model) conf(t *rapid.T) {
	n := m.leaderNode(t)
	id := NodeID(rapid.IntRange(1, 4).Draw(t, "id"))
	var cc ConfigChange
	switch rapid.IntRange(0, 2).Draw(t, "kind") {
	case 0:
		cc = ConfigChange{Type: ConfigAdd, ID: id, Address: "x"}
	case 1:
		cc = ConfigChange{Type: ConfigAssign, ID: id, Role: Role(rapid.IntRange(1, 3).Draw(t, "role"))}
	default:
		cc = ConfigChange{Type: ConfigRemove, ID: id}
	}
	// Keep enough voters that the liveness phase can succeed: never go
	// below two voters.
	next, err := cc.apply(n.raft.config())
	if err == nil && len(next.Voters()) < 2 {
		t.Skip("would leave too few voters")
	}
	_ = n.raft.ProposeConfigChange(cc)
	m.h.process(n)
}

func (m *model) snapshot(t *rapid.T) {
	n := m.pickNode(t, "node")
	if n.down || n.raft.Status().Applied <= n.storage.Snapshot().Index {
		t.Skip("nothing to snapshot")
	}
	if err := m.h.snapshot(n); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
}

func (m *model) read(t *rapid.T) {
	n := m.leaderNode(t)
	_ = n.raft.ReadIndex(uint64(rapid.IntRange(1, 100).Draw(t, "ctx")))
	m.h.process(n)
}

// checkInvariants checks the harness's safety checks plus log matching and
// leader completeness over the nodes' logs.
func (m *model) checkInvariants(t *rapid.T) {
	h := m.h
	if len(h.errs) > 0 {
		t.Fatalf("safety violated: %v\n%s", h.errs, h)
	}
	for _, id := range h.ids {
		n := h.nodes[id]
		if n.down {
			continue
		}
		l := n.raft.log
		// Leader completeness: a leader holds every entry applied anywhere.
		if n.raft.state == StateLeader {
			for idx, e := range h.applied {
				if idx < l.firstIndex() {
					continue
				}
				if tt, err := l.term(idx); err != nil || tt != e.Term {
					t.Fatalf("leader %d (term %d) lacks committed entry %d/%d (has %d, %v)\n%s",
						id, n.raft.term, idx, e.Term, tt, err, h)
				}
			}
		}
		// Log matching against every other node, over indexes both hold.
		for _, oid := range h.ids {
			o := h.nodes[oid]
			if oid <= id || o.down {
				continue
			}
			checkLogMatching(t, n, o)
		}
	}
}

func checkLogMatching(t *rapid.T, a, b *hnode) {
	la, lb := a.raft.log, b.raft.log
	lo := max(la.firstIndex(), lb.firstIndex())
	hi := min(la.lastIndex(), lb.lastIndex())
	matched := false
	for i := hi; i >= lo && i > 0; i-- {
		ta, _ := la.term(i)
		tb, _ := lb.term(i)
		if ta != tb {
			if matched {
				t.Fatalf("logs of %d and %d share %d+ but differ at %d (terms %d, %d)", a.id, b.id, i+1, i, ta, tb)
			}
			continue
		}
		matched = true
		ea, _ := la.slice(i, i+1, 1<<20)
		eb, _ := lb.slice(i, i+1, 1<<20)
		if len(ea) == 1 && len(eb) == 1 && !bytes.Equal(ea[0].Data, eb[0].Data) {
			t.Fatalf("nodes %d and %d hold different entries at %d/%d", a.id, b.id, i, ta)
		}
	}
}

// liveness heals everything and requires a leader and a committed write.
func (m *model) liveness(t *rapid.T) {
	h := m.h
	h.heal()
	for _, id := range h.ids {
		n := h.nodes[id]
		if n.down {
			h.restart(id)
		}
		n.holdWrites = false
		h.release(id)
	}
	for i := 0; i < 200; i++ {
		h.tickAll(1)
		if l := h.leader(); l != None {
			if _, _, err := h.nodes[l].raft.Propose([]byte("final")); err == nil {
				h.tickAll(3)
				for _, e := range h.nodes[l].applied {
					if string(e.Data) == "final" {
						m.checkInvariants(t)
						return
					}
				}
			}
		}
	}
	t.Fatalf("no leader committed a write after healing\n%s", h)
}
