package wal_test

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wal"
)

// The log of TestReadDuringSuffixReplacement: entries 1..stableLast are
// never replaced, every later one is, and the log always ends at lastIndex.
const (
	stableLast = 10
	lastIndex  = 22
)

// paddedEnts is ents with padding that depends on the term: the entries of
// term 1 are large, so each of their batches fills a segment and the last
// never-replaced entry starts a segment of its own with room after it; the
// replacements are small or medium, so a suffix sometimes fits in the
// segment holding the cut and sometimes starts a new one.
func paddedEnts(from, to, term uint64) []raft.Entry {
	pad := 0
	switch {
	case term == 1:
		pad = 300
	case term*2654435761>>5%3 == 0:
		pad = 80
	}
	es := ents(from, to, term)
	for n := range es {
		es[n].Data = append(es[n].Data, strings.Repeat("p", pad)...)
	}
	return es
}

// checkEntries reports what is wrong with es, the answer to Entries(lo, hi):
// it must start at lo, be consecutive and stay below hi; each entry must
// hold what paddedEnts wrote for its index and term, have term 1 up to
// stableLast, and terms never decrease (the writer replaces suffixes with
// ever higher terms, so a mix of two versions of the log shows as a drop).
func checkEntries(es []raft.Entry, lo, hi uint64) error {
	if len(es) == 0 || es[len(es)-1].Index >= hi {
		return fmt.Errorf("entries [%d,%d): %d entries", lo, hi, len(es))
	}
	prev := uint64(1)
	for n, e := range es {
		want := paddedEnts(e.Index, e.Index, e.Term)[0].Data
		switch {
		case e.Index != lo+uint64(n):
			return fmt.Errorf("entries [%d,%d): entry %d has index %d", lo, hi, n, e.Index)
		case e.Index <= stableLast && e.Term != 1:
			return fmt.Errorf("entry %d has term %d, want 1", e.Index, e.Term)
		case e.Term < prev:
			return fmt.Errorf("entry %d has term %d after term %d", e.Index, e.Term, prev)
		case string(e.Data) != string(want):
			return fmt.Errorf("entry %d term %d holds %.40q", e.Index, e.Term, e.Data)
		}
		prev = e.Term
	}
	return nil
}

// readFailures counts failed reads by kind and keeps the first messages.
type readFailures struct {
	mu    sync.Mutex
	count map[string]int
	first []string
}

func (f *readFailures) add(kind string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.count == nil {
		f.count = map[string]int{}
	}
	f.count[kind]++
	if len(f.first) < 5 {
		f.first = append(f.first, kind+": "+err.Error())
	}
}

// TestReadDuringSuffixReplacement replaces a suffix of the log over and
// over while other goroutines read it, as the loop reads while the disk
// goroutine appends. Each append runs from a random cut after stableLast to
// lastIndex, with a new term, so the log never gets shorter; small segments
// make cuts land inside a segment (rewritten without the cut entries, often
// the one holding never-replaced entries), at a segment's first entry and
// before later segments (removed). Every Term and Entries call must
// succeed: never-replaced entries with their own term and data, and the
// whole log as one version of it (old suffix or new, never a gap, a mix or
// a closed file). Once with the entries' data cached, once with every read
// going to the segment files. On the real file system: sim.Disk is
// single-threaded, and closing its files does not stop reads.
func TestReadDuringSuffixReplacement(t *testing.T) {
	for _, c := range []struct {
		name       string
		cacheBytes int64
	}{{"cached", 0}, {"from segments", 1}} {
		t.Run(c.name, func(t *testing.T) { testReadDuringSuffixReplacement(t, c.cacheBytes) })
	}
}

func testReadDuringSuffixReplacement(t *testing.T, cacheBytes int64) {
	const rounds = 100
	// One reader per core but one, up to 3: the writer needs a core, and
	// each reader that never pauses slows its every lock.
	readers := min(3, max(1, runtime.GOMAXPROCS(0)-1))
	fs, err := wal.NewOSFS(t.TempDir())
	must(t, err)
	w := open(t, fs, wal.Options{SegmentSizeMax: 1024, CacheBytes: cacheBytes})
	defer w.Close()
	for i := uint64(1); i <= stableLast; i += 3 {
		must(t, w.Append(paddedEnts(i, min(i+2, stableLast), 1)))
	}
	for i := uint64(stableLast + 1); i <= lastIndex; i += 4 {
		must(t, w.Append(paddedEnts(i, min(i+3, lastIndex), 2)))
	}

	var fails readFailures
	var reads atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	stop := sync.OnceFunc(func() { close(done); wg.Wait() })
	defer stop() // before w.Close, also when the writer fails
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 7))
			for {
				select {
				case <-done:
					return
				default:
				}
				if kind, err := readOnce(w, rng); err != nil {
					fails.add(kind, err)
				}
				reads.Add(1)
				// Let the writer have the lock and the core between reads.
				runtime.Gosched()
			}
		}()
	}

	rng := rand.New(rand.NewPCG(99, 7))
	var rewrites, rewritesKeepingStable, wholeRemovals, laterRemovals int
	for term := uint64(3); term < 3+rounds; term++ {
		cut := stableLast + 1 + rng.Uint64N(lastIndex-stableLast)
		if rng.IntN(3) == 0 {
			cut = stableLast + 1 + rng.Uint64N(2) // right after the never-replaced entries
		}
		firsts := w.SegmentFirstIndexes()
		holding := 0
		for n, f := range firsts {
			if f <= cut {
				holding = n
			}
		}
		switch {
		case firsts[holding] == cut:
			wholeRemovals++
		case firsts[holding] <= stableLast:
			rewritesKeepingStable++
			fallthrough
		default:
			rewrites++
		}
		laterRemovals += len(firsts) - holding - 1
		must(t, w.Append(paddedEnts(cut, lastIndex, term)))
	}
	stop()

	t.Logf("%d suffix replacements: %d rewrote the segment holding the cut (%d of them keeping never-replaced entries), "+
		"%d removed it whole, %d later segments removed; %d reads",
		rounds, rewrites, rewritesKeepingStable, wholeRemovals, laterRemovals, reads.Load())
	if rewritesKeepingStable < rounds/5 || wholeRemovals < rounds/20 || laterRemovals < rounds/10 {
		t.Errorf("the workload no longer exercises every kind of suffix replacement")
	}
	if len(fails.count) > 0 {
		t.Fatalf("failed reads %v out of %d; first: %q", fails.count, reads.Load(), fails.first)
	}
}

// readOnce does one random read; it returns what kind of read failed and
// why.
func readOnce(w *wal.WAL, rng *rand.Rand) (string, error) {
	switch rng.IntN(4) {
	case 0: // the term of a never-replaced entry
		i := 1 + rng.Uint64N(stableLast)
		if tt, err := w.Term(i); err != nil || tt != 1 {
			return "Term below every cut", fmt.Errorf("Term(%d) = %d, %v", i, tt, err)
		}
	case 1: // never-replaced entries, up to a random size
		lo := 1 + rng.Uint64N(stableLast)
		hi := lo + 1 + rng.Uint64N(stableLast+1-lo)
		es, err := w.Entries(lo, hi, rng.Uint64N(1000))
		if err == nil {
			err = checkEntries(es, lo, hi)
		}
		if err != nil {
			return "Entries below every cut", err
		}
	case 2: // any entry's term, and the last index: the log never shortens
		i := 1 + rng.Uint64N(lastIndex)
		if _, err := w.Term(i); err != nil {
			return "Term of any entry", fmt.Errorf("Term(%d): %w", i, err)
		}
		if last := w.LastIndex(); last != lastIndex {
			return "LastIndex", fmt.Errorf("LastIndex() = %d", last)
		}
	default: // the whole log
		es, err := w.Entries(1, lastIndex+1, ^uint64(0))
		if err == nil {
			err = checkEntries(es, 1, lastIndex+1)
		}
		if err != nil {
			return "Entries of the whole log", err
		}
	}
	return "", nil
}
