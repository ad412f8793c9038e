package sim

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

// seedCount is the CI size unless DQLITE_SIM_SEEDS asks for a long run.
func seedCount(t *testing.T, ci int) int {
	if v := os.Getenv("DQLITE_SIM_SEEDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("DQLITE_SIM_SEEDS=%q: %v", v, err)
		}
		return n
	}
	return ci
}

func reportFailures(t *testing.T, sum Summary, flags string) {
	t.Helper()
	for _, r := range sum.Failed {
		t.Errorf("seed %d: %s\n  replay: go run ./cmd/dqlite-sim -seed %d%s -v", r.Seed,
			strings.Join(r.Violations, "; "), r.Seed, flags)
	}
	t.Log(sum.Line())
	t.Log(sum.FaultLine())
}

// TestSimulatorCI runs the CI-sized simulation: 3-node clusters under every
// network fault kind, crashes, pauses, clock skew, membership changes and
// transfers, checking Raft safety after every event, linearizability of the
// client history, liveness and convergence after the faults. It fails if any
// required fault kind was never injected.
func TestSimulatorCI(t *testing.T) {
	n := seedCount(t, 400)
	sum := RunSeeds(1, n, 2, DefaultOptions, nil)
	reportFailures(t, sum, "")
	if missing := sum.Missing(false); len(missing) > 0 && n >= 100 {
		t.Errorf("fault kinds never injected: %v", missing)
	}
	if sum.NotProven > 0 {
		t.Errorf("%d seeds' histories could not be proven linearizable in time", sum.NotProven)
	}
}

// TestSimulatorFiveNodes runs five-node clusters (two may be down at once).
func TestSimulatorFiveNodes(t *testing.T) {
	n := seedCount(t, 100)
	sum := RunSeeds(100001, n, 2, func(seed uint64) Options {
		o := DefaultOptions(seed)
		o.Nodes = 5
		return o
	}, nil)
	reportFailures(t, sum, " -nodes 5")
}

// TestDeterminism runs seeds twice and compares the trace hashes; different
// seeds must differ.
func TestDeterminism(t *testing.T) {
	for _, seed := range []uint64{7, 123} {
		a, b := Run(DefaultOptions(seed)), Run(DefaultOptions(seed))
		if a.TraceHash != b.TraceHash || a.Ops != b.Ops {
			t.Fatalf("seed %d: trace hashes %x and %x differ", seed, a.TraceHash, b.TraceHash)
		}
	}
	if Run(DefaultOptions(7)).TraceHash == Run(DefaultOptions(8)).TraceHash {
		t.Fatal("seeds 7 and 8 have the same trace")
	}
}

// TestMutants runs the simulator against every bug of the catalogue
// (internal/mutant), one at a time, and fails if one survives its seed
// budget (1000 seeds, or DQLITE_SIM_MUTANT_SEEDS) or if the unmodified code
// fails any seed a bug ran on. The log holds the table: per bug, the first
// failing seed and the oracle that fired.
func TestMutants(t *testing.T) {
	budget := 1000
	if v := os.Getenv("DQLITE_SIM_MUTANT_SEEDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("DQLITE_SIM_MUTANT_SEEDS=%q: %v", v, err)
		}
		budget = n
	}
	dir := t.TempDir()
	rep := RunMutants(mutant.Catalogue, budget, 2, func(seed uint64) Options {
		o := DefaultOptions(seed)
		o.OutDir = dir
		return o
	})
	t.Log("\n" + rep.Table())
	for _, m := range rep.Survivors() {
		t.Errorf("%s (%s: %s) survived %d seeds", m.Name, m.Pkg, m.Rule, m.Seeds)
	}
	reportFailures(t, rep.Baseline, "")
	reportFailures(t, rep.BaselineSQLite, " -sqlite")
	if len(rep.Results) != len(mutant.Catalogue) {
		t.Errorf("%d results for %d catalogued bugs", len(rep.Results), len(mutant.Catalogue))
	}
}

// TestVisualizationWritten checks an illegal history produces porcupine's
// HTML file: a read returns a value nobody wrote.
func TestVisualizationWritten(t *testing.T) {
	s := New(DefaultOptions(1))
	s.opts.OutDir = t.TempDir()
	s.history = []op{
		{client: 0, input: kvInput{put: true, key: "k", value: "a"}, call: 0, return_: 10},
		{client: 1, input: kvInput{key: "k"}, output: kvOutput{value: "b"}, call: 20, return_: 30},
	}
	s.now = 40 * time.Nanosecond
	s.check()
	r := s.result()
	if r.Linearizable != "illegal" || len(r.Violations) == 0 {
		t.Fatalf("illegal history accepted: %+v", r)
	}
	if fi, err := os.Stat(r.Visualization); err != nil || fi.Size() == 0 {
		t.Fatalf("visualization %q: %v", r.Visualization, err)
	}
}

// BenchmarkCommitThroughput reports committed entries per second of real
// time for a 3-node simulated cluster with zero network and disk latency
// and 64 clients writing.
func BenchmarkCommitThroughput(b *testing.B) {
	o := DefaultOptions(1)
	o.NoFaults, o.NoTraceHash = true, true
	o.LatencyMin, o.LatencyMax, o.DiskLatencyMin, o.DiskLatencyMax = 0, 0, 0, 0
	o.Clients = 64
	o.Keys = 64
	o.SnapshotThreshold = 1 << 20
	s := New(o)
	s.start()
	b.ResetTimer()
	start := time.Now()
	for step := time.Duration(0); s.maxCommitted < uint64(b.N); step += 10 * time.Millisecond {
		s.runUntil(step)
		s.history = s.history[:0]
	}
	b.ReportMetric(float64(s.maxCommitted)/time.Since(start).Seconds(), "entries/s")
}

// TestSimulatorSQLite runs nodes with the replicated SQLite state machine
// under the whole fault matrix (network, disk, crashes): the key-value
// workload over SQL is checked by porcupine, and a bank workload's total
// must never change.
func TestSimulatorSQLite(t *testing.T) {
	n := seedCount(t, 100)
	sum := RunSeeds(200001, n, 2, func(seed uint64) Options {
		o := DefaultOptions(seed)
		o.SQLite = true
		return o
	}, nil)
	reportFailures(t, sum, " -sqlite")
	t.Logf("bank checks %d, transfers committed in transactions spanning requests %d, counter checks %d",
		sum.Faults["bank-check"], sum.Faults["bank-tx-commit"], sum.Faults["dedup-check"])
	if missing := sum.Missing(true); len(missing) > 0 && n >= 100 {
		t.Errorf("fault kinds never injected: %v", missing)
	}
}
