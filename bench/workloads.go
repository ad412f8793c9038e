package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dqlite-go/dqlite/driver"
)

// Config sizes a run.
type Config struct {
	Short bool
	Reps  int
	Dir   string // data directories go under it
	// Rqlite, when set, is the base URL of an external rqlite node.
	Rqlite string
	Log    io.Writer
	// Profile, when set, is a directory for CPU profiles of the leader
	// during the first repetition of the insert and compute-heavy
	// workloads on the replicated systems.
	Profile string
	// Large, when above 0, also runs the large-database workload with
	// that many bytes of blobs (RunLarge); LargeLoad is its load method
	// (LoadMultiRow when empty). OnlyLarge skips the other workloads.
	Large     int64
	LargeLoad string
	OnlyLarge bool
	// Only, when set, runs just the standard workloads whose name matches
	// it (a regular expression over "name/clients", such as
	// "txn-100k|point-read/1$").
	Only *regexp.Regexp
}

// Measurement is one repetition of one workload on one system.
type Measurement struct {
	Ops        int
	Elapsed    time.Duration
	P50, P99   time.Duration
	Replicated uint64          // bytes between nodes during the workload
	Written    uint64          // bytes written to disk during the workload
	CPU        []time.Duration // CPU time per node during the workload
	// Reads are the reads each node served during the workload (clusters).
	Reads []uint64
	// Order is the process index of each entry of CPU and Reads: the
	// leader first when it was known (and the same) at both ends of the
	// workload, then the others in process order.
	Order       []int
	LeaderFirst bool
	Errors      int
}

// Throughput is operations per second.
func (m Measurement) Throughput() float64 { return float64(m.Ops) / m.Elapsed.Seconds() }

// Result is a workload's figures on one system: medians over repetitions
// with the spread of the throughput.
type Result struct {
	Workload      string    `json:"workload"`
	System        string    `json:"system"`
	Clients       int       `json:"clients"`
	Ops           int       `json:"ops"`
	Throughput    float64   `json:"throughput_ops_per_s"`
	ThroughputMin float64   `json:"throughput_min"`
	ThroughputMax float64   `json:"throughput_max"`
	ElapsedMs     float64   `json:"elapsed_ms"`
	P50Ms         float64   `json:"p50_ms"`
	P99Ms         float64   `json:"p99_ms"`
	ReplicatedPer float64   `json:"replicated_bytes_per_op"`
	WrittenPer    float64   `json:"written_bytes_per_op"`
	RSSMiB        []uint64  `json:"rss_mib_per_node,omitempty"`
	CPUMsPer      []float64 `json:"cpu_ms_per_op_per_node,omitempty"`
	// ReadShare is the fraction of the reads each node served (from the
	// nodes' dqlite_reads_total), for the clusters' read workloads.
	ReadShare []float64 `json:"read_share_per_node,omitempty"`
	// Nodes names the nodes in the order of the per-node lists (RSS, CPU,
	// read share): the leader first when LeaderFirst.
	Nodes          []string `json:"nodes,omitempty"`
	LeaderFirst    bool     `json:"leader_first,omitempty"`
	Errors         int      `json:"errors"`
	Repetitions    int      `json:"repetitions"`
	FailureMessage string   `json:"failure,omitempty"`
}

// Floor is the physical floor measured at start.
type Floor struct {
	FsyncP50Ms, FsyncP99Ms float64
	// Fsync3P50Ms is the fsync p50 when three writers (three nodes on one
	// disk) append and sync at once.
	Fsync3P50Ms   float64
	LoopbackRTTUs float64
}

// Report is a whole run.
type Report struct {
	Date    string   `json:"date"`
	Machine string   `json:"machine"`
	Go      string   `json:"go"`
	Short   bool     `json:"short"`
	Floor   Floor    `json:"floor"`
	Results []Result `json:"results"`
	// Large is the large-database workload's report (dqbench -large).
	Large *LargeResult `json:"large,omitempty"`
}

// workload is one thing to measure.
type workload struct {
	name    string
	clients int
	ops     int
	setup   func(ctx context.Context, s System, table string) error
	op      func(ctx context.Context, s System, table string, client, i int) error
	// reads: the workload is mostly reads (systems that differ from
	// another only in how they read are measured on these alone).
	reads bool
}

func (c *Config) workloads() []workload {
	scale := func(short, full int) int {
		if c.Short {
			return short
		}
		return full
	}
	createIns := func(ctx context.Context, s System, t string) error {
		return s.Exec(ctx, fmt.Sprintf("CREATE TABLE %s (id INTEGER PRIMARY KEY, v TEXT)", t))
	}
	insert := func(ctx context.Context, s System, t string, c, i int) error {
		return s.Exec(ctx, fmt.Sprintf("INSERT INTO %s (v) VALUES (?)", t), fmt.Sprintf("client %d op %d", c, i))
	}
	var ws []workload
	ws = append(ws, workload{"insert", 1, scale(150, 1500), createIns, insert, false})
	for _, n := range []int{8, 32, 128} {
		ws = append(ws, workload{"insert", n, scale(n*12, n*60), createIns, insert, false})
	}
	bulk := func(rows int) workload {
		return workload{fmt.Sprintf("txn-%dk-rows", rows/1000), 1, 1, createIns,
			func(ctx context.Context, s System, t string, c, i int) error {
				return s.Exec(ctx, fmt.Sprintf("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < %d) "+
					"INSERT INTO %s (v) SELECT printf('%%0100d', i) FROM n", rows, t))
			}, false}
	}
	ws = append(ws, bulk(10_000))
	if !c.Short {
		ws = append(ws, bulk(100_000))
	}
	srcRows := scale(20_000, 200_000)
	ws = append(ws, workload{"compute-heavy", 1, scale(3, 10),
		func(ctx context.Context, s System, t string) error {
			if err := s.Exec(ctx, fmt.Sprintf("CREATE TABLE %s_src (k INTEGER, v INTEGER); CREATE TABLE %s (g INTEGER, total INTEGER, n INTEGER)", t, t)); err != nil {
				return err
			}
			return s.Exec(ctx, fmt.Sprintf("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < %d) "+
				"INSERT INTO %s_src SELECT i, (i * 7919) %% 1000 FROM n", srcRows, t))
		},
		func(ctx context.Context, s System, t string, c, i int) error {
			// Much computation (a self-join aggregate over the table), a
			// few rows written.
			return s.Exec(ctx, fmt.Sprintf("INSERT INTO %s SELECT a.k %% 10, sum(a.v * b.v), count(*) FROM %s_src a "+
				"JOIN %s_src b ON b.k = a.k + 1 GROUP BY 1", t, t, t))
		}, false})
	kv := func(ctx context.Context, s System, t string) error {
		if err := s.Exec(ctx, fmt.Sprintf("CREATE TABLE %s (k INTEGER PRIMARY KEY, v TEXT)", t)); err != nil {
			return err
		}
		return s.Exec(ctx, fmt.Sprintf("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000) "+
			"INSERT INTO %s SELECT i, printf('value %%d', i) FROM n", t))
	}
	read := func(ctx context.Context, s System, t string, c, i int) error {
		return s.Query(ctx, fmt.Sprintf("SELECT v FROM %s WHERE k = ?", t), (c*7919+i)%1000+1)
	}
	ws = append(ws, workload{"point-read", 1, scale(300, 15000), kv, read, true})
	ws = append(ws, workload{"point-read", 32, scale(32*20, 32*1500), kv, read, true})
	// Point reads on a table four times the size of a write connection's
	// page cache (fsm.DefaultCacheBytes, 16 MiB) and 32 times a read
	// connection's (2 MiB): most pages a read needs come from the file,
	// through the VFS's file callbacks, not from SQLite's cache. Rows of
	// 1,000 random bytes, loaded in requests of 8 MiB.
	largeRows := scale(2048, 65536)
	kvLarge := func(ctx context.Context, s System, t string) error {
		if err := s.Exec(ctx, fmt.Sprintf("CREATE TABLE %s (k INTEGER PRIMARY KEY, v BLOB)", t)); err != nil {
			return err
		}
		for lo := 0; lo < largeRows; lo += 8192 {
			if err := s.Exec(ctx, fmt.Sprintf("WITH RECURSIVE n(i) AS (SELECT %d UNION ALL SELECT i+1 FROM n WHERE i < %d) "+
				"INSERT INTO %s SELECT i, randomblob(1000) FROM n", lo+1, min(lo+8192, largeRows), t)); err != nil {
				return err
			}
		}
		return nil
	}
	readLarge := func(ctx context.Context, s System, t string, c, i int) error {
		return s.Query(ctx, fmt.Sprintf("SELECT length(v) FROM %s WHERE k = ?", t), (c*7919+i*104729)%largeRows+1)
	}
	ws = append(ws, workload{"point-read-64MiB", 1, scale(300, 15000), kvLarge, readLarge, true})
	ws = append(ws, workload{"point-read-64MiB", 32, scale(32*20, 32*1500), kvLarge, readLarge, true})
	ws = append(ws, workload{"mixed-90r-10w", 32, scale(32*20, 32*500), kv,
		func(ctx context.Context, s System, t string, c, i int) error {
			if i%10 == 0 {
				return s.Exec(ctx, fmt.Sprintf("UPDATE %s SET v = ? WHERE k = ?", t), fmt.Sprint(i), (c*31+i)%1000+1)
			}
			return read(ctx, s, t, c, i)
		}, true})
	return ws
}

// run measures one repetition.
func (w workload) run(ctx context.Context, s System, table string) (Measurement, error) {
	if err := w.setup(ctx, s, table); err != nil {
		return Measurement{}, fmt.Errorf("setup: %w", err)
	}
	st0 := s.Stats()
	lat := make([][]time.Duration, w.clients)
	var errs atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < w.clients; c++ {
		n := w.ops / w.clients
		if c < w.ops%w.clients {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n && ctx.Err() == nil; i++ {
				t0 := time.Now()
				if err := w.op(ctx, s, table, c, i); err != nil {
					errs.Add(1)
					once.Do(func() { firstErr = err })
					continue
				}
				lat[c] = append(lat[c], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	st1 := s.Stats()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	m := Measurement{Ops: len(all), Elapsed: elapsed, Replicated: st1.Replicated - st0.Replicated,
		Written: st1.Written - st0.Written, Errors: int(errs.Load())}
	m.Order, m.LeaderFirst = nodeOrder(len(st1.CPU), st0.Leader, st1.Leader)
	for _, i := range m.Order {
		m.CPU = append(m.CPU, st1.CPU[i]-st0.CPU[i])
		if i < len(st0.Reads) && i < len(st1.Reads) {
			m.Reads = append(m.Reads, st1.Reads[i]-min(st0.Reads[i], st1.Reads[i])) // a restart resets the counters
		}
	}
	if len(all) > 0 {
		m.P50, m.P99 = all[len(all)/2], all[min(len(all)-1, len(all)*99/100)]
	}
	if m.Ops == 0 {
		return m, fmt.Errorf("every operation failed: %v", firstErr)
	}
	return m, nil
}

// nodeOrder lists n process indexes, the leader first when it is known and
// the same at both ends (leader numbers are 1-based, 0 unknown).
func nodeOrder(n, leader0, leader1 int) (order []int, leaderFirst bool) {
	if leader0 > 0 && leader0 == leader1 && leader0 <= n {
		order = append(order, leader0-1)
		leaderFirst = true
	}
	for i := 0; i < n; i++ {
		if !leaderFirst || i != leader0-1 {
			order = append(order, i)
		}
	}
	return order, leaderFirst
}

// readShares are the fractions of the reads each node served (nil when
// none were counted).
func readShares(reads []uint64) []float64 {
	var total uint64
	for _, r := range reads {
		total += r
	}
	if total == 0 {
		return nil
	}
	var out []float64
	for _, r := range reads {
		out = append(out, float64(r)/float64(total))
	}
	return out
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// Run runs every workload on every system, repetitions interleaved so a
// slow moment of the machine hits all systems alike, then the
// large-database workload when cfg.Large is set (alone with OnlyLarge). A
// failure of the large workload returns the report too, with what it
// measured.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.OnlyLarge && cfg.Large <= 0 {
		return nil, fmt.Errorf("only the large workload asked for, without a size")
	}
	if cfg.Reps == 0 {
		cfg.Reps = 3
	}
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, format+"\n", args...)
		}
	}
	rep := &Report{Date: time.Now().UTC().Format(time.RFC3339), Go: runtime.Version(), Short: cfg.Short,
		Machine: fmt.Sprintf("%s/%s, %d CPUs", runtime.GOOS, runtime.GOARCH, runtime.NumCPU())}
	floor, err := measureFloor(cfg.Dir)
	if err != nil {
		return nil, err
	}
	rep.Floor = floor
	if cfg.Profile != "" {
		if err := os.MkdirAll(cfg.Profile, 0o755); err != nil {
			return nil, err
		}
	}
	logf("floor: fsync of a 4 KiB append p50 %.2f ms p99 %.2f ms (p50 %.2f ms with 3 writers at once); loopback round trip %.1f µs",
		floor.FsyncP50Ms, floor.FsyncP99Ms, floor.Fsync3P50Ms, floor.LoopbackRTTUs)
	bin, err := BuildDqlited(cfg.Dir)
	if err != nil {
		return nil, err
	}
	if !cfg.OnlyLarge {
		if err := runStandard(ctx, cfg, bin, rep, logf); err != nil {
			return nil, err
		}
	}
	if cfg.Large > 0 {
		logf("large: %d bytes of %d-byte blobs, loaded by %s requests of %d rows", cfg.Large, largeRowBytes,
			map[bool]string{true: LoadMultiRow, false: cfg.LargeLoad}[cfg.LargeLoad == ""], largeBatchRows)
		lr, err := RunLarge(ctx, LargeConfig{Size: cfg.Large, Dir: filepath.Join(cfg.Dir, "large"), Bin: bin, Load: cfg.LargeLoad, Log: logf})
		rep.Large = lr
		if err != nil {
			if lr == nil {
				return nil, err
			}
			return rep, fmt.Errorf("large workload: %w", err)
		}
	}
	return rep, nil
}

// runStandard runs the workloads of Config.workloads on every system into
// rep.
func runStandard(ctx context.Context, cfg Config, bin string, rep *Report, logf func(string, ...any)) error {
	var systems []System
	readsOnly := map[System]bool{}
	defer func() {
		for _, s := range systems {
			s.Close()
		}
	}()
	for _, mode := range []struct {
		name       string
		statements bool
	}{{"frames", false}, {"statements", true}} {
		dir := filepath.Join(cfg.Dir, mode.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		c, err := StartCluster(ctx, bin, dir, mode.name, mode.statements)
		if err != nil {
			return err
		}
		systems = append(systems, c)
		if !mode.statements {
			// The same processes through a connector whose reads go to
			// every node (linearizable); on the read workloads only, since
			// writes go to the leader as they do for frames.
			spread := c.WithRead("frames-any", driver.ReadAny)
			systems = append(systems, spread)
			readsOnly[spread] = true
			if err := spread.Warm(ctx, 32); err != nil {
				return fmt.Errorf("frames-any: %w", err)
			}
		}
	}
	sq, err := OpenSQLite(cfg.Dir)
	if err != nil {
		return err
	}
	systems = append(systems, sq)
	if cfg.Rqlite != "" {
		systems = append(systems, OpenRqlite(cfg.Rqlite))
	}
	for wi, w := range cfg.workloads() {
		if cfg.Only != nil && !cfg.Only.MatchString(fmt.Sprintf("%s/%d", w.name, w.clients)) {
			continue
		}
		ms := make([][]Measurement, len(systems))
		fails := make([]string, len(systems))
		for r := 0; r < cfg.Reps; r++ {
			for si, s := range systems {
				if fails[si] != "" || readsOnly[s] && !w.reads {
					continue
				}
				table := fmt.Sprintf("w%d_c%d_r%d_%d", wi, w.clients, r, rand.IntN(1<<30))
				var profDone chan error
				if cl, ok := s.(*Cluster); ok && cfg.Profile != "" && r == 0 &&
					(w.name == "insert" && (w.clients == 1 || w.clients == 32) || w.name == "compute-heavy" || w.name == "point-read" || w.name == "txn-100k-rows") {
					profDone = make(chan error, 1)
					path := filepath.Join(cfg.Profile, fmt.Sprintf("%s-%d-%s.pprof", w.name, w.clients, s.Name()))
					go func() { profDone <- cl.Profile(ctx, 2, path) }()
				}
				m, err := w.run(ctx, s, table)
				if profDone != nil {
					if perr := <-profDone; perr != nil {
						logf("profile of %s/%d on %s: %v", w.name, w.clients, s.Name(), perr)
					}
				}
				if err != nil {
					fails[si] = err.Error()
					logf("%s/%d on %s: %v", w.name, w.clients, s.Name(), err)
					continue
				}
				ms[si] = append(ms[si], m)
			}
		}
		for si, s := range systems {
			if readsOnly[s] && !w.reads {
				continue
			}
			res := Result{Workload: w.name, System: s.Name(), Clients: w.clients, Ops: w.ops, Repetitions: len(ms[si]),
				FailureMessage: fails[si]}
			if len(ms[si]) > 0 {
				var tp, el, p50, p99, repl, wr []float64
				for _, m := range ms[si] {
					tp = append(tp, m.Throughput())
					el = append(el, float64(m.Elapsed)/1e6)
					p50 = append(p50, float64(m.P50)/1e6)
					p99 = append(p99, float64(m.P99)/1e6)
					repl = append(repl, float64(m.Replicated)/float64(m.Ops))
					wr = append(wr, float64(m.Written)/float64(m.Ops))
					res.Errors += m.Errors
				}
				res.Throughput, res.ThroughputMin, res.ThroughputMax = median(tp), slices.Min(tp), slices.Max(tp)
				res.ElapsedMs, res.P50Ms, res.P99Ms = median(el), median(p50), median(p99)
				res.ReplicatedPer, res.WrittenPer = median(repl), median(wr)
				// The per-node lists follow the first repetition's order
				// (each repetition's figures are in its own order, the
				// leader first when known: the leader column is the
				// leader's whichever node led).
				first := ms[si][0]
				res.LeaderFirst = first.LeaderFirst
				if len(first.Order) > 1 {
					for _, i := range first.Order {
						res.Nodes = append(res.Nodes, fmt.Sprintf("n%d", i+1))
					}
				}
				rss := s.Stats().RSS
				for _, i := range first.Order {
					if i < len(rss) {
						res.RSSMiB = append(res.RSSMiB, rss[i]>>20)
					}
				}
				for n := range first.CPU {
					var per []float64
					for _, m := range ms[si] {
						per = append(per, float64(m.CPU[n])/1e6/float64(m.Ops))
					}
					res.CPUMsPer = append(res.CPUMsPer, median(per))
				}
				if w.reads {
					var shares [][]float64
					for _, m := range ms[si] {
						if sh := readShares(m.Reads); sh != nil {
							shares = append(shares, sh)
						}
					}
					for n := 0; len(shares) > 0 && n < len(shares[0]); n++ {
						var per []float64
						for _, sh := range shares {
							per = append(per, sh[n])
						}
						res.ReadShare = append(res.ReadShare, median(per))
					}
				}
			}
			rep.Results = append(rep.Results, res)
			logf("%-14s %3d clients %-10s %9.0f ops/s (%.0f-%.0f) p50 %7.2f ms p99 %7.2f ms%s",
				w.name, w.clients, s.Name(), res.Throughput, res.ThroughputMin, res.ThroughputMax, res.P50Ms, res.P99Ms, perNodeLog(res))
		}
	}
	return nil
}

// fsyncLatencies has writers goroutines each append 4 KiB and fdatasync
// n times to their own file in dir, at once; it returns the sorted
// latencies in milliseconds.
func fsyncLatencies(dir string, writers, n int) ([]float64, error) {
	var mu sync.Mutex
	var lat []float64
	var firstErr error
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.CreateTemp(dir, "fsync-probe-")
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
				return
			}
			defer os.Remove(f.Name())
			defer f.Close()
			buf := make([]byte, 4096)
			for i := 0; i < n; i++ {
				t0 := time.Now()
				_, err := f.Write(buf)
				if err == nil {
					err = syscall.Fdatasync(int(f.Fd()))
				}
				mu.Lock()
				if err != nil {
					firstErr = err
				}
				lat = append(lat, float64(time.Since(t0))/1e6)
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	sort.Float64s(lat)
	return lat, firstErr
}

// measureFloor measures fsync latency of 4 KiB appends in dir and the
// loopback round trip.
func measureFloor(dir string) (Floor, error) {
	lat, err := fsyncLatencies(dir, 1, 200)
	if err != nil {
		return Floor{}, err
	}
	fl := Floor{FsyncP50Ms: lat[len(lat)/2], FsyncP99Ms: lat[len(lat)*99/100]}
	lat3, err := fsyncLatencies(dir, 3, 100)
	if err != nil {
		return Floor{}, err
	}
	fl.Fsync3P50Ms = lat3[len(lat3)/2]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fl, err
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return fl, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var rtts []float64
	b := make([]byte, 8)
	for i := 0; i < 1000; i++ {
		t0 := time.Now()
		if _, err := c.Write(b); err != nil {
			break
		}
		if _, err := io.ReadFull(c, b); err != nil {
			break
		}
		rtts = append(rtts, float64(time.Since(t0))/1e3)
	}
	c.Close()
	<-done
	fl.LoopbackRTTUs = median(rtts)
	return fl, nil
}
