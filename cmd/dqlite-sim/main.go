// Command dqlite-sim runs the deterministic cluster simulator over many
// seeds, or replays one seed, and reports violations.
//
//	go run ./cmd/dqlite-sim -seeds 100
//	go run ./cmd/dqlite-sim -seed 42 -v
//	go run ./cmd/dqlite-sim -mutants -seeds 1000
//
// With -mutants it runs the catalogue of deliberate bugs (internal/mutant)
// one at a time, each on seeds 1.. until a seed reports a violation or the
// -seeds budget is spent, prints per bug the first failing seed and the
// oracle that fired, then runs the unmodified code on the same seeds. The
// exit status is 1 when a bug survived or the unmodified code failed.
//
// It prints one line per failing seed with the command that replays it, and
// ends with `seeds=N violations=V simulated=D real=D` and the count of each
// fault kind injected. The exit status is 1 when any violation was found.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/sim"
)

func main() {
	seeds := flag.Int("seeds", 100, "number of seeds to run")
	first := flag.Uint64("first", 1, "first seed")
	seed := flag.Uint64("seed", 0, "replay this one seed (overrides -seeds)")
	nodes := flag.Int("nodes", 0, "initial voters (default: the seed picks 3, 4 or 5)")
	faultPhase := flag.Duration("duration", 6*time.Second, "simulated time with faults injected")
	healPhase := flag.Duration("heal", 10*time.Second, "simulated time allowed for recovery after faults")
	drop := flag.Float64("drop", 0.05, "message drop rate during faults")
	dup := flag.Float64("dup", 0.02, "message duplication rate during faults")
	reorder := flag.Float64("reorder", 0.03, "rate of messages delayed long enough to reorder")
	faultInterval := flag.Duration("fault-interval", 250*time.Millisecond, "mean simulated time between faults")
	out := flag.String("out", "", "directory for linearizability visualizations (default: temp dir)")
	verbose := flag.Bool("v", false, "print the trace of every event (with -seed)")
	workers := flag.Int("workers", runtime.NumCPU(), "seeds run in parallel")
	sqlite := flag.Bool("sqlite", false, "run the replicated SQLite state machine (key-value over SQL plus a bank workload)")
	statements := flag.Bool("statements", false, "with -sqlite: replicate statements, not frames (the comparison mode)")
	bug := flag.String("testing-bug", "", "activate one catalogued bug (internal/mutant) to see the checker fail, e.g. raft-figure8")
	mutants := flag.Bool("mutants", false, "run every catalogued bug in turn with a budget of -seeds seeds each")
	flag.Parse()
	bugs := mutant.None
	if *bug != "" {
		b, ok := mutant.Lookup(*bug)
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown -testing-bug %q; the catalogue:\n", *bug)
			for _, in := range mutant.Catalogue {
				fmt.Fprintf(os.Stderr, "  %-30s %s: %s\n", in.Name, in.Pkg, in.Rule)
			}
			os.Exit(2)
		}
		bugs = b
	}

	opts := func(s uint64) sim.Options {
		o := sim.DefaultOptions(s)
		if *nodes > 0 {
			o.Nodes = *nodes
		}
		o.FaultPhase, o.HealPhase = *faultPhase, *healPhase
		o.DropRate, o.DupRate, o.ReorderRate, o.FaultInterval = *drop, *dup, *reorder, *faultInterval
		o.OutDir, o.Mutant, o.SQLite, o.Statements = *out, bugs, *sqlite, *sqlite && *statements
		if *verbose && *seed != 0 {
			o.Trace = os.Stdout
		}
		return o
	}
	if *mutants {
		rep := sim.RunMutants(mutant.Catalogue, *seeds, *workers, opts)
		fmt.Print(rep.Table())
		for _, b := range []sim.Summary{rep.Baseline, rep.BaselineSQLite} {
			for _, r := range b.Failed {
				fmt.Printf("FAIL unmodified seed=%d: %s\n", r.Seed, strings.Join(r.Violations, "; "))
			}
		}
		if len(rep.Survivors()) > 0 || rep.Baseline.Violations > 0 || rep.BaselineSQLite.Violations > 0 {
			os.Exit(1)
		}
		return
	}
	start, count := *first, *seeds
	if *seed != 0 {
		start, count = *seed, 1
	}
	replay := replayFlags(*nodes, *faultPhase, *healPhase, *drop, *dup, *reorder, *faultInterval)
	if *bug != "" {
		replay += " -testing-bug " + *bug
	}
	if *sqlite {
		replay += " -sqlite"
	}
	sum := sim.RunSeeds(start, count, *workers, opts, func(r sim.Result) {
		if len(r.Violations) == 0 {
			return
		}
		fmt.Printf("FAIL seed=%d: %s\n  replay: go run ./cmd/dqlite-sim -seed %d%s -v\n",
			r.Seed, strings.Join(r.Violations, "; "), r.Seed, replay)
		if r.Visualization != "" {
			fmt.Printf("  linearizability visualization: %s\n", r.Visualization)
		}
	})
	fmt.Println(sum.Line())
	fmt.Println(sum.FaultLine())
	if sum.Violations > 0 {
		os.Exit(1)
	}
}

// replayFlags spells the non-default flags so the replay command is exact.
func replayFlags(nodes int, fp, hp time.Duration, drop, dup, reorder float64, fi time.Duration) string {
	var b strings.Builder
	d := sim.DefaultOptions(0)
	if nodes > 0 {
		fmt.Fprintf(&b, " -nodes %d", nodes)
	}
	if fp != d.FaultPhase {
		fmt.Fprintf(&b, " -duration %v", fp)
	}
	if hp != d.HealPhase {
		fmt.Fprintf(&b, " -heal %v", hp)
	}
	if drop != d.DropRate {
		fmt.Fprintf(&b, " -drop %v", drop)
	}
	if dup != d.DupRate {
		fmt.Fprintf(&b, " -dup %v", dup)
	}
	if reorder != d.ReorderRate {
		fmt.Fprintf(&b, " -reorder %v", reorder)
	}
	if fi != d.FaultInterval {
		fmt.Fprintf(&b, " -fault-interval %v", fi)
	}
	return b.String()
}
