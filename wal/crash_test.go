package wal_test

import (
	"fmt"
	"testing"

	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/sim"
	"github.com/dqlite-go/dqlite/wal"
)

// logModel is what the log must hold: every entry ever written at each
// index (the latest wins), the term and vote, and the snapshot.
type logModel struct {
	ents map[uint64]raft.Entry
	last uint64
	hard raft.HardState
	snap uint64
}

func (m logModel) clone() logModel {
	c := m
	c.ents = make(map[uint64]raft.Entry, len(m.ents))
	for k, v := range m.ents {
		c.ents[k] = v
	}
	return c
}

type walOp struct {
	name  string
	apply func(w *wal.WAL) error
	model func(m *logModel)
}

func appendOp(from, to, term uint64) walOp {
	es := ents(from, to, term)
	return walOp{name: fmt.Sprintf("append %d..%d/%d", from, to, term),
		apply: func(w *wal.WAL) error { return w.Append(es) },
		model: func(m *logModel) {
			for i := from; i <= m.last; i++ {
				delete(m.ents, i)
			}
			for _, e := range es {
				m.ents[e.Index] = e
			}
			m.last = to
		}}
}

func hardOp(term uint64, vote raft.NodeID) walOp {
	hs := raft.HardState{Term: term, Vote: vote}
	return walOp{name: fmt.Sprintf("hard %d/%d", term, vote),
		apply: func(w *wal.WAL) error { return w.SetHardState(hs) },
		model: func(m *logModel) { m.hard = hs }}
}

func snapOp(index, term uint64) walOp {
	return walOp{name: fmt.Sprintf("snapshot %d", index),
		apply: func(w *wal.WAL) error {
			return w.CreateSnapshot(raft.SnapshotMeta{Index: index, Term: term, Config: members, ConfigIndex: 1},
				[]byte(fmt.Sprintf("state at %d", index)))
		},
		model: func(m *logModel) { m.snap = index }}
}

func installOp(index, term uint64) walOp {
	return walOp{name: fmt.Sprintf("install %d/%d", index, term),
		apply: func(w *wal.WAL) error {
			return w.InstallSnapshot(raft.Snapshot{Meta: raft.SnapshotMeta{Index: index, Term: term, Config: members},
				Data: []byte("received")})
		},
		model: func(m *logModel) {
			m.ents = map[uint64]raft.Entry{}
			m.last, m.snap = index, index
		}}
}

// crashWorkload exercises appends across segment boundaries, suffix
// replacements inside a batch and across segments, snapshots with
// compaction, and a received snapshot.
var crashWorkload = []walOp{
	hardOp(1, 1),
	appendOp(1, 5, 1),
	appendOp(6, 10, 1),
	hardOp(2, 0),
	appendOp(8, 12, 2),
	snapOp(9, 2),
	appendOp(13, 25, 2),
	appendOp(26, 40, 2),
	appendOp(30, 35, 3),
	snapOp(33, 3),
	hardOp(4, 2),
	installOp(50, 4),
	appendOp(51, 55, 4),
}

// TestCrashAtEveryOperation runs the workload once to count its disk
// operations, then for every operation n: runs it again crashing at n,
// recovers, and checks the recovered log is a prefix of what was durable
// before the crash (the state after the last acknowledged operation, or
// after the one in flight) and holds every acknowledged entry that the
// in-flight operation was not replacing.
func TestCrashAtEveryOperation(t *testing.T) {
	opts := wal.Options{SegmentSizeMax: 400, Logger: quiet}
	disk := sim.NewDisk(1)
	w := open(t, disk, opts)
	for _, op := range crashWorkload {
		must(t, op.apply(w))
	}
	total := disk.Ops()
	if total < 30 {
		t.Fatalf("workload did only %d operations", total)
	}
	for n := 1; n <= total; n++ {
		disk := sim.NewDisk(uint64(n))
		w, _, err := wal.Open(disk, opts)
		must(t, err)
		disk.CrashAt(n - disk.Ops())
		before := logModel{ents: map[uint64]raft.Entry{}}
		after := before
		inflight := "none"
		for _, op := range crashWorkload {
			next := before.clone()
			op.model(&next)
			if err := op.apply(w); err != nil {
				after, inflight = next, op.name
				break
			}
			before, after = next, next
		}
		disk.Crash()
		r, rep, err := wal.Open(disk, opts)
		if err != nil {
			t.Fatalf("crash at op %d (during %s): recovery failed: %v", n, inflight, err)
		}
		if err := checkRecovered(r, before, after); err != nil {
			t.Fatalf("crash at op %d (during %s): %v (report %+v)", n, inflight, err, rep)
		}
		r.Close()
	}
	t.Logf("crashed at each of %d operations", total)
}

func checkRecovered(r *wal.WAL, before, after logModel) error {
	hs, _ := r.InitialState()
	if hs != before.hard && hs != after.hard {
		return fmt.Errorf("hard state %+v, want %+v or %+v", hs, before.hard, after.hard)
	}
	if s := r.Snapshot().Index; s != before.snap && s != after.snap {
		return fmt.Errorf("snapshot %d, want %d or %d", s, before.snap, after.snap)
	}
	first, last := r.FirstIndex(), r.LastIndex()
	var got []raft.Entry
	if last >= first {
		var err error
		if got, err = r.Entries(first, last+1, ^uint64(0)); err != nil {
			return err
		}
	}
	// The recovered entries must match one of the two states throughout.
	matches := func(m logModel) bool {
		if last > m.last {
			return false
		}
		for _, e := range got {
			want, ok := m.ents[e.Index]
			if !ok || want.Term != e.Term || string(want.Data) != string(e.Data) {
				return false
			}
		}
		return true
	}
	if !matches(before) && !matches(after) {
		return fmt.Errorf("recovered log %d..%d is not a prefix of the log before or after the crash", first, last)
	}
	// Every acknowledged entry the in-flight operation keeps must survive.
	for i := uint64(1); i <= before.last; i++ {
		b, ok := before.ents[i]
		if !ok {
			continue
		}
		if a, ok := after.ents[i]; !ok || a.Term != b.Term {
			break // being replaced or compacted by the operation in flight
		}
		if i > last {
			return fmt.Errorf("acknowledged entry %d lost (last recovered %d)", i, last)
		}
	}
	return nil
}
