package jepsen

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/dqlite-go/dqlite/driver"
	"github.com/dqlite-go/dqlite/internal/testcluster"
)

// Nemesis kinds.
const (
	KillRestart     = "kill-9-restart"
	Pause           = "sigstop-sigcont"
	PartitionLeader = "partition-leader"
	PartitionHalves = "partition-halves"
	PartitionRing   = "partition-ring"
	OneWayCut       = "one-way-cut"
	SlowLinks       = "slow-links"
	Membership      = "remove-wipe-rejoin"
	DiskFull        = "disk-full"
)

// AllNemeses lists every kind.
var AllNemeses = []string{KillRestart, Pause, PartitionLeader, PartitionHalves, PartitionRing, OneWayCut,
	SlowLinks, Membership, DiskFull}

// Config sizes a run.
type Config struct {
	Nodes    int           // 3 or 5
	Duration time.Duration // fault phase (at least one round of every nemesis)
	Seed     uint64
	Out      string // output folder: logs, summary, porcupine HTML
	Bin      string // the dqlited binary
	// Extra flags for every dqlited (e.g. the deliberate bug).
	Extra []string
	// FaultHold is how long each fault lasts (default 2 s).
	FaultHold time.Duration
	// Keys is the number of registers in use at once (default 5; fresh
	// ones every 20 s): more keys, shorter per-key histories for porcupine.
	Keys int
	// CheckTimeout bounds porcupine (default 60 s); a timeout is "not
	// proven", reported as Unknown, never as a pass.
	CheckTimeout time.Duration
	Log          io.Writer
}

// Summary is a run's outcome.
type Summary struct {
	Ops map[string][3]int // workload: ok, failed, unknown
	// FirstErrors is each workload's first failure and first unknown outcome.
	FirstErrors map[string][2]string
	// TopErrors is each workload's most frequent errors (numbers masked),
	// with their counts.
	TopErrors map[string][]string
	Faults    map[string]int    // nemesis kind: times injected
	Skipped   map[string]string // nemesis kind: why it was not run
	// Refused counts faults the cluster rightly refused (a removal that
	// would leave no responsive quorum).
	Refused      map[string]int
	Violations   []string
	Linearizable porcupine.CheckResult
	Converged    bool
	Restarts     map[string]int // node: process starts
	// Reads is, per node, the reads it served (dqlite_reads_total
	// forwarded, lease, round), summed over its restarts.
	Reads map[string][3]int64
	// Unspread lists what shows the register's reads at level any were not
	// spread over the nodes (a node that served none).
	Unspread      []string
	Visualization string
	Elapsed       time.Duration
}

// Table is the summary as text.
func (s *Summary) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-12s %8s %8s %8s\n", "workload", "ok", "failed", "unknown")
	for _, w := range []string{"register", "bank", "bank-tx", "set"} {
		o := s.Ops[w]
		fmt.Fprintf(&b, "%-12s %8d %8d %8d\n", w, o[0], o[1], o[2])
	}
	for _, w := range []string{"register", "bank", "bank-tx", "set"} {
		if e, ok := s.FirstErrors[w]; ok {
			fmt.Fprintf(&b, "  %s: first failure %q, first unknown outcome %q\n", w, e[0], e[1])
		}
		for _, e := range s.TopErrors[w] {
			fmt.Fprintf(&b, "    %s\n", e)
		}
	}
	fmt.Fprintf(&b, "%-20s %s\n", "nemesis", "injected")
	for _, k := range AllNemeses {
		if why, ok := s.Skipped[k]; ok {
			fmt.Fprintf(&b, "%-20s skipped: %s\n", k, why)
			continue
		}
		if s.Refused[k] > 0 {
			fmt.Fprintf(&b, "%-20s %d (and %d refused by the cluster as unsafe)\n", k, s.Faults[k], s.Refused[k])
			continue
		}
		fmt.Fprintf(&b, "%-20s %d\n", k, s.Faults[k])
	}
	fmt.Fprintf(&b, "linearizable (register): %v; converged: %v; process starts: %v\n", s.Linearizable, s.Converged, s.Restarts)
	if len(s.Reads) > 0 {
		var names []string
		for n := range s.Reads {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(&b, "reads served (forwarded/lease/round):")
		for _, n := range names {
			r := s.Reads[n]
			fmt.Fprintf(&b, " %s %d/%d/%d", n, r[0], r[1], r[2])
		}
		fmt.Fprintln(&b)
	}
	for _, u := range s.Unspread {
		fmt.Fprintf(&b, "reads not spread: %s\n", u)
	}
	fmt.Fprintf(&b, "violations: %d\n", len(s.Violations))
	for _, v := range s.Violations {
		fmt.Fprintf(&b, "  %s\n", v)
	}
	if s.Visualization != "" {
		fmt.Fprintf(&b, "porcupine visualization: %s\n", s.Visualization)
	}
	fmt.Fprintf(&b, "elapsed: %v\n", s.Elapsed.Round(time.Second))
	return b.String()
}

// BuildDqlited builds the dqlited binary into dir.
func BuildDqlited(dir string) (string, error) { return testcluster.BuildDqlited(dir) }

// Run starts the cluster, runs the workloads under the nemeses for the
// duration, heals, checks, stops every process and returns the summary.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	start := time.Now()
	if cfg.FaultHold == 0 {
		cfg.FaultHold = 2 * time.Second
	}
	if cfg.Keys == 0 {
		cfg.Keys = 5
	}
	if cfg.CheckTimeout == 0 {
		cfg.CheckTimeout = 60 * time.Second
	}
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, "%s "+format+"\n", append([]any{time.Since(start).Round(time.Millisecond)}, args...)...)
		}
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, err
	}
	sum := &Summary{Ops: map[string][3]int{}, FirstErrors: map[string][2]string{}, TopErrors: map[string][]string{}, Faults: map[string]int{}, Skipped: map[string]string{}, Refused: map[string]int{}, Restarts: map[string]int{}}
	dataDir := filepath.Join(cfg.Out, "data")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, err
	}
	// A small file system for node 1's data, for the disk-full nemesis.
	small := filepath.Join(dataDir, "n1")
	os.MkdirAll(small, 0o755)
	mounted := false
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", small).CombinedOutput(); err != nil {
		sum.Skipped[DiskFull] = fmt.Sprintf("cannot mount a small file system (%v: %s)", err, strings.TrimSpace(string(out)))
	} else {
		mounted = true
		defer exec.Command("umount", "-l", small).Run()
	}
	c, err := newCluster(ctx, cfg.Bin, dataDir, cfg.Out, cfg.Nodes, cfg.Extra, logf)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	logf("cluster of %d up: %v", cfg.Nodes, c.addrs())

	cn := driver.NewConnector(c.addrs(), "jepsen")
	cn.RetryTimeout = 10 * time.Second
	db := sql.OpenDB(cn)
	defer db.Close()
	db.SetMaxOpenConns(32)
	// The register workload reads at the linearizable any-node level:
	// each connection reads from one node (chosen round-robin over every
	// node, the leader too: read_nodes=all), writes go to the leader. At
	// least one client per node, and every connection kept, so every node
	// gets a share.
	regClients := max(4, cfg.Nodes+1)
	regCn := driver.NewConnector(c.addrs(), "jepsen")
	regCn.RetryTimeout = 10 * time.Second
	regCn.Read = driver.ReadAny
	regCn.ReadNodes = driver.ReadAllNodes
	regDB := sql.OpenDB(regCn)
	defer regDB.Close()
	regDB.SetMaxOpenConns(regClients)
	regDB.SetMaxIdleConns(regClients)
	// The set workload has a database of its own: two databases replicate
	// through every nemesis, and convergence compares both.
	setCn := driver.NewConnector(c.addrs(), setDatabase)
	setCn.RetryTimeout = 10 * time.Second
	setDB := sql.OpenDB(setCn)
	defer setDB.Close()
	setDB.SetMaxOpenConns(8)
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = db.ExecContext(setupCtx, "CREATE TABLE IF NOT EXISTS reg (k INTEGER PRIMARY KEY, v INTEGER)")
	if err == nil {
		_, err = setDB.ExecContext(setupCtx, "CREATE TABLE IF NOT EXISTS elems (id INTEGER)")
	}
	if err == nil {
		err = setupBank(setupCtx, db)
	}
	cancel()
	if err != nil {
		return nil, fmt.Errorf("setting up tables: %w", err)
	}

	// Workloads run through the fault phase.
	h := &history{start: time.Now()}
	var regC, bankC, bankTxC, setC counts
	var viol violations
	set := &setState{acked: map[int64]bool{}, unknown: map[int64]bool{}}
	wctx, stopWork := context.WithCancel(ctx)
	// Each node's read counters, sampled through the run (a restart resets
	// them).
	reads := newReadCounts(len(c.procs))
	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() { defer close(sampled); reads.sampleEvery(sctx, c, 500*time.Millisecond) }()
	defer func() { stopSampling(); <-sampled }()
	var wg sync.WaitGroup
	for i := 0; i < regClients; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); runRegister(wctx, regDB, i+1, cfg.Seed, cfg.Keys, h, &regC) }()
	}
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); runBank(wctx, db, i+1, cfg.Seed, &bankC, &bankTxC, &viol) }()
	}
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); runSet(wctx, setDB, i+1, set, &setC) }()
	}

	// The nemesis: every kind once in a shuffled order (a kind the cluster
	// refused as unsafe at that moment is tried again later), then random
	// kinds until the duration ends.
	rng := rand.New(rand.NewPCG(cfg.Seed, 42))
	kinds := append([]string(nil), AllNemeses...)
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	deadline := time.Now().Add(cfg.Duration)
	for round := 0; ctx.Err() == nil; round++ {
		kind := ""
		if round < len(kinds) {
			kind = kinds[round]
		} else if time.Now().Before(deadline) {
			kind = AllNemeses[rng.IntN(len(AllNemeses))]
		} else {
			break
		}
		if _, skip := sum.Skipped[kind]; skip {
			continue
		}
		// Liveness between faults: a leader within 30 s of the last heal.
		if err := waitFor(ctx, 30*time.Second, "a leader after healing", func() bool { return c.leaderIdx(ctx) >= 0 }); err != nil {
			sum.Violations = append(sum.Violations, fmt.Sprintf("before %s: %v", kind, err))
			break
		}
		err := c.inject(ctx, kind, rng, cfg.FaultHold, mounted, logf)
		if errors.Is(err, errRefused) {
			logf("nemesis %s refused by the cluster (unsafe at this moment)", kind)
			sum.Refused[kind]++
			if sum.Faults[kind] == 0 && sum.Refused[kind] < 5 {
				// Every kind must run once: try it again after the others.
				kinds = append(kinds, kind)
			}
			continue
		}
		if err != nil {
			logf("nemesis %s: %v", kind, err)
			sum.Violations = append(sum.Violations, fmt.Sprintf("nemesis %s could not run or heal: %v", kind, err))
			continue
		}
		sum.Faults[kind]++
	}
	stopWork()
	wg.Wait()
	logf("fault phase over; healing")

	// Heal everything, restart what is down, wait for a leader.
	hctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := c.healAll(hctx, logf); err != nil {
		sum.Violations = append(sum.Violations, "after healing: "+err.Error())
	}
	// Final checks through the driver.
	var total, least int64
	if err := db.QueryRowContext(hctx, "SELECT sum(bal), min(bal) FROM acc").Scan(&total, &least); err != nil {
		sum.Violations = append(sum.Violations, "bank: final read failed: "+err.Error())
	} else if total != bankTotal || least < 0 {
		viol.add("bank: final total %d (want %d), lowest balance %d", total, bankTotal, least)
	}
	if _, err := checkSet(hctx, setDB, set, &viol); err != nil {
		sum.Violations = append(sum.Violations, "set: final read failed: "+err.Error())
	}
	// Convergence: every node applies the same index, then holds the same
	// database image.
	sum.Converged = c.converged(hctx, logf) == nil
	if !sum.Converged {
		sum.Violations = append(sum.Violations, "nodes did not converge: "+c.converged(hctx, logf).Error())
	}
	for _, p := range c.procs {
		sum.Restarts[fmt.Sprintf("n%d", p.idx+1)] = p.starts
	}
	// Every node served reads: the register's reads at level any reached
	// all of them.
	stopSampling()
	<-sampled
	reads.sample(c) // after healing: every node up
	var notes []string
	sum.Reads, sum.Unspread, notes = reads.check()
	logf("reads served per node (forwarded/lease/round, summed over restarts): %s", reads.describe())
	for _, n := range notes {
		logf("reads: %s", n)
	}

	// Linearizability of the register history.
	ops := dropUnobservedUnknownWrites(h.ops)
	logf("checking %d register operations (%d writes of unknown outcome never read dropped)", len(ops), len(h.ops)-len(ops))
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, cfg.CheckTimeout)
	sum.Linearizable = res
	if res == porcupine.Illegal {
		path := filepath.Join(cfg.Out, "register-linearizability.html")
		if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
			sum.Visualization = path
		}
		viol.add("register: history of %d operations is not linearizable (see %s)", len(h.ops), path)
	}
	sum.Violations = append(sum.Violations, viol.list...)
	for name, c := range map[string]*counts{"register": &regC, "bank": &bankC, "bank-tx": &bankTxC, "set": &setC} {
		sum.Ops[name] = [3]int{c.ok, c.failed, c.unknown}
		if c.firstFailure != "" || c.firstUnknown != "" {
			sum.FirstErrors[name] = [2]string{c.firstFailure, c.firstUnknown}
		}
		sum.TopErrors[name] = c.top(3)
	}
	sum.Elapsed = time.Since(start)
	os.WriteFile(filepath.Join(cfg.Out, "summary.txt"), []byte(sum.Table()), 0o644)
	return sum, nil
}

// inject runs one fault: apply, hold, heal.
func (c *cluster) inject(ctx context.Context, kind string, rng *rand.Rand, hold time.Duration, mounted bool, logf func(string, ...any)) error {
	n := len(c.procs)
	lead := c.leaderIdx(ctx)
	pick := func() int {
		if lead >= 0 && rng.IntN(2) == 0 {
			return lead
		}
		return rng.IntN(n)
	}
	sleep := func(d time.Duration) error {
		select {
		case <-time.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if lead >= 0 {
		logf("nemesis %s (leader n%d)", kind, lead+1)
	} else {
		logf("nemesis %s (no leader known)", kind)
	}
	switch kind {
	case KillRestart:
		p := c.procs[pick()]
		c.kill9(p)
		if err := sleep(hold); err != nil {
			return err
		}
		return c.start(p)
	case Pause:
		p := c.procs[pick()]
		c.signal(p, syscall.SIGSTOP)
		err := sleep(hold) // longer than the election timeout (0.5-1 s)
		c.signal(p, syscall.SIGCONT)
		return err
	case PartitionLeader, PartitionHalves, PartitionRing, OneWayCut:
		var pairs [][2]int
		cutBoth := func(a, b int) { pairs = append(pairs, [2]int{a, b}, [2]int{b, a}) }
		switch kind {
		case PartitionLeader:
			x := pick()
			for i := 0; i < n; i++ {
				if i != x {
					cutBoth(x, i)
				}
			}
		case PartitionHalves:
			perm := rng.Perm(n)
			minority := perm[:n/2]
			for _, a := range minority {
				for _, b := range perm[n/2:] {
					cutBoth(a, b)
				}
			}
		case PartitionRing:
			// Each node talks only to its ring neighbours: overlapping
			// majorities (with 3 nodes every pair are neighbours, so the
			// ring cuts nothing: use one-way cuts around the ring instead).
			for i := 0; i < n; i++ {
				for j := 0; j < n; j++ {
					d := (j - i + n) % n
					if i != j && d != 1 && d != n-1 {
						pairs = append(pairs, [2]int{i, j})
					}
				}
			}
			if n == 3 {
				pairs = [][2]int{{0, 1}, {1, 2}, {2, 0}}
			}
		case OneWayCut:
			x := pick()
			for i := 0; i < n; i++ {
				if i != x {
					pairs = append(pairs, [2]int{x, i}) // x's messages are lost; it still hears the others
				}
			}
		}
		c.net.Cut(pairs)
		err := sleep(hold)
		c.net.Heal()
		return err
	case SlowLinks:
		x := pick()
		c.net.Delay(x, 200*time.Millisecond)
		err := sleep(hold)
		c.net.Heal()
		return err
	case Membership:
		x := rng.IntN(n)
		if err := c.rejoin(ctx, c.procs[x]); err != nil {
			return err
		}
		return sleep(hold)
	case DiskFull:
		if !mounted {
			return fmt.Errorf("no small file system")
		}
		filler := filepath.Join(c.procs[0].dir, "filler")
		exec.CommandContext(ctx, "dd", "if=/dev/zero", "of="+filler, "bs=1M", "count=512").Run() // fails with ENOSPC: intended
		err := sleep(hold)
		os.Remove(filler)
		// A node whose log failed stops writing: restart it.
		if h, herr := healthy(c.procs[0].metrics); herr == nil && !h {
			logf("n1's storage failed on the full disk; restarting it")
			c.kill9(c.procs[0])
			return c.start(c.procs[0])
		}
		return err
	}
	return fmt.Errorf("unknown nemesis %q", kind)
}

func healthy(metrics string) (bool, error) {
	v, err := metric(metrics, "dqlite_storage_failed")
	return v == 0, err
}

// healAll removes every network rule, resumes paused processes, restarts
// dead ones and waits for 3 voters.
func (c *cluster) healAll(ctx context.Context, logf func(string, ...any)) error {
	c.net.Heal()
	for _, p := range c.procs {
		c.signal(p, syscall.SIGCONT)
		p.mu.Lock()
		running := p.running
		p.mu.Unlock()
		if !running {
			logf("restarting n%d", p.idx+1)
			if err := c.start(p); err != nil {
				return err
			}
		}
	}
	return c.waitVoters(ctx, 3, 60*time.Second)
}

// converged waits until every node has applied the same index and then
// compares their database images.
func (c *cluster) converged(ctx context.Context, logf func(string, ...any)) error {
	var last string
	err := waitFor(ctx, 60*time.Second, "every node applying the same index", func() bool {
		var idx []float64
		for _, p := range c.procs {
			v, err := metric(p.metrics, "dqlite_applied_index")
			if err != nil {
				return false
			}
			idx = append(idx, v)
		}
		sort.Float64s(idx)
		last = fmt.Sprint(idx)
		return idx[0] == idx[len(idx)-1] && idx[0] > 0
	})
	if err != nil {
		return fmt.Errorf("%v (applied indexes %s)", err, last)
	}
	var hashes []uint64
	for _, p := range c.procs {
		h, err := imageHash(ctx, p.addr)
		if err != nil {
			return fmt.Errorf("dump of n%d: %w", p.idx+1, err)
		}
		hashes = append(hashes, h)
	}
	for _, h := range hashes[1:] {
		if h != hashes[0] {
			return fmt.Errorf("database images differ: %x", hashes)
		}
	}
	logf("converged: %d nodes, image hash %x", len(hashes), hashes[0])
	return nil
}

// readPaths are the dqlite_reads_total paths of reads a node served:
// forwarded (a follower's, with a read index from the leader), lease and
// round (the leader's own).
var readPaths = [3]string{"forwarded", "lease", "round"}

// readCounts follows each node's read counters through the run: per node
// (process slot), the sum over its process starts, from samples (a new
// process start, or a counter lower than its last sample, is a restart;
// what a process served after its last sample is not counted).
type readCounts struct {
	mu    sync.Mutex
	nodes []nodeReads
}

type nodeReads struct {
	last, base [3]float64
	starts     int // the process start of last
	samples    int
	// followerSamples counts the samples where the node was a voter or
	// standby following a leader it knew: where its reads at level any
	// are forwarded.
	followerSamples int
}

func newReadCounts(n int) *readCounts { return &readCounts{nodes: make([]nodeReads, n)} }

func (rc *readCounts) sampleEvery(ctx context.Context, c *cluster, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		rc.sample(c)
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// sample reads every node's counters (a node that does not answer, paused
// or down, is skipped).
func (rc *readCounts) sample(c *cluster) {
	for i, p := range c.procs {
		p.mu.Lock()
		starts := p.starts
		p.mu.Unlock()
		if m, err := metrics(p.metrics); err == nil {
			rc.observe(i, starts, m)
		}
	}
}

// observe takes one sample of node i's metrics, from its process start
// number starts (read before the metrics).
func (rc *readCounts) observe(i, starts int, m map[string]float64) {
	var v [3]float64
	complete := true
	for k, path := range readPaths {
		x, ok := m[`dqlite_reads_total{path="`+path+`"}`]
		v[k] = x
		complete = complete && ok
	}
	if !complete {
		return
	}
	member := m[`dqlite_role{role="voter"}`] == 1 || m[`dqlite_role{role="standby"}`] == 1
	rc.mu.Lock()
	n := &rc.nodes[i]
	restarted := starts != n.starts
	for k := range v {
		restarted = restarted || v[k] < n.last[k]
	}
	if restarted {
		for k := range v {
			n.base[k] += n.last[k]
		}
	}
	n.last, n.starts = v, starts
	n.samples++
	if member && m["dqlite_is_leader"] == 0 && m["dqlite_leader_id"] != 0 {
		n.followerSamples++
	}
	rc.mu.Unlock()
}

func (n *nodeReads) total() [3]int64 {
	var t [3]int64
	for k := range t {
		t[k] = int64(n.base[k] + n.last[k])
	}
	return t
}

// minFollowerSamples is how many samples (half a second apart) a node must
// have been seen following a known leader for its reads as a follower to
// be expected: a few seconds, so a node that spent the run leading, down or
// cut off is not held to it.
const minFollowerSamples = 10

// check returns each node's read counts, what shows the register's reads
// at level any were not spread, and notes. Not spread: a node that served
// no reads at all (every node is sampled at the end, after healing, as a
// member), or no node serving a read as a follower although some followed
// a known leader for seconds (only the leader serves reads at the leader
// level; with leadership moving, every node may have led and served some).
// A single node that followed without serving a read as one is only a note:
// a read connection whose node fails moves to the next node, so a node
// killed or cut off early can be left without one.
func (rc *readCounts) check() (counts map[string][3]int64, bad, notes []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	counts = map[string][3]int64{}
	var forwarded int64
	following := 0
	for i := range rc.nodes {
		n := &rc.nodes[i]
		name := fmt.Sprintf("n%d", i+1)
		t := n.total()
		counts[name] = t
		forwarded += t[0]
		if n.followerSamples >= minFollowerSamples {
			following++
		}
		switch {
		case n.samples == 0:
			// Never answered: nothing to judge (healing would have failed).
		case t[0]+t[1]+t[2] == 0:
			bad = append(bad, fmt.Sprintf("%s served no reads (%d samples)", name, n.samples))
		case t[0] == 0 && n.followerSamples >= minFollowerSamples:
			notes = append(notes, fmt.Sprintf("%s followed a known leader in %d of %d samples but served no read as a follower (lease %d, round %d)",
				name, n.followerSamples, n.samples, t[1], t[2]))
		}
	}
	if forwarded == 0 && following > 0 {
		bad = append(bad, fmt.Sprintf("no node served a read as a follower (forwarded 0), though %d followed a known leader for %d samples or more", following, minFollowerSamples))
	}
	return counts, bad, notes
}

func (rc *readCounts) describe() string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var parts []string
	for i := range rc.nodes {
		t := rc.nodes[i].total()
		parts = append(parts, fmt.Sprintf("n%d %d/%d/%d (follower in %d of %d samples)", i+1, t[0], t[1], t[2],
			rc.nodes[i].followerSamples, rc.nodes[i].samples))
	}
	return strings.Join(parts, ", ")
}
