package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// Write writes report.md, report.json and throughput.svg into dir.
func (r *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), js, 0o644); err != nil {
		return err
	}
	var md strings.Builder
	r.Markdown(&md)
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	if len(r.Results) == 0 {
		return nil // the large workload alone: no throughput to draw
	}
	var svg strings.Builder
	r.SVG(&svg)
	return os.WriteFile(filepath.Join(dir, "throughput.svg"), []byte(svg.String()), 0o644)
}

func (r *Report) find(workload string, clients int, system string) *Result {
	for i := range r.Results {
		x := &r.Results[i]
		if x.Workload == workload && x.Clients == clients && x.System == system {
			return x
		}
	}
	return nil
}

// Markdown writes the results table: per workload and system, the median
// throughput with its range, latencies, the ratio to frame replication,
// bytes replicated and written per operation and resident memory.
func (r *Report) Markdown(w io.Writer) {
	fmt.Fprintf(w, "Run %s on %s, %s%s. Floor: fsync of a 4 KiB append p50 %.2f ms (p99 %.2f ms; p50 %.2f ms when three writers sync at once, as three nodes on one disk do), loopback round trip %.0f µs.\n\n",
		r.Date, r.Machine, r.Go, map[bool]string{true: ", -short", false: ""}[r.Short],
		r.Floor.FsyncP50Ms, r.Floor.FsyncP99Ms, r.Floor.Fsync3P50Ms, r.Floor.LoopbackRTTUs)
	if len(r.Results) > 0 {
		r.resultsMarkdown(w)
	}
	if r.Large != nil {
		if len(r.Results) > 0 {
			fmt.Fprintln(w)
		}
		r.Large.Markdown(w)
	}
}

func (r *Report) resultsMarkdown(w io.Writer) {
	fmt.Fprintln(w, "| workload | clients | system | ops/s median (min-max) | vs frames | p50 ms | p99 ms | replicated B/op | written B/op | CPU ms/op per node | reads served per node | RSS MiB per node |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, x := range r.Results {
		ratio := "-"
		if f := r.find(x.Workload, x.Clients, "frames"); f != nil && f.Throughput > 0 && x.Throughput > 0 {
			ratio = fmt.Sprintf("%.2f×", x.Throughput/f.Throughput)
		}
		tp := fmt.Sprintf("%.0f (%.0f-%.0f)", x.Throughput, x.ThroughputMin, x.ThroughputMax)
		if x.FailureMessage != "" {
			tp = "failed: " + x.FailureMessage
		}
		var rss, cpu, share []string
		for _, b := range x.RSSMiB {
			rss = append(rss, fmt.Sprint(b))
		}
		for _, c := range x.CPUMsPer {
			cpu = append(cpu, fmt.Sprintf("%.3f", c))
		}
		for _, f := range x.ReadShare {
			share = append(share, fmt.Sprintf("%.0f%%", 100*f))
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %.2f | %.2f | %.0f | %.0f | %s | %s | %s |\n",
			x.Workload, x.Clients, x.System, tp, ratio, x.P50Ms, x.P99Ms, x.ReplicatedPer, x.WrittenPer,
			perNode(cpu, x.LeaderFirst), perNode(share, x.LeaderFirst), perNode(rss, x.LeaderFirst))
	}
	fmt.Fprintln(w, "\nvs frames: throughput relative to frame replication in the same run (above 1: faster than frames).")
	fmt.Fprintln(w, "frames-any: the frames cluster (same processes) through a connector reading at level any (`Connector.Read = driver.ReadAny`: linearizable reads served by the followers, one per connection chosen round-robin, each asking the leader for a read index per batch of reads; writes to the leader); measured on the read workloads only.")
	if lines := r.leaderCPULines(); len(lines) > 0 {
		fmt.Fprintln(w, "\nleader CPU per read, frames-any against frames (reads on the followers against reads on the leader, same processes, same run):")
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "per node (CPU, reads served, RSS): the clusters' lists start with the leader, marked *, then the followers (a list without * is in process order: the leader was not known, or changed during the workload). CPU ms/op: each process's CPU time over the workload's operations.")
	fmt.Fprintln(w, "reads served per node: each node's share of the reads it served from its own state during the workload (dqlite_reads_total lease + round + forwarded + stale deltas).")
	fmt.Fprintln(w, "written B/op: for the clusters, log entry bytes appended plus snapshot bytes, all nodes; for sqlite, the kernel's write_bytes of the benchmark process.")
}

// leaderCPULines compares, per read workload, the leader's CPU per read
// of frames-any with that of frames (both with the leader known first).
func (r *Report) leaderCPULines() []string {
	var out []string
	for _, x := range r.Results {
		if x.System != "frames-any" || !x.LeaderFirst || len(x.CPUMsPer) == 0 {
			continue
		}
		f := r.find(x.Workload, x.Clients, "frames")
		if f == nil || !f.LeaderFirst || len(f.CPUMsPer) == 0 || f.CPUMsPer[0] <= 0 {
			continue
		}
		out = append(out, fmt.Sprintf("- %s/%d: %.4f against %.4f ms, a ratio of %.2f",
			x.Workload, x.Clients, x.CPUMsPer[0], f.CPUMsPer[0], x.CPUMsPer[0]/f.CPUMsPer[0]))
	}
	return out
}

// perNode joins a per-node list, the first figure marked * when it is the
// leader's.
func perNode(xs []string, leaderFirst bool) string {
	if leaderFirst && len(xs) > 0 {
		xs = append([]string{xs[0] + "*"}, xs[1:]...)
	}
	return strings.Join(xs, ", ")
}

// perNodeLog is a result's per-node figures for the progress log.
func perNodeLog(x Result) string {
	if len(x.CPUMsPer) < 2 {
		return ""
	}
	var cpu, share []string
	for _, c := range x.CPUMsPer {
		cpu = append(cpu, fmt.Sprintf("%.3f", c))
	}
	for _, f := range x.ReadShare {
		share = append(share, fmt.Sprintf("%.0f%%", 100*f))
	}
	s := fmt.Sprintf(" CPU ms/op %s (%s)", perNode(cpu, x.LeaderFirst), strings.Join(x.Nodes, ", "))
	if len(share) > 0 {
		s += " reads " + perNode(share, x.LeaderFirst)
	}
	return s
}

// SVG draws insert throughput against client count, one line per system.
func (r *Report) SVG(w io.Writer) {
	const W, H, left, bottom, top, right = 640, 400, 70, 50, 30, 120
	clients := []int{1, 8, 32, 128}
	systems := []string{}
	maxTP := 1.0
	for _, x := range r.Results {
		if x.Workload != "insert" {
			continue
		}
		if !contains(systems, x.System) {
			systems = append(systems, x.System)
		}
		maxTP = math.Max(maxTP, x.Throughput)
	}
	maxTP = niceCeil(maxTP)
	xOf := func(i int) float64 { return left + float64(i)*float64(W-left-right)/float64(len(clients)-1) }
	yOf := func(v float64) float64 { return float64(H-bottom) - v/maxTP*float64(H-bottom-top) }
	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(w, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	fmt.Fprintf(w, `<text x="%d" y="18" font-size="14">Autocommit INSERT throughput against clients (%s)</text>`+"\n", left, r.Date[:10])
	fmt.Fprintf(w, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, H-bottom, W-right, H-bottom)
	fmt.Fprintf(w, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, H-bottom)
	for i, c := range clients {
		fmt.Fprintf(w, `<text x="%.0f" y="%d" text-anchor="middle">%d</text>`+"\n", xOf(i), H-bottom+18, c)
	}
	fmt.Fprintf(w, `<text x="%d" y="%d" text-anchor="middle">clients</text>`+"\n", (left+W-right)/2, H-12)
	for k := 0; k <= 4; k++ {
		v := maxTP * float64(k) / 4
		fmt.Fprintf(w, `<text x="%d" y="%.0f" text-anchor="end">%.0f</text>`+"\n", left-6, yOf(v)+4, v)
		fmt.Fprintf(w, `<line x1="%d" y1="%.0f" x2="%d" y2="%.0f" stroke="#ddd"/>`+"\n", left, yOf(v), W-right, yOf(v))
	}
	fmt.Fprintf(w, `<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">ops/s</text>`+"\n", (top+H-bottom)/2, (top+H-bottom)/2)
	colors := []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}
	for si, s := range systems {
		var pts []string
		for i, c := range clients {
			if x := r.find("insert", c, s); x != nil && x.Throughput > 0 {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(i), yOf(x.Throughput)))
			}
		}
		col := colors[si%len(colors)]
		fmt.Fprintf(w, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		for _, p := range pts {
			xy := strings.Split(p, ",")
			fmt.Fprintf(w, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", xy[0], xy[1], col)
		}
		fmt.Fprintf(w, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", W-right+10, top+20+18*si, col, s)
	}
	fmt.Fprintln(w, "</svg>")
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}
