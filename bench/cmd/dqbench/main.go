// Command dqbench runs the benchmark suite: frame replication (3 dqlited
// processes on loopback; on the read workloads also "frames-any", the same
// cluster read at the linearizable any-node level), statement replication
// (the same, -statements),
// single-node SQLite (mattn/go-sqlite3, WAL, synchronous=FULL) and,
// optionally, an external rqlite node, on the same workloads in one run.
//
//	go run ./bench/cmd/dqbench -out bench-results            # full run (several minutes)
//	go run ./bench/cmd/dqbench -short -out /tmp/bench          # CI smoke run, under a minute
//	go run ./bench/cmd/dqbench -rqlite http://127.0.0.1:4001   # also an rqlite cluster you started
//	go run ./bench/cmd/dqbench -large 600MB -only-large -out /tmp/large  # the large-database workload alone
//
// -large SIZE (600MB, 2GiB: units of 1000 or 1024) adds the large-database
// workload after the others (-only-large: instead of them): SIZE bytes of
// 1,000-byte blobs loaded into a 3-node cluster, a 4th node joining while
// a writer writes, then killed and restarted, every node's memory sampled
// throughout (docs/BENCHMARKS.md).
//
// It writes report.md (the tables), report.json and throughput.svg (not
// with -only-large). Pass -dir to keep the data directories and node logs;
// a temporary one is kept only when the run fails.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"time"

	"github.com/dqlite-go/dqlite/bench"
)

func main() {
	short := flag.Bool("short", false, "small workloads, one repetition (CI smoke run)")
	reps := flag.Int("reps", 3, "repetitions of each workload (the table gives medians)")
	out := flag.String("out", "bench-results", "directory for report.md, report.json and throughput.svg")
	dir := flag.String("dir", "", "where data directories go (default: a temporary directory on the same disk as -out)")
	rqlite := flag.String("rqlite", "", "base URL of an external rqlite node to measure too")
	timeout := flag.Duration("timeout", time.Hour, "time limit of the whole run")
	profile := flag.String("profile", "", "directory for CPU profiles of the leader (insert with 1 and 32 clients, compute-heavy, point-read, txn-100k-rows)")
	large := flag.String("large", "", "also run the large-database workload with this many bytes of blobs (600MB, 2GiB; empty or 0: not)")
	onlyLarge := flag.Bool("only-large", false, "run the large-database workload alone (needs -large)")
	largeLoad := flag.String("large-load", bench.LoadMultiRow, "how the large workload loads each 10 MB batch: multirow (one INSERT of 10,000 rows) or txn (a transaction of 10,000 INSERTs)")
	only := flag.String("only", "", "run only the standard workloads whose \"name/clients\" matches this regular expression")
	flag.Parse()
	var onlyRE *regexp.Regexp
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			fail(fmt.Errorf("-only: %w", err))
		}
		onlyRE = re
	}
	var largeSize int64
	if *large != "" {
		n, err := bench.ParseSize(*large)
		if err != nil {
			fail(fmt.Errorf("-large: %w", err))
		}
		largeSize = n
	}
	if *onlyLarge && largeSize == 0 {
		fail(fmt.Errorf("-only-large needs -large SIZE"))
	}
	if *short {
		*reps = 1
	}
	temp := ""
	if *dir == "" {
		d, err := os.MkdirTemp("", "dqbench-")
		if err != nil {
			fail(err)
		}
		temp, *dir = d, d
	} else if err := os.MkdirAll(*dir, 0o755); err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	rep, err := bench.Run(ctx, bench.Config{Short: *short, Reps: *reps, Dir: *dir, Rqlite: *rqlite, Log: os.Stdout, Profile: *profile,
		Large: largeSize, LargeLoad: *largeLoad, OnlyLarge: *onlyLarge, Only: onlyRE})
	if rep != nil { // a failed large workload still reports what it measured
		if werr := rep.Write(*out); werr != nil {
			fail(werr)
		}
		files := "report.md, report.json"
		if len(rep.Results) > 0 {
			files += ", throughput.svg"
		}
		fmt.Printf("wrote %s/%s\n", *out, files)
	}
	if err != nil {
		if temp != "" {
			fmt.Fprintf(os.Stderr, "dqbench: data directories and node logs kept in %s\n", temp)
		}
		fail(err)
	}
	if temp != "" {
		os.RemoveAll(temp)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "dqbench:", err)
	os.Exit(1)
}
