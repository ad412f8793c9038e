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
//
// It writes report.md (the table), report.json and throughput.svg.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
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
	profile := flag.String("profile", "", "directory for CPU profiles of the leader (insert with 1 and 32 clients, compute-heavy)")
	flag.Parse()
	if *short {
		*reps = 1
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "dqbench-")
		if err != nil {
			fail(err)
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	rep, err := bench.Run(ctx, bench.Config{Short: *short, Reps: *reps, Dir: *dir, Rqlite: *rqlite, Log: os.Stdout, Profile: *profile})
	if err != nil {
		fail(err)
	}
	if err := rep.Write(*out); err != nil {
		fail(err)
	}
	fmt.Printf("wrote %s/report.md, report.json, throughput.svg\n", *out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "dqbench:", err)
	os.Exit(1)
}
