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

// TestLargeRun runs the large-database workload alone (dqbench -large 8MB
// -only-large) and checks that every figure of its report was measured
// and is plausible, and that the report files hold it.
func TestLargeRun(t *testing.T) {
	if testing.Short() {
		t.Skip("the large-database workload starts 4 processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Config{Reps: 1, Dir: t.TempDir(), Large: 8_000_000, OnlyLarge: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 0 {
		t.Errorf("-only-large ran %d other results", len(rep.Results))
	}
	l := rep.Large
	if l == nil {
		t.Fatal("no large result")
	}
	if l.Failure != "" {
		t.Fatalf("failure: %s", l.Failure)
	}
	check := func(ok bool, what string, v any) {
		t.Helper()
		if !ok {
			t.Errorf("%s: %v", what, v)
		}
	}
	check(l.Rows == 8000 && l.BlobBytes == 8_000_000 && l.Requests == 1 && l.Load == LoadMultiRow, "rows, bytes, requests, method",
		[]any{l.Rows, l.BlobBytes, l.Requests, l.Load})
	check(l.RowsOnLeader == l.Rows && l.RowsOnNew == l.Rows, "rows read back (leader, new node)", []any{l.RowsOnLeader, l.RowsOnNew, l.VerifyError})
	check(l.LoadSeconds > 0 && l.LoadMBps > 0, "load time, MB/s", []any{l.LoadSeconds, l.LoadMBps})
	check(l.DBFileBytes >= l.BlobBytes, "leader's database file", l.DBFileBytes)
	check(l.CopySeconds > 0 && l.CopyMBps > 0, "copy time, MB/s", []any{l.CopySeconds, l.CopyMBps})
	check(l.JoinSeconds > 0 && l.JoinTargetIndex > 0 && l.JoinReachedIndex >= l.JoinTargetIndex, "join time, target, reached",
		[]any{l.JoinSeconds, l.JoinTargetIndex, l.JoinReachedIndex})
	check(l.JoinRole == "voter" || l.JoinRole == "standby", "the new node's role", l.JoinRole)
	check(l.JoinRatio > 0, "join/copy ratio", l.JoinRatio)
	check(l.JoinLeaderPeakRSSMiB > 0 && l.JoinNewPeakRSSMiB > 0 && l.JoinLeaderPeakAnonMiB > 0 && l.JoinNewPeakAnonMiB > 0,
		"peak RSS during the join", []any{l.JoinLeaderPeakRSSMiB, l.JoinNewPeakRSSMiB, l.JoinLeaderPeakAnonMiB, l.JoinNewPeakAnonMiB})
	wr := l.Writer
	check(wr.Writes > 0 && wr.Failures == 0 && wr.Seconds > 0, "writer writes, failures, seconds", wr)
	check(wr.P50Ms > 0 && wr.P50Ms <= wr.P99Ms && wr.P99Ms <= wr.MaxMs, "writer latencies", wr)
	check(l.RestartNode == "n4" && l.RestartTargetIndex > 0 && l.RestartReachedIndex >= l.RestartTargetIndex, "restart target, reached",
		[]any{l.RestartNode, l.RestartTargetIndex, l.RestartReachedIndex})
	check(l.RestartReadySeconds > 0 && l.RestartCaughtUpSeconds > 0 && l.RestartSeconds >= max(l.RestartReadySeconds, l.RestartCaughtUpSeconds),
		"restart times", []any{l.RestartReadySeconds, l.RestartCaughtUpSeconds, l.RestartSeconds})
	// Every 100 ms, but a loaded machine (the other test packages run at
	// the same time) delays the sampler: at least one per 500 ms.
	check(l.RSSSamples >= int(l.Seconds*2), "RSS samples over the workload's seconds", []any{l.RSSSamples, l.Seconds})
	for _, ph := range []string{"load", "copy", "join", "restart", "end"} {
		check(len(l.Leaders[ph]) == 2 && l.Leaders[ph][0] == 'n', "leader at "+ph, l.Leaders)
		check(len(l.PhaseStarts[ph]) == len("15:04:05.000"), "start of "+ph, l.PhaseStarts)
	}
	check(len(l.Nodes) == 4, "nodes", len(l.Nodes))
	leaders := 0
	for i, n := range l.Nodes {
		if n.Leader {
			leaders++
		}
		check(n.Role == "voter" || n.Role == "standby", n.Name+" role", n.Role)
		check(n.PeakRSSMiB > 10 && n.HWMMiB > 10 && n.PeakRSSMiB < 4096, n.Name+" peak RSS, VmHWM", []any{n.PeakRSSMiB, n.HWMMiB})
		check(n.PeakAnonMiB > 0 && n.PeakFileMiB > 0 && n.PeakAnonMiB <= n.PeakRSSMiB && n.PeakFileMiB <= n.PeakRSSMiB,
			n.Name+" peak RssAnon, RssFile", []any{n.PeakAnonMiB, n.PeakFileMiB, n.PeakRSSMiB})
		check(n.PeakRSSByPhaseMiB["join"] > 0 && n.PeakRSSByPhaseMiB["restart"] > 0, n.Name+" per-phase RSS", n.PeakRSSByPhaseMiB)
		if i < 3 {
			check(n.PeakRSSByPhaseMiB["load"] > 0, n.Name+" RSS during the load", n.PeakRSSByPhaseMiB)
		}
		check(n.LoopEventMaxMs > 0, n.Name+" longest loop event", n.LoopEventMaxMs)
		check(n.DBFileMiB >= float64(l.BlobBytes)/(1<<20), n.Name+" database file", n.DBFileMiB)
		check(n.AppliedIndex >= l.RestartTargetIndex, n.Name+" applied index at the end", n.AppliedIndex)
	}
	check(leaders == 1, "leaders at the end", leaders)
	check(l.Nodes[3].Joined && l.Nodes[3].Restarted, "n4 joined and restarted", l.Nodes[3])

	out := t.TempDir()
	if err := rep.Write(out); err != nil {
		t.Fatal(err)
	}
	var back Report
	b, _ := os.ReadFile(filepath.Join(out, "report.json"))
	if err := json.Unmarshal(b, &back); err != nil || back.Large == nil || back.Large.JoinSeconds != l.JoinSeconds || len(back.Large.Nodes) != 4 {
		t.Fatalf("report.json: %v", err)
	}
	md, _ := os.ReadFile(filepath.Join(out, "report.md"))
	for _, want := range []string{"| join / file copy |", "| restart of n4 after SIGKILL |", "| longest loop event |", "| n4 (joined, restarted) |"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q:\n%s", want, md)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "throughput.svg")); err == nil {
		t.Errorf("throughput.svg written without throughput results")
	}
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]int64{"600MB": 600e6, "2GiB": 2 << 30, "8 MB": 8e6, "1.5GB": 1.5e9, "1000": 1000, "64KiB": 64 << 10, "0": 0} {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "MB", "12XB", "-5MB"} {
		if _, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q): no error", s)
		}
	}
}
