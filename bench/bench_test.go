package bench

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestShortRun is the CI smoke run of the suite (dqbench -short): every
// workload completes on every system without errors, and the report's
// three files are written and well-formed.
func TestShortRun(t *testing.T) {
	if testing.Short() {
		t.Skip("the benchmark smoke run starts 6 processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Config{Short: true, Reps: 1, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// frames, statements and sqlite on every workload; frames-any on the
	// read workloads.
	want := 0
	for _, w := range (&Config{Short: true}).workloads() {
		want += 3
		if w.reads {
			want++
		}
	}
	if len(rep.Results) != want {
		t.Fatalf("%d results, want %d", len(rep.Results), want)
	}
	for _, r := range rep.Results {
		if r.FailureMessage != "" || r.Errors > 0 || r.Throughput <= 0 {
			t.Errorf("%s/%d on %s: %d errors, %.0f ops/s, %s", r.Workload, r.Clients, r.System, r.Errors, r.Throughput, r.FailureMessage)
		}
		if r.System == "frames" && r.Workload == "insert" && r.ReplicatedPer <= 0 {
			t.Errorf("frames insert: no replicated bytes measured")
		}
		if strings.HasPrefix(r.System, "frames") && r.Workload == "point-read" {
			// The per-node lists name the leader first; frames reads on
			// the leader alone, frames-any on every node.
			if !r.LeaderFirst || len(r.Nodes) != 3 || len(r.CPUMsPer) != 3 || len(r.ReadShare) != 3 {
				t.Errorf("%s/%d on %s: per-node figures without the leader first or the read shares: %+v", r.Workload, r.Clients, r.System, r)
				continue
			}
			if r.System == "frames" && r.ReadShare[0] < 0.99 {
				t.Errorf("%s/%d on frames: the leader served %.0f%% of the reads, want all", r.Workload, r.Clients, 100*r.ReadShare[0])
			}
			if r.System == "frames-any" && r.Clients == 32 {
				// The followers serve the reads; the leader answers
				// their read index requests.
				if r.ReadShare[0] != 0 {
					t.Errorf("%s/%d on frames-any: the leader served %.1f%% of the reads, want none (shares %v)", r.Workload, r.Clients, 100*r.ReadShare[0], r.ReadShare)
				}
				for n, sh := range r.ReadShare[1:] {
					if sh == 0 {
						t.Errorf("%s/%d on frames-any: %s served no reads (shares %v)", r.Workload, r.Clients, r.Nodes[n+1], r.ReadShare)
					}
				}
			}
		}
	}
	out := t.TempDir()
	if err := rep.Write(out); err != nil {
		t.Fatal(err)
	}
	var back Report
	b, _ := os.ReadFile(filepath.Join(out, "report.json"))
	if err := json.Unmarshal(b, &back); err != nil || len(back.Results) != want {
		t.Fatalf("report.json: %v", err)
	}
	md, _ := os.ReadFile(filepath.Join(out, "report.md"))
	if strings.Count(string(md), "\n| ") != want+1 {
		t.Fatalf("report.md has %d table rows:\n%s", strings.Count(string(md), "\n| "), md)
	}
	svg, _ := os.ReadFile(filepath.Join(out, "throughput.svg"))
	if !strings.HasPrefix(string(svg), "<svg") || strings.Count(string(svg), "<polyline") != 3 {
		t.Fatalf("throughput.svg:\n%s", svg)
	}
}
