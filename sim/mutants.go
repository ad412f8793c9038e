package sim

import (
	"fmt"
	"strings"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

// MutantResult is how the simulator did against one catalogued bug.
type MutantResult struct {
	mutant.Info
	// SQLite is true when the bug was hunted with the SQLite state machine
	// (the bugs of fsm and vfs live only there).
	SQLite bool
	// Seeds is how many seeds ran with the bug active.
	Seeds int
	// FirstSeed is the lowest seed that reported a violation (0: the bug
	// survived its budget); Oracle and Violation are its first one.
	FirstSeed uint64
	Oracle    string
	Violation string
}

// Caught reports whether a seed caught the bug.
func (r MutantResult) Caught() bool { return r.FirstSeed != 0 }

// MutantReport is the outcome of a catalogue run: every bug, and the
// unmodified code on the same seeds.
type MutantReport struct {
	Results []MutantResult
	// Baseline runs the unmodified code on every seed some bug ran on, in
	// each mode; its failures fail the run too.
	Baseline, BaselineSQLite Summary
}

// Survivors are the bugs no seed caught.
func (r MutantReport) Survivors() []MutantResult {
	var out []MutantResult
	for _, m := range r.Results {
		if !m.Caught() {
			out = append(out, m)
		}
	}
	return out
}

// needsSQLite reports whether a bug lives where only the SQLite state
// machine goes.
func needsSQLite(in mutant.Info) bool { return in.Pkg == "fsm" || in.Pkg == "vfs" }

// RunMutants runs the simulator against each bug of bugs in turn, seeds
// 1, 2, ... (workers at a time) until one reports a violation or budget
// seeds passed, then runs the unmodified code on the seeds used. opts
// gives the options of a seed (its Mutant and SQLite fields are set here).
func RunMutants(bugs []mutant.Info, budget, workers int, opts func(seed uint64) Options) MutantReport {
	var rep MutantReport
	maxSeed := map[bool]int{}
	for _, in := range bugs {
		res := MutantResult{Info: in, SQLite: needsSQLite(in)}
		chunk := max(1, workers)
		for first := 1; first <= budget && !res.Caught(); first += chunk {
			n := min(chunk, budget-first+1)
			sum := RunSeeds(uint64(first), n, workers, func(seed uint64) Options {
				o := opts(seed)
				o.Mutant, o.SQLite = in.Bug, res.SQLite
				return o
			}, nil)
			res.Seeds += n
			for _, f := range sum.Failed { // in seed order: the first is the lowest
				res.FirstSeed, res.Violation = f.Seed, f.Violations[0]
				if len(f.Oracles) > 0 {
					res.Oracle = f.Oracles[0]
				}
				break
			}
		}
		maxSeed[res.SQLite] = max(maxSeed[res.SQLite], res.Seeds)
		rep.Results = append(rep.Results, res)
	}
	base := func(sqlite bool) Summary {
		return RunSeeds(1, maxSeed[sqlite], workers, func(seed uint64) Options {
			o := opts(seed)
			o.Mutant, o.SQLite = mutant.None, sqlite
			return o
		}, nil)
	}
	rep.Baseline, rep.BaselineSQLite = base(false), base(true)
	return rep
}

// Table prints one line per bug: name, package, mode, the first failing
// seed and the oracle that fired (or SURVIVED), then the baseline.
func (r MutantReport) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-30s %-5s %-7s %-10s %-22s %s\n", "bug", "pkg", "mode", "seed", "oracle", "first violation")
	for _, m := range r.Results {
		mode := "kv"
		if m.SQLite {
			mode = "sqlite"
		}
		seed, oracle, v := "SURVIVED", "-", fmt.Sprintf("(%d seeds)", m.Seeds)
		if m.Caught() {
			seed, oracle, v = fmt.Sprint(m.FirstSeed), m.Oracle, m.Violation
			if len(v) > 110 {
				v = v[:110] + "..."
			}
		}
		fmt.Fprintf(&b, "%-30s %-5s %-7s %-10s %-22s %s\n", m.Name, m.Pkg, mode, seed, oracle, v)
	}
	fmt.Fprintf(&b, "unmodified code, kv: %s\nunmodified code, sqlite: %s\n", r.Baseline.Line(), r.BaselineSQLite.Line())
	return b.String()
}
