package loop

import (
	"testing"

	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/raft"
)

// readAfterCommitBeforeApply commits a write on a quorum of followers while
// the leader's own append of it is still in flight (so the leader cannot
// apply it yet), then starts a read of it. It returns the read's reply as
// it stands then, and after the append finished.
func readAfterCommitBeforeApply(t *testing.T) (before *Reply, after Reply) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	l := c.loops[lead]
	c.take(lead, l.Propose(1, []byte("x=1")))
	job := c.writes[lead]
	if job == nil {
		t.Fatal("no write job for the proposal")
	}
	delete(c.writes, lead) // the leader's disk is slow
	c.run()
	if st := l.Raft().Basic(); st.Commit < job.Entries[0].Index || l.Applied() >= job.Entries[0].Index {
		t.Fatalf("setup: commit %d applied %d, entry %d", st.Commit, l.Applied(), job.Entries[0].Index)
	}
	fsm := c.fsms[lead]
	c.take(lead, l.Read(100, func() (any, error) { return fsm.m["x"], nil }))
	c.tick(1)
	if r, ok := c.replies[100]; ok {
		before = &r
	}
	c.take(lead, l.WriteDone(job, c.stores[lead].Append(job.Entries)))
	c.run()
	return before, c.replies[100]
}

// TestReadWaitsForApply checks a read whose read index is committed but not
// yet applied on the leader waits for the apply; with
// mutant.LoopReadBeforeApply it runs at once and misses the committed write.
func TestReadWaitsForApply(t *testing.T) {
	before, after := readAfterCommitBeforeApply(t)
	if before != nil {
		t.Fatalf("read answered before its read index was applied: %+v", *before)
	}
	if after.Err != nil || after.Result != "1" {
		t.Fatalf("read after apply: %+v", after)
	}
	t.Run("mutant", func(t *testing.T) {
		mutant.Use(t, mutant.LoopReadBeforeApply)
		before, _ := readAfterCommitBeforeApply(t)
		if before == nil || before.Result == "1" {
			t.Fatalf("%s: the read waited for the apply (%+v)", mutant.LoopReadBeforeApply, before)
		}
	})
}

// fakeBatcher proposes one fixed command per batch.
type fakeBatcher struct{}

func (fakeBatcher) ExecuteBatch(batch []any) ([]byte, []any, []error) {
	results := make([]any, len(batch))
	for i := range results {
		results[i] = "batched"
	}
	return []byte("b=1"), results, make([]error, len(batch))
}
func (fakeBatcher) Proposed(index, term uint64) {}
func (fakeBatcher) Abort()                      {}

// answer is how a write was answered: its reply, and whether the leader
// had applied the write's entry when it answered.
type answer struct {
	Reply
	applied bool
}

// writeAnswers submits a raw proposal, an executed write and a batched
// write (which waits for the writer slot) on the leader of a healthy
// cluster, runs it until they applied, and returns every answer each got,
// in order.
func writeAnswers(t *testing.T) map[uint64][]answer {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	l := c.loops[lead]
	l.cfg.Batcher = fakeBatcher{}
	answers := map[uint64][]answer{}
	take := func(id raft.NodeID, out Output) {
		if id == lead {
			for _, r := range out.Replies {
				answers[r.ID] = append(answers[r.ID], answer{r, r.Index != 0 && l.Applied() >= r.Index})
			}
		}
		c.take(id, out)
	}
	take(lead, l.Propose(1, []byte("p=1")))
	take(lead, l.SubmitWrite(WriteRequest{ID: 2,
		Execute:  func() ([]byte, any, error) { return []byte("w=1"), "executed", nil },
		Proposed: func(index, term uint64) {}, Abort: func() {}}))
	take(lead, l.SubmitWrite(WriteRequest{ID: 3, Batch: "item"}))
	for i := 0; i < 300 && (len(l.pending) > 0 || len(c.writes) > 0 || len(c.msgs) > 0); i++ {
		for _, id := range c.ids() {
			if job := c.writes[id]; job != nil {
				delete(c.writes, id)
				take(id, c.loops[id].WriteDone(job, c.stores[id].Append(job.Entries)))
			}
		}
		msgs := c.msgs
		c.msgs = nil
		for _, m := range msgs {
			out, err := c.loops[m.To].Step(m)
			if err != nil {
				t.Fatal(err)
			}
			take(m.To, out)
		}
		if len(msgs) == 0 {
			for _, id := range c.ids() {
				take(id, c.loops[id].Tick())
			}
		}
	}
	if len(l.pending) != 0 {
		t.Fatalf("%d writes still pending", len(l.pending))
	}
	return answers
}

// TestWriteAnsweredOnceApplied checks writes (raw proposals, executed and
// batched writes) are answered once, when applied; with
// mutant.LoopReplyBeforeApply they are answered as succeeded before they
// applied, and only then (the apply answers nobody a second time).
func TestWriteAnsweredOnceApplied(t *testing.T) {
	results := map[uint64]any{1: 1, 2: "executed", 3: "batched"}
	check := func(t *testing.T, wantApplied bool) {
		answers := writeAnswers(t)
		for id, res := range results {
			a := answers[id]
			if len(a) != 1 {
				t.Fatalf("write %d answered %d times, want once: %+v", id, len(a), a)
			}
			if a[0].Err != nil || a[0].Index == 0 || a[0].applied != wantApplied {
				t.Fatalf("write %d: %+v, want success answered with applied=%v", id, a[0], wantApplied)
			}
			if wantApplied && a[0].Result != res {
				t.Fatalf("write %d: result %v, want %v", id, a[0].Result, res)
			}
		}
	}
	check(t, true)
	t.Run("mutant", func(t *testing.T) {
		mutant.Use(t, mutant.LoopReplyBeforeApply)
		check(t, false)
	})
}
