package wal_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/sim"
	"github.com/dqlite-go/dqlite/wal"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var members = raft.Membership{Servers: []raft.Server{{ID: 1, Role: raft.Voter, Address: "a"}}}

func ents(from, to, term uint64) []raft.Entry {
	var out []raft.Entry
	for i := from; i <= to; i++ {
		out = append(out, raft.Entry{Index: i, Term: term, Type: raft.EntryNormal,
			Data: []byte(fmt.Sprintf("entry-%d-term-%d", i, term))})
	}
	return out
}

// tb is what the helpers need of *testing.T, *testing.B and *rapid.T.
type tb interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

func open(t tb, fs wal.FS, opts wal.Options) *wal.WAL {
	t.Helper()
	opts.Logger = quiet
	w, _, err := wal.Open(fs, opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return w
}

func must(t tb, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// readAll returns every entry in the log.
func readAll(t tb, w *wal.WAL) []raft.Entry {
	t.Helper()
	if w.LastIndex() < w.FirstIndex() {
		return nil
	}
	es, err := w.Entries(w.FirstIndex(), w.LastIndex()+1, ^uint64(0))
	must(t, err)
	return es
}

func sameEntries(a, b []raft.Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Index != b[i].Index || a[i].Term != b[i].Term || a[i].Type != b[i].Type || !bytes.Equal(a[i].Data, b[i].Data) {
			return false
		}
	}
	return true
}

// TestAppendReadReopen writes on the real file system, across several
// segments, with a suffix replacement, and reads everything back after a
// reopen.
func TestAppendReadReopen(t *testing.T) {
	dir := t.TempDir()
	fs, err := wal.NewOSFS(dir)
	must(t, err)
	w := open(t, fs, wal.Options{SegmentSizeMax: 300})
	must(t, w.SetHardState(raft.HardState{Term: 2, Vote: 1}))
	must(t, w.Append(ents(1, 10, 1)))
	must(t, w.Append(ents(11, 20, 1)))
	must(t, w.Append(ents(15, 25, 2))) // replaces 15..20
	want := append(ents(1, 14, 1), ents(15, 25, 2)...)
	if got := readAll(t, w); !sameEntries(got, want) {
		t.Fatalf("before reopen: got %d entries", len(got))
	}
	if tt, _ := w.Term(15); tt != 2 {
		t.Fatalf("term of 15 is %d", tt)
	}
	must(t, w.Close())
	names, _ := fs.List()
	segs := 0
	for _, n := range names {
		if strings.HasPrefix(n, "seg-") {
			segs++
		}
	}
	if segs < 3 {
		t.Fatalf("expected several segments, got %v", names)
	}
	w = open(t, fs, wal.Options{SegmentSizeMax: 300})
	defer w.Close()
	if got := readAll(t, w); !sameEntries(got, want) {
		t.Fatalf("after reopen: got %v", got)
	}
	if hs, _ := w.InitialState(); hs != (raft.HardState{Term: 2, Vote: 1}) {
		t.Fatalf("hard state %+v", hs)
	}
	// A gap is refused.
	if err := w.Append(ents(30, 31, 2)); err == nil {
		t.Fatal("gap accepted")
	}
}

// TestSnapshotsAndCompaction creates snapshots, checks compaction keeps the
// entries the older snapshot needs, chunked reads, and installing a
// received snapshot.
func TestSnapshotsAndCompaction(t *testing.T) {
	disk := sim.NewDisk(1)
	w := open(t, disk, wal.Options{SegmentSizeMax: 256})
	for i := uint64(1); i <= 60; i += 5 {
		must(t, w.Append(ents(i, i+4, 1)))
	}
	data := bytes.Repeat([]byte("state"), 100)
	must(t, w.CreateSnapshot(raft.SnapshotMeta{Index: 20, Term: 1, Config: members, ConfigIndex: 1}, data))
	if w.FirstIndex() > 21 {
		t.Fatalf("first index %d: entries after the snapshot removed", w.FirstIndex())
	}
	must(t, w.CreateSnapshot(raft.SnapshotMeta{Index: 40, Term: 1, Config: members, ConfigIndex: 1}, data))
	// The older snapshot (20) must still be usable with the log after it.
	if w.FirstIndex() > 21 {
		t.Fatalf("first index %d: entries the older snapshot needs were removed", w.FirstIndex())
	}
	must(t, w.CreateSnapshot(raft.SnapshotMeta{Index: 50, Term: 1, Config: members, ConfigIndex: 1}, data))
	if w.FirstIndex() <= 21 || w.FirstIndex() > 41 {
		t.Fatalf("first index %d after the third snapshot", w.FirstIndex())
	}
	if _, err := w.Term(w.FirstIndex() - 1); err != nil {
		t.Fatalf("term before the first index: %v", err)
	}
	// Chunks.
	var got []byte
	for {
		c, last, err := w.SnapshotChunk(50, uint64(len(got)), 64)
		must(t, err)
		got = append(got, c...)
		if last {
			break
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatal("snapshot data differs")
	}
	if _, _, err := w.SnapshotChunk(40, 0, 64); !errors.Is(err, raft.ErrSnapshotChanged) {
		t.Fatalf("old snapshot chunk: %v", err)
	}
	// Reopen keeps the newest two snapshots and the log.
	must(t, w.Close())
	w = open(t, disk, wal.Options{SegmentSizeMax: 256})
	if s := w.Snapshot(); s.Index != 50 || s.Config.String() != members.String() {
		t.Fatalf("snapshot after reopen: %+v", s)
	}
	snaps := 0
	names, _ := disk.List()
	for _, n := range names {
		if strings.HasPrefix(n, "snap-") {
			snaps++
		}
	}
	if snaps != 2 {
		t.Fatalf("%d snapshot files: %v", snaps, names)
	}
	// Install a received snapshot: the log is replaced.
	must(t, w.InstallSnapshot(raft.Snapshot{Meta: raft.SnapshotMeta{Index: 100, Term: 3, Config: members}, Data: []byte("x")}))
	if w.FirstIndex() != 101 || w.LastIndex() != 100 {
		t.Fatalf("after install: first %d last %d", w.FirstIndex(), w.LastIndex())
	}
	must(t, w.Append(ents(101, 103, 3)))
	must(t, w.Close())
	w = open(t, disk, wal.Options{SegmentSizeMax: 256})
	defer w.Close()
	if got := readAll(t, w); !sameEntries(got, ents(101, 103, 3)) {
		t.Fatalf("after install and reopen: %v", got)
	}
	if tt, err := w.Term(100); err != nil || tt != 3 {
		t.Fatalf("term at snapshot: %d %v", tt, err)
	}
}

// TestTornTailIsTruncated cuts the last segment in the middle of its last
// batch: the node starts, without that batch, and reports it.
func TestTornTailIsTruncated(t *testing.T) {
	dir := t.TempDir()
	fs, _ := wal.NewOSFS(dir)
	w := open(t, fs, wal.Options{NoPreallocate: true}) // the torn write ends the file
	must(t, w.Append(ents(1, 5, 1)))
	must(t, w.Append(ents(6, 8, 1)))
	must(t, w.Close())
	name := filepath.Join(dir, "seg-00000000000000000001.log")
	fi, _ := os.Stat(name)
	must(t, os.Truncate(name, fi.Size()-10))
	w, rep, err := wal.Open(fs, wal.Options{Logger: quiet})
	must(t, err)
	defer w.Close()
	if w.LastIndex() != 5 || rep.TruncatedFile == "" || rep.TruncatedBytes == 0 {
		t.Fatalf("last %d report %+v", w.LastIndex(), rep)
	}
	// Appends continue after the cut.
	must(t, w.Append(ents(6, 6, 2)))
}

// TestCorruptionIsReported flips a bit in a closed segment, in a snapshot
// and in the term/vote record: each is a corruption error naming the file.
func TestCorruptionIsReported(t *testing.T) {
	setup := func() *sim.Disk {
		disk := sim.NewDisk(2)
		w := open(t, disk, wal.Options{SegmentSizeMax: 200})
		must(t, w.SetHardState(raft.HardState{Term: 3, Vote: 2}))
		for i := uint64(1); i <= 30; i += 3 {
			must(t, w.Append(ents(i, i+2, 1)))
		}
		must(t, w.CreateSnapshot(raft.SnapshotMeta{Index: 5, Term: 1, Config: members, ConfigIndex: 1}, []byte("snapshot data")))
		must(t, w.Close())
		return disk
	}
	cases := map[string]func(names []string) (string, int64){
		"closed segment": func(names []string) (string, int64) { return firstWith(names, "seg-"), 100 },
		"segment header": func(names []string) (string, int64) { return firstWith(names, "seg-"), 20 },
		"snapshot":       func(names []string) (string, int64) { return firstWith(names, "snap-"), 60 },
		"metadata":       func([]string) (string, int64) { return "meta", 17 },
	}
	for name, pick := range cases {
		t.Run(name, func(t *testing.T) {
			disk := setup()
			names, _ := disk.List()
			file, off := pick(names)
			must(t, disk.FlipBit(file, off, 3))
			_, _, err := wal.Open(disk, wal.Options{Logger: quiet, SegmentSizeMax: 200})
			if !wal.IsCorruption(err) || !strings.Contains(err.Error(), file) {
				t.Fatalf("flip in %s: %v", file, err)
			}
		})
	}
}

func firstWith(names []string, prefix string) string {
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			return n
		}
	}
	return ""
}

// TestWriteErrorsAreSticky checks an EIO is not retried: every later write
// fails, and what is on disk stays readable after a reopen.
func TestWriteErrorsAreSticky(t *testing.T) {
	disk := sim.NewDisk(3)
	w := open(t, disk, wal.Options{})
	must(t, w.Append(ents(1, 3, 1)))
	disk.FailAt(1, nil)
	if err := w.Append(ents(4, 5, 1)); !errors.Is(err, syscall.EIO) || !errors.Is(err, wal.ErrFailed) {
		t.Fatalf("append on failing disk: %v", err)
	}
	if err := w.Append(ents(4, 5, 1)); !errors.Is(err, wal.ErrFailed) {
		t.Fatalf("append after failure: %v", err)
	}
	if err := w.SetHardState(raft.HardState{Term: 9}); !errors.Is(err, wal.ErrFailed) {
		t.Fatalf("hard state after failure: %v", err)
	}
	if err := w.Resume(); err == nil {
		t.Fatal("EIO resumed")
	}
	w.Close()
	w = open(t, disk, wal.Options{})
	defer w.Close()
	if w.LastIndex() < 3 {
		t.Fatalf("acknowledged entries lost: last %d", w.LastIndex())
	}
}

// TestNoSpaceThenResume fills the disk: the append fails, the log stays
// consistent, and once space returns it resumes.
func TestNoSpaceThenResume(t *testing.T) {
	disk := sim.NewDisk(4)
	// Without preallocation: a preallocated segment does not grow, so
	// appends inside it never meet ENOSPC.
	w := open(t, disk, wal.Options{NoPreallocate: true})
	must(t, w.Append(ents(1, 3, 1)))
	disk.Capacity = 300
	big := []raft.Entry{{Index: 4, Term: 1, Type: raft.EntryNormal, Data: make([]byte, 500)}}
	if err := w.Append(big); !wal.IsNoSpace(err) {
		t.Fatalf("append on a full disk: %v", err)
	}
	if err := w.Append(ents(4, 4, 1)); !wal.IsNoSpace(err) {
		t.Fatalf("append while failed: %v", err)
	}
	disk.Capacity = 0
	must(t, w.Resume())
	must(t, w.Append(big))
	must(t, w.Close())
	w = open(t, disk, wal.Options{NoPreallocate: true})
	defer w.Close()
	got := readAll(t, w)
	if len(got) != 4 || len(got[3].Data) != 500 {
		t.Fatalf("after resume: %d entries", len(got))
	}
}

// TestCacheBudget checks entries beyond the cache budget are read back
// from disk correctly.
func TestCacheBudget(t *testing.T) {
	disk := sim.NewDisk(5)
	w := open(t, disk, wal.Options{CacheBytes: 100})
	defer w.Close()
	must(t, w.Append(ents(1, 50, 1)))
	if got := readAll(t, w); !sameEntries(got, ents(1, 50, 1)) {
		t.Fatal("entries read back differ")
	}
}

// TestEveryBitFlipIsDetected flips bits across every segment file: each flip
// is reported as corruption, except in the payload of the last batch of the
// last segment, which cannot be told from a torn write and is cut off (and
// only it).
func TestEveryBitFlipIsDetected(t *testing.T) {
	build := func() *sim.Disk {
		disk := sim.NewDisk(9)
		// Without preallocation, so the last batch ends the file and the
		// offsets below are easy to compute (TestCrashAtEveryOperation and
		// TestPreallocatedTornTail cover preallocated segments).
		w := open(t, disk, wal.Options{SegmentSizeMax: 250, NoPreallocate: true})
		for i := uint64(1); i <= 12; i += 2 {
			must(t, w.Append(ents(i, i+1, 1)))
		}
		w.Close()
		return disk
	}
	disk := build()
	names, _ := disk.List()
	var segs []string
	for _, n := range names {
		if strings.HasPrefix(n, "seg-") {
			segs = append(segs, n)
		}
	}
	if len(segs) < 2 {
		t.Fatalf("want several segments: %v", names)
	}
	lastSeg := segs[len(segs)-1]
	lastBatch := disk.Size(lastSeg) - int64(16+2*(24+len("entry-11-term-1")))
	checked := 0
	for _, name := range segs {
		size := disk.Size(name)
		for off := int64(0); off < size; off += 3 {
			d := build()
			must(t, d.FlipBit(name, off, uint(off)))
			w, _, err := wal.Open(d, wal.Options{Logger: quiet, SegmentSizeMax: 250, NoPreallocate: true})
			checked++
			if name == lastSeg && off >= lastBatch {
				// The last batch: either refused (header) or cut off as a
				// torn write (payload), never accepted with bad data.
				if err == nil && w.LastIndex() != 10 {
					t.Fatalf("flip in the last batch at %d accepted: last %d", off, w.LastIndex())
				}
				if err == nil {
					w.Close()
				} else if !wal.IsCorruption(err) {
					t.Fatalf("flip in the last batch at %d: %v", off, err)
				}
				continue
			}
			if !wal.IsCorruption(err) {
				t.Fatalf("flip in %s at %d not reported as corruption: %v", name, off, err)
			}
		}
	}
	t.Logf("%d flips checked", checked)
}

// TestEmptySegmentAfterFailedWrite: a segment whose first batch never made
// it (the write failed after the header) must not be reused for entries of
// another term, and must not make the next start refuse the log.
func TestEmptySegmentAfterFailedWrite(t *testing.T) {
	disk := sim.NewDisk(11)
	opts := wal.Options{SegmentSizeMax: 200}
	w := open(t, disk, opts)
	must(t, w.Append(ents(1, 4, 1)))
	// The next append starts a new segment: fail right after its header
	// is written (create, write, sync, dir sync succeed; the batch fails).
	disk.FailAt(5, nil)
	if err := w.Append(ents(5, 5, 2)); err == nil {
		t.Fatal("append on a failing disk succeeded")
	}
	w.Close()
	w = open(t, disk, opts)
	must(t, w.Append(ents(5, 6, 3)))
	w.Close()
	w = open(t, disk, opts)
	defer w.Close()
	if got := readAll(t, w); !sameEntries(got, append(ents(1, 4, 1), ents(5, 6, 3)...)) {
		t.Fatalf("entries after reopen: %v", got)
	}
}

// TestPreallocatedTornTail tears the last batch of a preallocated segment
// (the zeros after it were never written): recovery cuts it, keeps every
// earlier entry, and a flipped bit in an earlier batch of the same segment
// is still corruption.
func TestPreallocatedTornTail(t *testing.T) {
	build := func() (*sim.Disk, string, int64) {
		disk := sim.NewDisk(12)
		w := open(t, disk, wal.Options{SegmentSizeMax: 4096})
		must(t, w.Append(ents(1, 3, 1)))
		must(t, w.Append(ents(4, 6, 1)))
		w.Close()
		names, _ := disk.List()
		seg := firstWith(names, "seg-")
		if disk.Size(seg) != 4096 {
			t.Fatalf("segment not preallocated: %d bytes", disk.Size(seg))
		}
		batch := int64(16 + 3*(24+len("entry-1-term-1")))
		return disk, seg, 56 + batch // start of the second batch
	}
	disk, seg, second := build()
	must(t, disk.FlipBit(seg, second+40, 1)) // inside the last batch's payload
	w, rep, err := wal.Open(disk, wal.Options{Logger: quiet, SegmentSizeMax: 4096})
	if err != nil || w.LastIndex() != 3 || rep.TruncatedFile != seg {
		t.Fatalf("torn last batch: last %v, report %+v, err %v", w, rep, err)
	}
	must(t, w.Append(ents(4, 4, 2)))
	w.Close()
	disk, seg, _ = build()
	must(t, disk.FlipBit(seg, 100, 1)) // inside the first batch
	if _, _, err := wal.Open(disk, wal.Options{Logger: quiet, SegmentSizeMax: 4096}); !wal.IsCorruption(err) {
		t.Fatalf("flip in an earlier batch: %v", err)
	}
}

// TestMemoryBoundedByBudget appends far more entry data than the cache
// budget: the data held in memory stays within it, and old entries are read
// back from disk intact.
func TestMemoryBoundedByBudget(t *testing.T) {
	fs, err := wal.NewOSFS(t.TempDir())
	must(t, err)
	const budget = 256 << 10
	w := open(t, fs, wal.Options{CacheBytes: budget, SegmentSizeMax: 1 << 20})
	defer w.Close()
	data := bytes.Repeat([]byte("p"), 4000)
	var maxCached int64
	for i := uint64(1); i <= 2000; i += 10 { // 8 MB of entries
		var es []raft.Entry
		for k := i; k < i+10; k++ {
			es = append(es, raft.Entry{Index: k, Term: 1, Type: raft.EntryNormal, Data: data})
		}
		must(t, w.Append(es))
		maxCached = max(maxCached, w.CachedBytes())
	}
	if maxCached > budget {
		t.Fatalf("cache held %d bytes, budget %d", maxCached, budget)
	}
	es, err := w.Entries(1, 3, 1<<20)
	if err != nil || len(es) != 2 || !bytes.Equal(es[0].Data, data) {
		t.Fatalf("old entries: %d %v", len(es), err)
	}
	t.Logf("8 MB appended, at most %d bytes cached (budget %d)", maxCached, budget)
}

// TestIndexCountsAgainstBudget appends many small entries, with snapshots
// compacting the log as a node's loop does: index and cached data together
// stay within the budget, the index's memory is released by compaction, and
// entries evicted to make room for the index read back intact.
func TestIndexCountsAgainstBudget(t *testing.T) {
	fs, err := wal.NewOSFS(t.TempDir())
	must(t, err)
	const budget = 256 << 10
	w := open(t, fs, wal.Options{CacheBytes: budget, SegmentSizeMax: 32 << 10, TrailingEntries: 100})
	defer w.Close()
	data := bytes.Repeat([]byte("q"), 200) // the retained entries' data alone nears the budget
	var maxMem, maxData int64
	const total, snapEvery = 40000, 500
	for i := uint64(1); i <= total; i += 10 {
		var es []raft.Entry
		for k := i; k < i+10; k++ {
			es = append(es, raft.Entry{Index: k, Term: 1, Type: raft.EntryNormal, Data: data})
		}
		must(t, w.Append(es))
		if last := i + 9; last%snapEvery == 0 {
			must(t, w.CreateSnapshot(raft.SnapshotMeta{Index: last, Term: 1, Config: members, ConfigIndex: 1}, []byte("s")))
		}
		maxMem = max(maxMem, w.MemoryBytes())
		maxData = max(maxData, w.CachedBytes())
	}
	if maxMem > budget {
		t.Fatalf("log held %d bytes (index and data), budget %d", maxMem, budget)
	}
	// Without compaction the index alone would be 20000 entries' worth.
	if idx := int64(total) * wal.EntryIndexBytes; idx <= budget {
		t.Fatalf("test too small: an uncompacted index (%d bytes) would fit the budget", idx)
	}
	first := w.FirstIndex()
	es, err := w.Entries(first, first+5, 1<<20)
	if err != nil || len(es) != 5 || !bytes.Equal(es[0].Data, data) {
		t.Fatalf("oldest retained entries: %d %v", len(es), err)
	}
	t.Logf("%d entries appended, at most %d bytes held (%d of them data), budget %d", total, maxMem, maxData, budget)
}

// TestFailedSuffixReplacement fails, in turn, each disk operation of an
// append that replaces a suffix across segments (with EIO, then with
// ENOSPC): the log must go on showing a prefix of the old log that keeps
// every entry below the cut and that the disk holds (a reopen finds it).
// After ENOSPC the log resumes, and an append right after its last index
// must survive a reopen: the log and the disk agree on where it ends.
func TestFailedSuffixReplacement(t *testing.T) {
	const cut = 14
	opts := wal.Options{SegmentSizeMax: 256}
	base := func() (*sim.Disk, *wal.WAL) {
		disk := sim.NewDisk(1)
		w := open(t, disk, opts)
		for i := uint64(1); i <= 30; i += 3 {
			must(t, w.Append(ents(i, i+2, 1)))
		}
		return disk, w
	}
	disk, w := base()
	if firsts := w.SegmentFirstIndexes(); firsts[len(firsts)-1] <= cut+3 {
		t.Fatalf("segments %v: want the cut inside a segment, with later ones", firsts)
	}
	before := disk.Ops()
	must(t, w.Append(ents(cut, 20, 2)))
	ops := disk.Ops() - before
	w.Close()
	old := ents(1, 30, 1)
	for n := 1; n <= ops; n++ {
		for _, fault := range []error{syscall.EIO, syscall.ENOSPC} {
			disk, w := base()
			disk.FailAt(n, fault)
			if err := w.Append(ents(cut, 20, 2)); !errors.Is(err, fault) {
				t.Fatalf("op %d/%d failing with %v: append returned %v", n, ops, fault, err)
			}
			shown := readAll(t, w)
			if len(shown) < cut-1 || !sameEntries(shown, old[:len(shown)]) {
				t.Fatalf("op %d/%d failing with %v: the log shows %d entries, not a prefix of the old log through %d",
					n, ops, fault, len(shown), cut-1)
			}
			if fault == syscall.ENOSPC {
				must(t, w.Resume())
				next := w.LastIndex() + 1
				must(t, w.Append(ents(next, next+1, 3)))
				shown = append(shown, ents(next, next+1, 3)...)
			}
			w.Close()
			disk.ClearFaults()
			r := open(t, disk, opts)
			got := readAll(t, r)
			r.Close()
			if len(got) < len(shown) || !sameEntries(got[:len(shown)], shown) {
				t.Fatalf("op %d/%d failing with %v: reopened log has %d entries, not the %d the log showed",
					n, ops, fault, len(got), len(shown))
			}
		}
	}
	t.Logf("failed each of %d operations", ops)
}

// TestTrailingBytes: behind a snapshot the log keeps TrailingEntries, but
// no more than TrailingBytes of their data (whole segments go).
func TestTrailingBytes(t *testing.T) {
	for _, limit := range []int64{0, 64 << 10} {
		fs, err := wal.NewOSFS(t.TempDir())
		must(t, err)
		w := open(t, fs, wal.Options{SegmentSizeMax: 32 << 10, TrailingEntries: 1000, TrailingBytes: limit})
		data := bytes.Repeat([]byte("b"), 4096)
		for i := uint64(1); i <= 200; i++ {
			must(t, w.Append([]raft.Entry{{Index: i, Term: 1, Type: raft.EntryNormal, Data: data}}))
		}
		must(t, w.CreateSnapshot(raft.SnapshotMeta{Index: 200, Term: 1, Config: members, ConfigIndex: 1}, []byte("s")))
		kept := int64(w.LastIndex()-w.FirstIndex()+1) * 4096
		switch {
		case limit == 0 && w.FirstIndex() != 1:
			t.Fatalf("without a byte bound the log starts at %d, want 1 (1000 trailing entries)", w.FirstIndex())
		case limit > 0 && (kept > limit+64<<10 || kept < limit):
			t.Fatalf("with %d trailing bytes the log keeps %d bytes (entries %d..%d)", limit, kept, w.FirstIndex(), w.LastIndex())
		}
		w.Close()
	}
}

// segFiles counts the segment files on disk.
func segFiles(t *testing.T, disk *sim.Disk) int {
	t.Helper()
	names, err := disk.List()
	must(t, err)
	n := 0
	for _, name := range names {
		if strings.HasPrefix(name, "seg-") {
			n++
		}
	}
	return n
}

// TestCompactedSegmentsRemovedLater: CreateSnapshot drops segments from the
// log but leaves their files to RemoveCompacted (the node's disk goroutine,
// not the loop that compacts). A crash in between brings back only older
// entries: the log reopens whole, and the next compaction drops them again.
func TestCompactedSegmentsRemovedLater(t *testing.T) {
	disk := sim.NewDisk(1)
	opts := wal.Options{SegmentSizeMax: 256}
	w := open(t, disk, opts)
	for i := uint64(1); i <= 60; i += 5 {
		must(t, w.Append(ents(i, i+4, 1)))
	}
	data := []byte("state")
	all := segFiles(t, disk)
	for _, at := range []uint64{20, 40, 50} {
		must(t, w.CreateSnapshot(raft.SnapshotMeta{Index: at, Term: 1, Config: members, ConfigIndex: 1}, data))
	}
	first := w.FirstIndex()
	if first <= 21 {
		t.Fatalf("first index %d: nothing compacted", first)
	}
	if got := segFiles(t, disk); got != all {
		t.Fatalf("%d segment files after the compaction, want all %d until RemoveCompacted", got, all)
	}
	// A crash now: the files of the dropped segments are still there.
	must(t, w.Close())
	disk.Crash()
	w = open(t, disk, opts)
	if w.FirstIndex() > first || w.LastIndex() != 60 {
		t.Fatalf("after the crash the log is %d..%d, want from at most %d to 60", w.FirstIndex(), w.LastIndex(), first)
	}
	if got := readAll(t, w); !sameEntries(got, ents(w.FirstIndex(), 60, 1)) {
		t.Fatalf("after the crash: %v", got)
	}
	must(t, w.Append(ents(61, 65, 1)))
	must(t, w.CreateSnapshot(raft.SnapshotMeta{Index: 60, Term: 1, Config: members, ConfigIndex: 1}, data))
	before := segFiles(t, disk)
	must(t, w.RemoveCompacted())
	after := segFiles(t, disk)
	if after >= before {
		t.Fatalf("RemoveCompacted left %d of %d segment files", after, before)
	}
	must(t, w.Close())
	disk.Crash() // RemoveCompacted synced the directory: the files stay gone
	if got := segFiles(t, disk); got != after {
		t.Fatalf("%d segment files after a crash, %d after RemoveCompacted", got, after)
	}
	w = open(t, disk, opts)
	defer w.Close()
	if got := readAll(t, w); !sameEntries(got, ents(w.FirstIndex(), 65, 1)) || w.FirstIndex() <= first {
		t.Fatalf("after removal and reopen the log is %d..%d", w.FirstIndex(), w.LastIndex())
	}
}
