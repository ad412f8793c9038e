package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dqlite-go/dqlite/driver"
)

// The large-database workload (dqbench -large SIZE): a 3-node frames
// cluster loaded with SIZE bytes of 1,000-byte random blobs, then a 4th
// node joining while a writer keeps writing, then that node killed and
// restarted; the nodes' resident memory is sampled throughout. See
// docs/BENCHMARKS.md.

const (
	largeRowBytes  = 1000   // bytes of each row's blob
	largeBatchRows = 10_000 // rows per load request: about 10 MB
)

// Load methods of the large workload.
const (
	// LoadMultiRow loads each batch as one INSERT with a VALUES row per
	// blob (one request, one statement execution).
	LoadMultiRow = "multirow"
	// LoadTxn loads each batch as a transaction of single-row INSERTs
	// (BeginTx, one prepared statement executed per row, Commit).
	LoadTxn = "txn"
)

// Targets the large workload is measured against (reported, not
// enforced).
const (
	largeTargetRatio      = 1.5                    // join time / file copy time
	largeTargetRSSMiB     = 300                    // leader's and new node's peak RSS during the join
	largeTargetRestartSec = 3                      // restart until ready and caught up
	largeTargetLoopEvent  = 100 * time.Millisecond // longest loop event
)

// LargeConfig sizes a large-database run.
type LargeConfig struct {
	Size int64  // bytes of blobs to load
	Dir  string // data directories and node logs go under it
	Bin  string // the dqlited binary
	Load string // LoadMultiRow (default) or LoadTxn
	Log  func(format string, args ...any)
}

// LargeWriter is the writer that runs during the join.
type LargeWriter struct {
	Seconds  float64 `json:"seconds"`
	Writes   int     `json:"writes"`
	Failures int     `json:"failures"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
	// Errors are the distinct error texts of the failed writes (at most
	// 5).
	Errors []string `json:"errors,omitempty"`
}

// LargeNode is one node's figures.
type LargeNode struct {
	Name string `json:"name"`
	Dir  string `json:"dir"`
	// Role and Leader are as of the end of the workload.
	Role   string `json:"role"`
	Leader bool   `json:"leader"`
	// Joined: the node added during the workload; Restarted: the node
	// killed and restarted (its counters, VmHWM included, restart then).
	Joined    bool `json:"joined,omitempty"`
	Restarted bool `json:"restarted,omitempty"`
	// PeakRSSMiB is the highest VmRSS sampled (every 100 ms) over the
	// whole workload; PeakRSSByPhaseMiB the same per phase.
	PeakRSSMiB        float64            `json:"peak_rss_mib"`
	PeakRSSByPhaseMiB map[string]float64 `json:"peak_rss_by_phase_mib"`
	// PeakAnonMiB and PeakFileMiB: the highest RssAnon (heap, stacks) and
	// RssFile (file pages mapped: the binary, mmapped files) sampled, each
	// on its own.
	PeakAnonMiB float64 `json:"peak_rss_anon_mib"`
	PeakFileMiB float64 `json:"peak_rss_file_mib"`
	// HWMMiB is VmHWM at the end (the process's own peak since it
	// started).
	HWMMiB float64 `json:"vmhwm_mib"`
	// LoopEventMaxMs is the longest loop event (dqlite_loop_event_max_seconds;
	// for the restarted node the larger of before the kill and since the
	// restart) and LoopEventsSlow the events over 100 ms
	// (dqlite_loop_events_slow_total; summed over both lives). ByPhase:
	// the gauge's value at the end of each phase (counters since the
	// process started).
	LoopEventMaxMs        float64            `json:"loop_event_max_ms"`
	LoopEventsSlow        uint64             `json:"loop_events_slow"`
	LoopEventMaxByPhaseMs map[string]float64 `json:"loop_event_max_by_phase_ms"`
	PageCacheMiB          float64            `json:"page_cache_mib"`
	WALMiB                float64            `json:"wal_mib"`
	DBFileMiB             float64            `json:"db_file_mib"` // largest sqlite-*.db in its directory
	AppliedIndex          uint64             `json:"applied_index"`
	SnapshotsInstalled    uint64             `json:"snapshots_installed"`
	SnapshotViews         uint64             `json:"snapshot_views"`
}

// LargeResult is the large-database workload's report.
type LargeResult struct {
	SizeBytes int64  `json:"size_bytes"` // as asked
	BlobBytes int64  `json:"blob_bytes"` // rows × row bytes loaded
	Rows      int64  `json:"rows"`
	RowBytes  int    `json:"row_bytes"`
	Load      string `json:"load_method"`
	Requests  int    `json:"load_requests"`
	// RowsOnLeader and RowsOnNew are max(id) of the table read at the
	// end from the leader and from the joined node (0: not read).
	RowsOnLeader int64   `json:"rows_on_leader"`
	RowsOnNew    int64   `json:"rows_on_new_node"`
	VerifyError  string  `json:"verify_error,omitempty"`
	LoadSeconds  float64 `json:"load_seconds"`
	LoadMBps     float64 `json:"load_mb_per_s"` // blob bytes (10^6) per second
	// DBFileBytes is the size of the leader's database file copied.
	DBFileBytes int64   `json:"db_file_bytes"`
	CopySeconds float64 `json:"copy_seconds"`
	CopyMBps    float64 `json:"copy_mb_per_s"`
	// JoinSeconds: from starting the 4th process until its applied index
	// reached JoinTargetIndex (the leader's commit index when it started)
	// while it was a member (JoinRole its role then).
	JoinSeconds      float64 `json:"join_seconds"`
	JoinTargetIndex  uint64  `json:"join_target_index"`
	JoinReachedIndex uint64  `json:"join_reached_index"`
	JoinRole         string  `json:"join_role"`
	JoinRatio        float64 `json:"join_to_copy_ratio"`
	// JoinSnapshotsInstalled: snapshots the new node installed by the
	// join's end (0: it caught up from the log alone);
	// JoinLeaderSnapshotViews: the join's leader's snapshot views by then.
	JoinSnapshotsInstalled uint64 `json:"join_snapshots_installed"`
	// The join's timeline, in seconds from the process's start (0: not
	// seen): a member, the first snapshot bytes received, the first
	// snapshot installed (the stream's end); polled every 25 ms.
	JoinMemberAt            float64 `json:"join_member_at_s,omitempty"`
	JoinStreamAt            float64 `json:"join_stream_start_at_s,omitempty"`
	JoinInstalledAt         float64 `json:"join_installed_at_s,omitempty"`
	JoinLeaderSnapshotViews uint64  `json:"join_leader_snapshot_views"`
	// JoinLeaderPeakRSSMiB and JoinNewPeakRSSMiB: peak VmRSS sampled
	// during the join of the leader (as of the join's start) and the new
	// node.
	JoinLeaderPeakRSSMiB float64 `json:"join_leader_peak_rss_mib"`
	JoinNewPeakRSSMiB    float64 `json:"join_new_node_peak_rss_mib"`
	// ...and their RssAnon peaks.
	JoinLeaderPeakAnonMiB float64     `json:"join_leader_peak_rss_anon_mib"`
	JoinNewPeakAnonMiB    float64     `json:"join_new_node_peak_rss_anon_mib"`
	Writer                LargeWriter `json:"writer"`
	// RestartNode was killed (SIGKILL) and restarted with its flags and
	// directory; RestartReadySeconds from the new process's start until
	// /readyz answered 200, RestartCaughtUpSeconds until its applied index
	// reached RestartTargetIndex (the leader's commit index at the
	// restart), RestartSeconds until both held.
	RestartNode            string  `json:"restart_node"`
	RestartTargetIndex     uint64  `json:"restart_target_index"`
	RestartReachedIndex    uint64  `json:"restart_reached_index"`
	RestartReadySeconds    float64 `json:"restart_ready_seconds"`
	RestartCaughtUpSeconds float64 `json:"restart_caught_up_seconds"`
	RestartSeconds         float64 `json:"restart_seconds"`
	// Leaders is the leading node at the start of each phase and at the
	// end ("?" when none or two were seen).
	Leaders map[string]string `json:"leaders"`
	// PhaseStarts is when each phase began (UTC, as in the node logs).
	PhaseStarts map[string]string `json:"phase_starts"`
	RSSSamples  int               `json:"rss_samples"`
	Nodes       []LargeNode       `json:"nodes"`
	Seconds     float64           `json:"seconds"` // the whole workload
	Failure     string            `json:"failure,omitempty"`
}

// largePhases are the phases of the workload, in order.
var largePhases = []string{"load", "copy", "join", "restart"}

// mem is a process's resident memory (/proc/PID/status): VmRSS and its
// anonymous (heap, stacks) and file-backed parts.
type mem struct{ RSS, Anon, File uint64 }

func (m mem) max(o mem) mem { return mem{max(m.RSS, o.RSS), max(m.Anon, o.Anon), max(m.File, o.File)} }

// procMem reads a process's resident memory.
func procMem(pid int) (mem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return mem{}, err
	}
	var m mem
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		f := strings.Fields(v)
		if !ok || len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseUint(f[0], 10, 64)
		switch k {
		case "VmRSS":
			m.RSS = n << 10
		case "RssAnon":
			m.Anon = n << 10
		case "RssFile":
			m.File = n << 10
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return m, nil
}

// rssSampler reads each node's resident memory every 100 ms and keeps the
// peaks (of each figure alone), overall and per phase.
type rssSampler struct {
	mu      sync.Mutex
	pids    []int // 0: no process
	phase   string
	peak    []mem
	byPhase map[string][]mem
	samples int
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func newRSSSampler() *rssSampler {
	s := &rssSampler{byPhase: map[string][]mem{}, stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s
}

func (s *rssSampler) run() {
	defer close(s.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		s.sample()
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

func (s *rssSampler) sample() {
	s.mu.Lock()
	defer s.mu.Unlock()
	ph := s.byPhase[s.phase]
	for i, pid := range s.pids {
		if pid == 0 {
			continue
		}
		m, err := procMem(pid)
		if err != nil {
			continue // exited
		}
		s.peak[i] = s.peak[i].max(m)
		if ph != nil {
			ph[i] = ph[i].max(m)
		}
	}
	s.samples++
}

// setPID sets node i's process (0: none).
func (s *rssSampler) setPID(i, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.pids) <= i {
		s.pids = append(s.pids, 0)
		s.peak = append(s.peak, mem{})
	}
	s.pids[i] = pid
	for name, ph := range s.byPhase {
		for len(ph) < len(s.pids) {
			ph = append(ph, mem{})
		}
		s.byPhase[name] = ph
	}
}

func (s *rssSampler) setPhase(name string) {
	s.mu.Lock()
	s.phase = name
	if s.byPhase[name] == nil {
		s.byPhase[name] = make([]mem, len(s.pids))
	}
	s.mu.Unlock()
	s.sample()
}

// phasePeak is node i's peaks during a phase.
func (s *rssSampler) phasePeak(name string, i int) mem {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ph := s.byPhase[name]; i < len(ph) {
		return ph[i]
	}
	return mem{}
}

// close stops the sampling (after a last sample); the peaks stay.
func (s *rssSampler) close() {
	s.once.Do(func() {
		close(s.stop)
		<-s.done
		s.sample()
	})
}

func mib(b uint64) float64 { return math.Round(float64(b)/(1<<20)*10) / 10 }

func secs(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e6*100) / 100 }

// leaderOf is the index of the one node whose metrics say it leads (-1:
// none, or more than one).
func leaderOf(nodes []map[string]float64) int {
	l := -1
	for i, n := range nodes {
		if n != nil && n["dqlite_is_leader"] == 1 {
			if l >= 0 {
				return -1
			}
			l = i
		}
	}
	return l
}

// roleOf is a node's role from its metrics ("" when not a member or not
// answering).
func roleOf(n map[string]float64) string {
	for _, r := range []string{"voter", "standby", "spare"} {
		if n[`dqlite_role{role="`+r+`"}`] == 1 {
			return r
		}
	}
	return ""
}

// waitLeader waits (bounded) until exactly one node leads.
// checkpointedWALBytes is the WAL size under which no node checkpoints on
// its own (fsm's checkpointFrames, 1000 frames of 4 KiB pages).
const checkpointedWALBytes = 1000 * (4096 + 24)

// waitCheckpointed waits until every node's WALs are under the size that
// makes a checkpoint due: the database files then hold what was loaded.
func (c *Cluster) waitCheckpointed(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		due := -1
		for i, n := range c.scrape() {
			for k, v := range n {
				if strings.HasPrefix(k, "dqlite_database_wal_bytes{") && v >= checkpointedWALBytes {
					due = i
				}
			}
		}
		if due < 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %d still has a WAL of %d bytes or more after %v", due+1, checkpointedWALBytes, timeout)
		}
		if err := sleepCtx(ctx, 25*time.Millisecond); err != nil {
			return err
		}
	}
}

func (c *Cluster) waitLeader(ctx context.Context, timeout time.Duration) ([]map[string]float64, int, error) {
	deadline := time.Now().Add(timeout)
	for {
		nodes := c.scrape()
		if l := leaderOf(nodes); l >= 0 {
			return nodes, l, nil
		}
		if time.Now().After(deadline) {
			return nodes, -1, fmt.Errorf("no single leader within %v", timeout)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return nodes, -1, err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// largestDB is the largest database file (sqlite-*.db) in dir.
func largestDB(dir string) (string, int64, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "sqlite-*.db"))
	if err != nil {
		return "", 0, err
	}
	best, size := "", int64(-1)
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			best, size = p, fi.Size()
		}
	}
	if best == "" {
		return "", 0, fmt.Errorf("no sqlite-*.db in %s", dir)
	}
	return best, size, nil
}

// timeCopy copies src to a new file in its directory (read, write, fsync),
// times it and deletes the copy.
func timeCopy(src string) (time.Duration, int64, error) {
	t0 := time.Now()
	in, err := os.Open(src)
	if err != nil {
		return 0, 0, err
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(src), "bench-copy-probe-*.tmp")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	n, err := io.CopyBuffer(out, in, make([]byte, 1<<20))
	if err == nil {
		err = out.Sync()
	}
	if err == nil {
		err = out.Close()
	}
	return time.Since(t0), n, err
}

// loadStatement is the multi-row INSERT of n blobs.
func loadStatement(n int) string {
	var b strings.Builder
	b.Grow(32 + 4*n)
	b.WriteString("INSERT INTO big (b) VALUES (?)")
	for i := 1; i < n; i++ {
		b.WriteString(",(?)")
	}
	return b.String()
}

// loadBatch writes one batch of blobs (buf holds n rows) by the method.
func loadBatch(ctx context.Context, db *sql.DB, method string, buf []byte, n int) error {
	rows := make([]any, n)
	for i := range rows {
		rows[i] = buf[i*largeRowBytes : (i+1)*largeRowBytes]
	}
	if method == LoadMultiRow {
		_, err := db.ExecContext(ctx, loadStatement(n), rows...)
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	st, err := tx.PrepareContext(ctx, "INSERT INTO big (b) VALUES (?)")
	if err != nil {
		tx.Rollback()
		return err
	}
	for _, r := range rows {
		if _, err := st.ExecContext(ctx, r); err != nil {
			st.Close()
			tx.Rollback()
			return err
		}
	}
	st.Close()
	return tx.Commit()
}

// runWriter inserts single small rows one after another until stop is
// closed, recording each write's latency and failure.
func runWriter(db *sql.DB, stop <-chan struct{}) LargeWriter {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-stop; cancel() }()
	defer cancel()
	var lat []time.Duration
	var w LargeWriter
	t0 := time.Now()
	for i := 0; ; i++ {
		select {
		case <-stop:
			w.Seconds = secs(time.Since(t0))
			w.Writes = len(lat)
			slices.Sort(lat)
			if len(lat) > 0 {
				w.P50Ms, w.P99Ms, w.MaxMs = ms(lat[len(lat)/2]), ms(lat[min(len(lat)-1, len(lat)*99/100)]), ms(lat[len(lat)-1])
			}
			return w
		default:
		}
		s := time.Now()
		_, err := db.ExecContext(ctx, "INSERT INTO w (v) VALUES (?)", fmt.Sprintf("write %d", i))
		if err != nil {
			if ctx.Err() != nil {
				continue // stopped during the write: neither a write nor a failure
			}
			w.Failures++
			if len(w.Errors) < 5 && !slices.Contains(w.Errors, err.Error()) {
				w.Errors = append(w.Errors, err.Error())
			}
			continue
		}
		lat = append(lat, time.Since(s))
	}
}

// readyz reports whether the node at the metrics address answers /readyz
// with 200.
func readyz(cl *http.Client, metrics string) bool {
	resp, err := cl.Get("http://" + metrics + "/readyz")
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// RunLarge runs the large-database workload. The result holds whatever
// was measured even when it returns an error (also in Failure).
func RunLarge(ctx context.Context, cfg LargeConfig) (res *LargeResult, err error) {
	if cfg.Load == "" {
		cfg.Load = LoadMultiRow
	}
	if cfg.Load != LoadMultiRow && cfg.Load != LoadTxn {
		return nil, fmt.Errorf("large: unknown load method %q (%s or %s)", cfg.Load, LoadMultiRow, LoadTxn)
	}
	if cfg.Size <= 0 {
		return nil, errors.New("large: no size")
	}
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			cfg.Log(format, args...)
		}
	}
	rows := (cfg.Size + largeRowBytes - 1) / largeRowBytes
	res = &LargeResult{SizeBytes: cfg.Size, Rows: rows, BlobBytes: rows * largeRowBytes, RowBytes: largeRowBytes,
		Load: cfg.Load, Leaders: map[string]string{}, PhaseStarts: map[string]string{}}
	start := time.Now()
	defer func() {
		res.Seconds = secs(time.Since(start))
		if err != nil {
			res.Failure = err.Error()
		}
	}()
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return res, err
	}
	// dqlited's default settings (the other workloads' clusters tick
	// every 50 ms).
	c, err := startCluster(ctx, cfg.Bin, cfg.Dir, "large", false, "")
	if err != nil {
		return res, err
	}
	defer c.Close()
	sampler := newRSSSampler()
	defer sampler.close()
	for i, p := range c.procs {
		sampler.setPID(i, p.Process.Pid)
	}
	dirs := []string{filepath.Join(cfg.Dir, "n1"), filepath.Join(cfg.Dir, "n2"), filepath.Join(cfg.Dir, "n3")}
	name := func(i int) string {
		if i < 0 {
			return "?"
		}
		return fmt.Sprintf("n%d", i+1)
	}
	loopMax := map[string][]float64{} // phase: per node, the gauge at its end (seconds)
	loopSlow := map[string][]float64{}
	phaseEnd := map[string][]map[string]float64{} // phase: every node's metrics at its end
	begin := func(phase string) {
		res.PhaseStarts[phase] = time.Now().UTC().Format("15:04:05.000")
		sampler.setPhase(phase)
	}
	endPhase := func(phase string) []map[string]float64 {
		nodes := c.scrape()
		phaseEnd[phase] = nodes
		for _, n := range nodes {
			loopMax[phase] = append(loopMax[phase], n["dqlite_loop_event_max_seconds"])
			loopSlow[phase] = append(loopSlow[phase], n["dqlite_loop_events_slow_total"])
		}
		return nodes
	}

	// 1-2. Load.
	_, leader, err := c.waitLeader(ctx, 30*time.Second)
	if err != nil {
		return res, err
	}
	res.Leaders["load"] = name(leader)
	begin("load")
	if _, err := c.db.ExecContext(ctx, "CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB)"); err != nil {
		return res, fmt.Errorf("create table: %w", err)
	}
	if _, err := c.db.ExecContext(ctx, "CREATE TABLE w (id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
		return res, fmt.Errorf("create table: %w", err)
	}
	rng := rand.NewChaCha8([32]byte{'d', 'q', 'b', 'e', 'n', 'c', 'h'})
	buf := make([]byte, largeBatchRows*largeRowBytes)
	t0 := time.Now()
	lastLog := t0
	for done := int64(0); done < rows; {
		n := int(min(int64(largeBatchRows), rows-done))
		rng.Read(buf[:n*largeRowBytes])
		if err := loadBatch(ctx, c.db, cfg.Load, buf, n); err != nil {
			return res, fmt.Errorf("load after %d rows: %w", done, err)
		}
		done += int64(n)
		res.Requests++
		if time.Since(lastLog) > 10*time.Second {
			lastLog = time.Now()
			logf("large: loaded %d MB of %d MB (%.1f MB/s)", done*largeRowBytes/1e6, res.BlobBytes/1e6,
				float64(done*largeRowBytes)/1e6/time.Since(t0).Seconds())
		}
	}
	load := time.Since(t0)
	res.LoadSeconds, res.LoadMBps = secs(load), math.Round(float64(res.BlobBytes)/1e6/load.Seconds()*10)/10
	logf("large: loaded %d rows (%d MB) in %.1f s: %.1f MB/s (%s, %d requests)", rows, res.BlobBytes/1e6, load.Seconds(), res.LoadMBps, cfg.Load, res.Requests)
	endPhase("load")

	// 4. Copy the leader's database file, once the checkpoints the load
	// made due have written it (they run at the nodes' next tick).
	_, leader, err = c.waitLeader(ctx, 30*time.Second)
	if err != nil {
		return res, err
	}
	if err := c.waitCheckpointed(ctx, 10*time.Second); err != nil {
		return res, err
	}
	res.Leaders["copy"] = name(leader)
	begin("copy")
	src, size, err := largestDB(dirs[leader])
	if err != nil {
		return res, err
	}
	cp, n, err := timeCopy(src)
	if err != nil {
		return res, fmt.Errorf("copy %s: %w", src, err)
	}
	res.DBFileBytes, res.CopySeconds = size, secs(cp)
	res.CopyMBps = math.Round(float64(n)/1e6/cp.Seconds()*10) / 10
	logf("large: copied %s (%d MB) in %.2f s (%.0f MB/s)", filepath.Base(src), n/1e6, cp.Seconds(), res.CopyMBps)
	endPhase("copy")

	// 5. Join a 4th node while a writer writes.
	nodes, leader, err := c.waitLeader(ctx, 30*time.Second)
	if err != nil {
		return res, err
	}
	res.Leaders["join"] = name(leader)
	joinLeader := leader
	begin("join")
	stopWriter := make(chan struct{})
	writerDone := make(chan LargeWriter, 1)
	go func() { writerDone <- runWriter(c.db, stopWriter) }()
	stopOnce := sync.OnceFunc(func() { close(stopWriter) })
	collectWriter := sync.OnceFunc(func() { res.Writer = <-writerDone })
	defer func() { // on a failure during the join: what the writer saw
		stopOnce()
		collectWriter()
	}()
	if err := sleepCtx(ctx, 500*time.Millisecond); err != nil { // the writer in its stride
		return res, err
	}
	addrs, err := freeAddrs(2)
	if err != nil {
		return res, err
	}
	dirs = append(dirs, filepath.Join(cfg.Dir, "n4"))
	args4 := nodeArgs(addrs[0], dirs[3], addrs[1], strings.Join(c.addrs, ","), false, "")
	log4 := filepath.Join(cfg.Dir, "n4.log")
	nodes = c.scrape()
	if l := leaderOf(nodes); l >= 0 {
		joinLeader = l
	}
	res.JoinTargetIndex = uint64(nodes[joinLeader]["dqlite_commit_index"])
	t0 = time.Now()
	cmd, wait, lf, err := startProc(cfg.Bin, args4, log4)
	if err != nil {
		return res, err
	}
	c.procs, c.waits, c.logs, c.metrics = append(c.procs, cmd), append(c.waits, wait), append(c.logs, lf), append(c.metrics, addrs[1])
	sampler.setPID(3, cmd.Process.Pid)
	cl := &http.Client{Timeout: time.Second}
	joinLimit := 60*time.Second + time.Duration(float64(res.DBFileBytes)/2e6*float64(time.Second)) // 2 MB/s at worst
	for {
		m := scrapeOne(cl, addrs[1])
		res.JoinReachedIndex, res.JoinRole = uint64(m["dqlite_applied_index"]), roleOf(m)
		at := secs(time.Since(t0))
		if res.JoinMemberAt == 0 && res.JoinRole != "" {
			res.JoinMemberAt = at
		}
		if res.JoinStreamAt == 0 && m["dqlite_snapshot_received_bytes_total"] > 0 {
			res.JoinStreamAt = at
		}
		if res.JoinInstalledAt == 0 && m["dqlite_snapshots_installed_total"] > 0 {
			res.JoinInstalledAt = at
		}
		if res.JoinRole != "" && res.JoinReachedIndex >= res.JoinTargetIndex {
			break
		}
		if m["dqlite_storage_failed"] > 0 { // stopped for good: do not wait out joinLimit
			return res, fmt.Errorf("the 4th node's storage failed during the join, applied %d of %d (log %s)",
				res.JoinReachedIndex, res.JoinTargetIndex, log4)
		}
		select {
		case err := <-wait:
			wait <- err
			return res, fmt.Errorf("the 4th node exited during the join: %v (log %s)", err, log4)
		default:
		}
		if time.Since(t0) > joinLimit {
			return res, fmt.Errorf("the 4th node did not catch up within %v: applied %d of %d, role %q (log %s)",
				joinLimit, res.JoinReachedIndex, res.JoinTargetIndex, res.JoinRole, log4)
		}
		if err := sleepCtx(ctx, 25*time.Millisecond); err != nil {
			return res, err
		}
	}
	join := time.Since(t0)
	stopOnce()
	collectWriter()
	res.JoinSeconds = secs(join)
	if res.CopySeconds > 0 {
		res.JoinRatio = math.Round(join.Seconds()/cp.Seconds()*100) / 100
	}
	lp, np := sampler.phasePeak("join", joinLeader), sampler.phasePeak("join", 3)
	res.JoinLeaderPeakRSSMiB, res.JoinLeaderPeakAnonMiB = mib(lp.RSS), mib(lp.Anon)
	res.JoinNewPeakRSSMiB, res.JoinNewPeakAnonMiB = mib(np.RSS), mib(np.Anon)
	logf("large: n4 caught up (applied %d >= %d, %s) in %.2f s: %.2f× the file copy; peak RSS leader %s %.0f MiB, n4 %.0f MiB; writer %d writes, %d failures, p50 %.2f p99 %.2f max %.2f ms",
		res.JoinReachedIndex, res.JoinTargetIndex, res.JoinRole, join.Seconds(), res.JoinRatio, name(joinLeader),
		res.JoinLeaderPeakRSSMiB, res.JoinNewPeakRSSMiB, res.Writer.Writes, res.Writer.Failures, res.Writer.P50Ms, res.Writer.P99Ms, res.Writer.MaxMs)
	logf("large: join timeline: member at %.2f s, stream from %.2f s, installed at %.2f s", res.JoinMemberAt, res.JoinStreamAt, res.JoinInstalledAt)
	after := endPhase("join")
	res.JoinSnapshotsInstalled = uint64(after[3]["dqlite_snapshots_installed_total"])
	res.JoinLeaderSnapshotViews = uint64(after[joinLeader]["dqlite_snapshot_views_total"])

	// 6. Kill the 4th node and restart it.
	begin("restart")
	res.RestartNode = "n4"
	c.procs[3].Process.Kill()
	<-c.waits[3]
	c.logs[3].Close()
	sampler.setPID(3, 0)
	nodes, leader, err = c.waitLeader(ctx, 30*time.Second)
	if err != nil {
		return res, err
	}
	res.Leaders["restart"] = name(leader)
	res.RestartTargetIndex = uint64(nodes[leader]["dqlite_commit_index"])
	t0 = time.Now()
	cmd, wait, lf, err = startProc(cfg.Bin, args4, log4)
	if err != nil {
		return res, err
	}
	c.procs[3], c.waits[3], c.logs[3] = cmd, wait, lf
	sampler.setPID(3, cmd.Process.Pid)
	var ready, caught time.Duration
	for ready == 0 || caught == 0 {
		if ready == 0 && readyz(cl, addrs[1]) {
			ready = time.Since(t0)
		}
		if caught == 0 {
			m := scrapeOne(cl, addrs[1])
			if res.RestartReachedIndex = uint64(m["dqlite_applied_index"]); m != nil && res.RestartReachedIndex >= res.RestartTargetIndex {
				caught = time.Since(t0)
			}
		}
		select {
		case err := <-wait:
			wait <- err
			return res, fmt.Errorf("the restarted node exited: %v (log %s)", err, log4)
		default:
		}
		if time.Since(t0) > 2*time.Minute {
			return res, fmt.Errorf("the restarted node was not ready and caught up within 2 min: ready %v, applied %d of %d (log %s)",
				ready > 0, res.RestartReachedIndex, res.RestartTargetIndex, log4)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return res, err
		}
	}
	res.RestartReadySeconds, res.RestartCaughtUpSeconds, res.RestartSeconds = secs(ready), secs(caught), secs(max(ready, caught))
	logf("large: restarted n4 ready in %.2f s, caught up (applied %d >= %d) in %.2f s",
		ready.Seconds(), res.RestartReachedIndex, res.RestartTargetIndex, caught.Seconds())

	// 7. The end: every node's loop events, memory and files (once no
	// checkpoint is due).
	if err := c.waitCheckpointed(ctx, 10*time.Second); err != nil {
		return res, err
	}
	res.PhaseStarts["end"] = time.Now().UTC().Format("15:04:05.000")
	nodes = endPhase("end")
	res.Leaders["end"] = name(leaderOf(nodes))
	for i := range c.procs {
		n := nodes[i]
		ln := LargeNode{Name: name(i), Dir: dirs[i], Role: roleOf(n), Leader: n["dqlite_is_leader"] == 1,
			Joined: i == 3, Restarted: i == 3, PeakRSSByPhaseMiB: map[string]float64{}, LoopEventMaxByPhaseMs: map[string]float64{},
			PageCacheMiB: mib(uint64(n["dqlite_page_cache_bytes"])), AppliedIndex: uint64(n["dqlite_applied_index"]),
			SnapshotsInstalled: uint64(n["dqlite_snapshots_installed_total"]), SnapshotViews: uint64(n["dqlite_snapshot_views_total"])}
		for k, v := range n {
			if strings.HasPrefix(k, "dqlite_database_wal_bytes{") {
				ln.WALMiB += mib(uint64(v))
			}
		}
		for _, ph := range append(slices.Clone(largePhases), "end") {
			if v := sampler.phasePeak(ph, i); v.RSS > 0 {
				ln.PeakRSSByPhaseMiB[ph] = mib(v.RSS)
			}
			if i < len(loopMax[ph]) {
				ln.LoopEventMaxByPhaseMs[ph] = ms(time.Duration(loopMax[ph][i] * 1e9))
				ln.LoopEventMaxMs = max(ln.LoopEventMaxMs, ln.LoopEventMaxByPhaseMs[ph])
			}
		}
		ln.LoopEventsSlow = uint64(loopSlow["end"][i])
		if i == 3 { // the counters of the life before the kill
			before := phaseEnd["join"][i]
			ln.LoopEventsSlow += uint64(loopSlow["join"][i])
			ln.SnapshotsInstalled += uint64(before["dqlite_snapshots_installed_total"])
			ln.SnapshotViews += uint64(before["dqlite_snapshot_views_total"])
		}
		if hwm, err := procField(fmt.Sprintf("/proc/%d/status", c.procs[i].Process.Pid), "VmHWM:", 1024); err == nil {
			ln.HWMMiB = mib(hwm)
		}
		if _, size, err := largestDB(dirs[i]); err == nil {
			ln.DBFileMiB = mib(uint64(size))
		}
		res.Nodes = append(res.Nodes, ln)
	}
	sampler.close()
	res.RSSSamples = sampler.samples
	for i := range res.Nodes {
		p := sampler.peak[i]
		res.Nodes[i].PeakRSSMiB, res.Nodes[i].PeakAnonMiB, res.Nodes[i].PeakFileMiB = mib(p.RSS), mib(p.Anon), mib(p.File)
	}
	// After the loop figures were read (these reads are not part of the
	// workload): the table's rows on the leader and on the new node.
	// The new node is read at level any: through a fresh connector to all
	// four nodes, four connections held at once, whose reads go to the
	// nodes round-robin; they must agree, and the new node's
	// dqlite_reads_total must show it served one.
	if l := leaderOf(nodes); l >= 0 {
		res.RowsOnLeader, err = maxID(ctx, []string{c.addrs[l]}, driver.ReadLeader, 1)
		if err == nil {
			before := servedBy(scrapeOne(cl, addrs[1]))
			res.RowsOnNew, err = maxID(ctx, append(slices.Clone(c.addrs), addrs[0]), driver.ReadAny, 4)
			if err == nil && servedBy(scrapeOne(cl, addrs[1])) <= before {
				res.RowsOnNew, err = 0, errors.New("no read was served by the new node")
			}
		}
		if err != nil {
			res.VerifyError = err.Error()
		}
	}
	logf("large: done in %.0f s", time.Since(start).Seconds())
	return res, nil
}

// servedBy is the reads a node served from its own state.
func servedBy(m map[string]float64) float64 {
	var r float64
	for _, k := range servedReads {
		r += m[k]
	}
	return r
}

// maxID reads max(id) of the big table through a connector to addrs, on
// conns connections held at once; they must agree.
func maxID(ctx context.Context, addrs []string, read driver.ReadLevel, conns int) (int64, error) {
	db := openDB(addrs, read)
	defer db.Close()
	var got []int64
	for i := 0; i < conns; i++ {
		cn, err := db.Conn(ctx)
		if err != nil {
			return 0, err
		}
		defer cn.Close()
		var n sql.NullInt64
		if err := cn.QueryRowContext(ctx, "SELECT max(id) FROM big").Scan(&n); err != nil {
			return 0, err
		}
		got = append(got, n.Int64)
	}
	if slices.Min(got) != slices.Max(got) {
		return 0, fmt.Errorf("the nodes disagree on max(id): %v", got)
	}
	return got[0], nil
}

// ParseSize parses a size: a number of bytes with an optional unit (kB,
// MB, GB, TB in powers of 1000; KiB, MiB, GiB, TiB in powers of 1024; B).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %q: not a number of bytes with a unit (600MB, 2GiB)", s)
	}
	mult := map[string]float64{"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("size %q: unknown unit %q", s, unit)
	}
	return int64(f * mult), nil
}

// Markdown writes the large workload's tables: the figures against their
// targets, then per node.
func (l *LargeResult) Markdown(w io.Writer) {
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	fmt.Fprintf(w, "Large database (dqbench -large): %d bytes of %d-byte random blobs, 3 dqlited nodes (frames), a 4th joining, then killed and restarted.\n\n",
		l.SizeBytes, l.RowBytes)
	if l.Failure != "" {
		fmt.Fprintf(w, "**The workload failed:** %s (figures below are what was measured before).\n\n", l.Failure)
	}
	fmt.Fprintln(w, "| measure | dqlite (frames) | target |")
	fmt.Fprintln(w, "|---|---|---|")
	row := func(name, value, target string) { fmt.Fprintf(w, "| %s | %s | %s |\n", name, value, target) }
	row("size", fmt.Sprintf("%.1f MB of blobs (%d rows)", float64(l.BlobBytes)/1e6, l.Rows), "")
	row("load", fmt.Sprintf("%.1f s, %.1f MB/s (%d %s requests of up to %d rows)", l.LoadSeconds, l.LoadMBps, l.Requests, l.Load, largeBatchRows), "")
	row("leader's database file", fmt.Sprintf("%.1f MiB", mib(uint64(l.DBFileBytes))), "")
	row("file copy (read, write, fsync)", fmt.Sprintf("%.3f s (%.0f MB/s)", l.CopySeconds, l.CopyMBps), "")
	if l.JoinSeconds > 0 {
		how := "from the log alone: no snapshot installed"
		if l.JoinSnapshotsInstalled > 0 {
			how = fmt.Sprintf("%d snapshot(s) of the files installed", l.JoinSnapshotsInstalled)
		}
		row("join of a 4th node", fmt.Sprintf("%.3f s (applied %d ≥ %d, role %s; %s, leader's snapshot views %d)", l.JoinSeconds,
			l.JoinReachedIndex, l.JoinTargetIndex, l.JoinRole, how, l.JoinLeaderSnapshotViews), "")
		row("join / file copy", fmt.Sprintf("%.2f", l.JoinRatio), fmt.Sprintf("≤ %.1f: %s", largeTargetRatio, verdict(l.JoinRatio <= largeTargetRatio)))
		row("peak RSS during the join", fmt.Sprintf("leader %s %.1f MiB (anon %.1f), new node %.1f MiB (anon %.1f)", l.Leaders["join"],
			l.JoinLeaderPeakRSSMiB, l.JoinLeaderPeakAnonMiB, l.JoinNewPeakRSSMiB, l.JoinNewPeakAnonMiB),
			fmt.Sprintf("< %d MiB each: %s", largeTargetRSSMiB, verdict(l.JoinLeaderPeakRSSMiB < largeTargetRSSMiB && l.JoinNewPeakRSSMiB < largeTargetRSSMiB)))
	}
	if l.Writer.Seconds > 0 {
		wr := fmt.Sprintf("%d writes in %.1f s, %d failed; p50 %.2f ms, p99 %.2f ms, max %.2f ms", l.Writer.Writes, l.Writer.Seconds,
			l.Writer.Failures, l.Writer.P50Ms, l.Writer.P99Ms, l.Writer.MaxMs)
		if len(l.Writer.Errors) > 0 {
			wr += " (" + strings.Join(l.Writer.Errors, "; ") + ")"
		}
		row("writer during the join", wr, "no failure: "+verdict(l.Writer.Failures == 0))
	}
	if l.RestartSeconds > 0 {
		row(fmt.Sprintf("restart of %s after SIGKILL", l.RestartNode), fmt.Sprintf("%.3f s (/readyz 200 after %.3f s, applied %d ≥ %d after %.3f s)",
			l.RestartSeconds, l.RestartReadySeconds, l.RestartReachedIndex, l.RestartTargetIndex, l.RestartCaughtUpSeconds),
			fmt.Sprintf("≤ %d s: %s", largeTargetRestartSec, verdict(l.RestartSeconds <= largeTargetRestartSec)))
	}
	if len(l.Nodes) > 0 {
		worst, at, slow := 0.0, "", uint64(0)
		for _, n := range l.Nodes {
			if n.LoopEventMaxMs >= worst {
				worst, at = n.LoopEventMaxMs, n.Name
			}
			slow += n.LoopEventsSlow
		}
		row("longest loop event", fmt.Sprintf("%.1f ms (%s); %d events over 100 ms on all nodes", worst, at, slow),
			fmt.Sprintf("≤ %d ms: %s", largeTargetLoopEvent.Milliseconds(), verdict(worst <= float64(largeTargetLoopEvent.Milliseconds()) && slow == 0)))
		check := fmt.Sprintf("leader %d, new node %d (of %d)", l.RowsOnLeader, l.RowsOnNew, l.Rows)
		if l.VerifyError != "" {
			check += ": " + l.VerifyError
		}
		row("rows read back at the end (max(id))", check, "")
	}
	leaders := []string{}
	for _, ph := range append(slices.Clone(largePhases), "end") {
		if v, ok := l.Leaders[ph]; ok {
			leaders = append(leaders, ph+" "+v)
		}
	}
	row("leader at each phase's start", strings.Join(leaders, ", "), "")
	var starts []string
	for _, ph := range append(slices.Clone(largePhases), "end") {
		if v, ok := l.PhaseStarts[ph]; ok {
			starts = append(starts, ph+" "+v)
		}
	}
	row("phase starts (UTC)", strings.Join(starts, ", "), "")
	row("whole workload", fmt.Sprintf("%.0f s, %d RSS samples (every 100 ms)", l.Seconds, l.RSSSamples), "")
	if len(l.Nodes) == 0 {
		return
	}
	fmt.Fprintln(w, "\n| node | role | peak RSS MiB (anon, file) | load | copy | join | restart | VmHWM MiB | longest loop event ms | events > 100 ms | page cache MiB | WAL MiB | database file MiB | snapshots installed | snapshot views |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, n := range l.Nodes {
		nm := n.Name
		if n.Leader {
			nm += "*"
		}
		if n.Joined {
			nm += " (joined, restarted)"
		}
		ph := func(p string) string {
			if v, ok := n.PeakRSSByPhaseMiB[p]; ok {
				return fmt.Sprintf("%.1f", v)
			}
			return "-"
		}
		fmt.Fprintf(w, "| %s | %s | %.1f (%.1f, %.1f) | %s | %s | %s | %s | %.1f | %.1f | %d | %.1f | %.1f | %.1f | %d | %d |\n", nm, n.Role, n.PeakRSSMiB, n.PeakAnonMiB, n.PeakFileMiB,
			ph("load"), ph("copy"), ph("join"), ph("restart"), n.HWMMiB, n.LoopEventMaxMs, n.LoopEventsSlow, n.PageCacheMiB, n.WALMiB, n.DBFileMiB,
			n.SnapshotsInstalled, n.SnapshotViews)
	}
	fmt.Fprintln(w, "\n\\* the leader at the end. Peak RSS: the highest VmRSS of /proc/PID/status sampled every 100 ms, over the whole workload and per phase (anon, file: the highest RssAnon and RssFile, each on its own); VmHWM: the kernel's peak at the end (for the restarted node, since its restart). Loop events: dqlite_loop_event_max_seconds and dqlite_loop_events_slow_total (the restarted node's over both its lives). Page cache, WAL, snapshots: the nodes' metrics at the end (the restarted node's snapshot counters summed over both lives); database file: the largest sqlite-*.db in each data directory. rqlite: not measured (the harness cannot run it on this machine).")
}
