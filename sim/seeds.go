package sim

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Summary aggregates the results of many seeds.
type Summary struct {
	Seeds      int
	Failed     []Result
	Faults     map[string]int
	Simulated  time.Duration
	Real       time.Duration
	Ops        int
	Unknown    int
	NotProven  int // seeds whose linearizability check timed out
	Violations int
}

// RunSeeds runs seeds [first, first+count) with the options opts returns
// for each, using up to workers goroutines (each seed stays single-threaded
// and deterministic), and aggregates.
func RunSeeds(first uint64, count, workers int, opts func(seed uint64) Options, onResult func(Result)) Summary {
	start := time.Now()
	results := make([]Result, count)
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < max(1, workers); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i] = Run(opts(first + uint64(i)))
			}
		}()
	}
	for i := 0; i < count; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	sum := Summary{Seeds: count, Faults: map[string]int{}, Real: time.Since(start)}
	for _, r := range results {
		if onResult != nil {
			onResult(r)
		}
		for k, v := range r.Faults {
			sum.Faults[k] += v
		}
		sum.Simulated += r.Simulated
		sum.Ops += r.Ops
		sum.Unknown += r.Unknown
		if r.Linearizable == "unknown" {
			sum.NotProven++
		}
		if len(r.Violations) > 0 {
			sum.Failed = append(sum.Failed, r)
			sum.Violations += len(r.Violations)
		}
	}
	return sum
}

// Line is the one summary line: seeds=N violations=V simulated=D real=D
// seeds/s=R.
func (s Summary) Line() string {
	rate := 0.0
	if s.Real > 0 {
		rate = float64(s.Seeds) / s.Real.Seconds()
	}
	return fmt.Sprintf("seeds=%d violations=%d simulated=%v real=%v seeds/s=%.1f", s.Seeds, s.Violations,
		s.Simulated.Round(time.Millisecond), s.Real.Round(time.Millisecond), rate)
}

// FaultLine lists the count of every fault kind injected, sorted by name.
func (s Summary) FaultLine() string {
	var keys []string
	for k := range s.Faults {
		keys = append(keys, k)
	}
	for _, k := range RequiredFaults { // listed at 0 too, so a gap shows
		if _, ok := s.Faults[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("faults:")
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, s.Faults[k])
	}
	fmt.Fprintf(&b, "\nops=%d unknown-outcome=%d linearizability-not-proven=%d", s.Ops, s.Unknown, s.NotProven)
	return b.String()
}

// RequiredFaults are the fault kinds every CI-sized run must inject at
// least once across its seeds; a run that never exercised one fails.
var RequiredFaults = []string{"drop", "duplicate", "reorder", "partition-isolate", "partition-halves",
	"partition-oneway", "partition-flap", "links-one-by-one", "crash", "restart", "pause", "clock-jump",
	"slow-disk", "add", "promote", "demote", "remove", "remove-leader", "rejoin-new-id", "transfer",
	"crash-mid-write", "disk-torn-write", "disk-lost-unsynced-file", "eio", "disk-eio", "enospc", "disk-enospc",
	"bitflip", "bitflip-detected", "storage-failure-restart", "torn-tail-recovered", "disk-read-eio", "disk-corrupt-read",
	"stale-leader", "slow-leader-disk", "slow-node-disk", "slow-disk-failover", "heal-one-down", "heal-one-isolated",
	"membership-crash-leader", "membership-partial", "heal-partial-change", "heal-partial-join"}

// RequiredSQLiteFaults are required on top of RequiredFaults in SQLite
// mode: the bank and counter workloads' checks and retries, crashes and
// torn writes on the database files' mark files, and a write started at
// the event after the checkpoint that held it (loop.Output.Again).
var RequiredSQLiteFaults = []string{"bank-check", "bank-tx-commit", "dedup-check", "dedup-retry", "dedup-resend",
	"dbmark-crash", "dbmark-torn", "event-continued"}

// Missing returns the required fault kinds never injected (with the SQLite
// ones when sqlite).
func (s Summary) Missing(sqlite bool) []string {
	var out []string
	kinds := RequiredFaults
	if sqlite {
		kinds = append(append([]string(nil), kinds...), RequiredSQLiteFaults...)
	}
	for _, k := range kinds {
		if s.Faults[k] == 0 {
			out = append(out, k)
		}
	}
	return out
}
