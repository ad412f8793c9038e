package raft

import (
	"errors"
	"testing"
)

var errDisk = errors.New("disk on fire")

// failingStorage is a MemoryStorage whose reads fail on demand.
type failingStorage struct {
	*MemoryStorage
	failTerm, failEntries, failChunk bool
}

func (s *failingStorage) Term(i uint64) (uint64, error) {
	if s.failTerm {
		return 0, errDisk
	}
	return s.MemoryStorage.Term(i)
}

func (s *failingStorage) Entries(lo, hi, maxBytes uint64) ([]Entry, error) {
	if s.failEntries {
		return nil, errDisk
	}
	return s.MemoryStorage.Entries(lo, hi, maxBytes)
}

func (s *failingStorage) SnapshotChunk(index, offset uint64, maxBytes int) ([]byte, bool, error) {
	if s.failChunk {
		return nil, false, errDisk
	}
	return s.MemoryStorage.SnapshotChunk(index, offset, maxBytes)
}

// wrapStorage recreates node id's Raft over a failingStorage on the same
// MemoryStorage.
func (h *harness) wrapStorage(id NodeID) *failingStorage {
	n := h.nodes[id]
	fs := &failingStorage{MemoryStorage: n.storage}
	c := h.config(id, n.storage, n.raft.log.applied)
	c.Storage = fs
	r, err := New(c)
	must(err)
	n.raft = r
	return fs
}

// TestStorageReadFailure makes the leader's storage fail Term, Entries or
// SnapshotChunk at the moment replication needs it, and checks: no panic,
// the error comes out in Update.StorageErr exactly once (HasUpdate says so
// until then), the node is no longer leader and never leads again, and the
// two other nodes elect a leader and commit without it.
func TestStorageReadFailure(t *testing.T) {
	cases := map[string]func(h *harness, fs *failingStorage){
		"term": func(h *harness, fs *failingStorage) {
			fs.failTerm = true
			_, _, err := h.nodes[1].raft.Propose([]byte("x")) // the append reads the previous term
			must(err)
		},
		"entries": func(h *harness, fs *failingStorage) {
			h.isolate(3)
			proposeAll(h, "c", "d")
			fs.failEntries = true
			h.heal() // node 3 needs entries from storage
		},
		"snapshot chunk": func(h *harness, fs *failingStorage) {
			h.isolate(3)
			proposeAll(h, "c", "d")
			must(h.snapshot(h.nodes[1]))
			fs.failChunk = true
			h.heal() // node 3 needs the snapshot
		},
	}
	for name, fail := range cases {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("panic: %v", p)
				}
			}()
			h := newHarness(5, nil)
			h.bootstrap(1, 2, 3)
			fs := h.wrapStorage(1)
			h.campaign(1)
			proposeAll(h, "a", "b")
			fail(h, fs)
			checkStorageFailure(t, h)
		})
	}
}

func checkStorageFailure(t *testing.T, h *harness) {
	t.Helper()
	n := h.nodes[1]
	for i := 0; i < 30 && len(n.storageErrs) == 0; i++ {
		h.tickAll(1)
	}
	if len(n.storageErrs) != 1 || !errors.Is(n.storageErrs[0], errDisk) {
		t.Fatalf("storage errors reported: %v", n.storageErrs)
	}
	if n.raft.state == StateLeader {
		t.Fatal("still leader after a storage failure")
	}
	h.isolate(1) // what the loop does: stop the node
	for i := 0; i < 100 && h.leader() == None; i++ {
		h.tickAll(1)
	}
	lead := h.leader()
	if lead == None || lead == 1 {
		t.Fatalf("leader %d after node 1's storage failed\n%s", lead, h)
	}
	h.heal()
	proposeAll(h, "after")
	h.tickAll(30)
	if len(n.storageErrs) != 1 || n.raft.state == StateLeader || n.raft.HasUpdate() {
		t.Fatalf("node 1 after failing: errors %v, state %s, update pending %v",
			n.storageErrs, n.raft.state, n.raft.HasUpdate())
	}
	for _, id := range []NodeID{2, 3} {
		if !appliedOn(h.nodes[id], "after") {
			t.Fatalf("node %d did not apply the write\n%s", id, h)
		}
	}
	if len(h.errs) > 0 {
		t.Fatalf("safety violated: %v", h.errs)
	}
}

func appliedOn(n *hnode, value string) bool {
	for _, e := range n.applied {
		if string(e.Data) == value {
			return true
		}
	}
	return false
}

// TestStorageErrUntilReported checks HasUpdate reports a recorded storage
// failure until an Update returned it, and only once.
func TestStorageErrUntilReported(t *testing.T) {
	h := newHarness(1, nil)
	h.bootstrap(1, 2, 3)
	fs := h.wrapStorage(2)
	h.campaign(1)
	r := h.nodes[2].raft
	fs.failTerm = true
	if lt := r.LastTerm(); lt != 0 {
		t.Fatalf("last term %d from failing storage", lt)
	}
	if !r.HasUpdate() {
		t.Fatal("HasUpdate false with an unreported storage error")
	}
	if u := r.Update(); !errors.Is(u.StorageErr, errDisk) || u.IsEmpty() {
		t.Fatalf("update: %+v", u)
	}
	if r.HasUpdate() {
		t.Fatal("HasUpdate true after the error was reported")
	}
	if u := r.Update(); u.StorageErr != nil {
		t.Fatalf("reported twice: %v", u.StorageErr)
	}
	// It takes no more input and starts no election.
	for i := 0; i < 50; i++ {
		r.Tick()
	}
	must(r.Step(Message{Type: MsgHeartbeat, From: 1, To: 2, Term: r.term}))
	if r.state != StateFollower || r.HasUpdate() {
		t.Fatalf("after failing: %s, update pending %v", r.state, r.HasUpdate())
	}
}
