package fsm

// What a loop event spent its time on, for the node's log of slow events:
// the loop's caller passes a clock in (SetClock; package fsm reads none),
// the fsm adds the time of each part of its work to a counter, and the
// caller takes the counters after each event (TakeWork). A part inside
// another (a checkpoint inside a write) counts for itself only.

// Work is one part of the fsm's work.
type Work int

const (
	WorkExecute    Work = iota // a write's SQL, its commit and its capture
	WorkApply                  // entries' frames applied to a WAL
	WorkCheckpoint             // WALs copied into their files
	WorkSync                   // waiting for a file's writes and sync
	WorkRecord                 // the record of the files replaced
	WorkSnapshot               // snapshot views, chunks, installs, DUMPs
	WorkTrim                   // idle databases' WAL memory given back
	NumWork
)

var workNames = [NumWork]string{"execute", "apply", "checkpoint", "sync", "record", "snapshot", "trim"}

// String is the part's name in logs.
func (w Work) String() string {
	if w < 0 || w >= NumWork {
		return "unknown"
	}
	return workNames[w]
}

// workTimer is the fsm's account of its work (see above).
type workTimer struct {
	now   func() int64 // nanoseconds; nil: nothing is timed
	spent [NumWork]int64
	cur   Work
	in    bool  // a part is being timed
	since int64 // when cur last started or resumed
}

// workMark is what ending a part restores.
type workMark struct {
	prev Work
	in   bool
	on   bool
}

// SetClock makes the DB time its work on now (nanoseconds; monotonic);
// nil stops it.
func (d *DB) SetClock(now func() int64) { d.work = workTimer{now: now} }

// TakeWork returns the nanoseconds spent on each part since the last call,
// and starts the counts again.
func (d *DB) TakeWork() [NumWork]int64 {
	w := d.work.spent
	d.work.spent = [NumWork]int64{}
	return w
}

// begin starts timing part w (pausing the part it is inside): defer
// d.end(d.begin(w)).
func (d *DB) begin(w Work) workMark {
	t := &d.work
	if t.now == nil {
		return workMark{}
	}
	now := t.now()
	if t.in {
		t.spent[t.cur] += now - t.since
	}
	m := workMark{prev: t.cur, in: t.in, on: true}
	t.cur, t.in, t.since = w, true, now
	return m
}

// end ends the part begin started and resumes the one it was inside.
func (d *DB) end(m workMark) {
	t := &d.work
	if !m.on || t.now == nil {
		return
	}
	now := t.now()
	t.spent[t.cur] += now - t.since
	t.cur, t.in, t.since = m.prev, m.in, now
}
