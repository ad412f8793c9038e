// Package bench measures dqlite-go against statement replication (the
// same code in its rqlite-style mode), single-node SQLite and, optionally,
// an external rqlite cluster, on the workloads of the design's BENCH.md,
// side by side in one run. See bench/cmd/dqbench.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dqlite-go/dqlite/driver"
	"github.com/dqlite-go/dqlite/internal/testcluster"
	_ "github.com/mattn/go-sqlite3" // the single-node baseline
)

// System is one thing measured.
type System interface {
	Name() string
	Exec(ctx context.Context, sql string, args ...any) error
	// Query runs a read and consumes its rows.
	Query(ctx context.Context, sql string, args ...any) error
	// Stats returns bytes replicated between nodes, bytes written to disk
	// and resident memory per node, so far (zero where not measurable).
	Stats() Stats
	Close() error
}

// dbSystem is a System over database/sql.
type dbSystem struct {
	name string
	db   *sql.DB
}

func (s *dbSystem) Name() string { return s.name }
func (s *dbSystem) Exec(ctx context.Context, q string, args ...any) error {
	_, err := s.db.ExecContext(ctx, q, args...)
	return err
}
func (s *dbSystem) Query(ctx context.Context, q string, args ...any) error {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	for rows.Next() {
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return err
	}
	return rows.Close()
}

// sqliteSystem is single-node SQLite through mattn/go-sqlite3, WAL mode,
// synchronous=FULL: the local limit of a durable commit.
type sqliteSystem struct {
	dbSystem
	dir string
}

// OpenSQLite opens a fresh database file in dir.
func OpenSQLite(dir string) (System, error) {
	path := filepath.Join(dir, "sqlite.db")
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_synchronous=FULL&_busy_timeout=10000&_txlock=immediate")
	if err != nil {
		return nil, err
	}
	// One connection: SQLite serializes writers anyway, and its busy handler
	// sleeps in milliseconds when connections contend (measured: 4x slower
	// with 32 clients on 64 connections).
	db.SetMaxOpenConns(1)
	return &sqliteSystem{dbSystem{"sqlite", db}, dir}, nil
}

func (s *sqliteSystem) Stats() Stats {
	w, _ := procWriteBytes(os.Getpid()) // the kernel's count: an upper bound
	cpu, _ := procCPU(os.Getpid())
	return Stats{Written: w, CPU: []time.Duration{cpu}}
}
func (s *sqliteSystem) Close() error { return s.db.Close() }

// Cluster is 3 dqlited processes on loopback with their own data
// directories, reached through the database/sql driver.
type Cluster struct {
	dbSystem
	addrs   []string
	procs   []*exec.Cmd
	metrics []string
	waits   []chan error
	logs    []*os.File
	// view: the processes belong to another Cluster (see WithRead); Close
	// closes only this one's connector.
	view bool
}

// BuildDqlited builds the dqlited binary into dir.
func BuildDqlited(dir string) (string, error) { return testcluster.BuildDqlited(dir) }

func freeAddrs(n int) ([]string, error) {
	var addrs []string
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// StartCluster starts 3 dqlited processes (statement replication when
// statements is set) with data under dir, waits until all three are voters,
// and connects.
func StartCluster(ctx context.Context, bin, dir, name string, statements bool) (*Cluster, error) {
	return startCluster(ctx, bin, dir, name, statements, "50ms")
}

// startCluster is StartCluster with the nodes' -tick ("": dqlited's
// default).
func startCluster(ctx context.Context, bin, dir, name string, statements bool, tick string) (*Cluster, error) {
	addrs, err := freeAddrs(6)
	if err != nil {
		return nil, err
	}
	c := &Cluster{}
	for i := 0; i < 3; i++ {
		join := ""
		if i > 0 {
			join = addrs[0]
		}
		args := nodeArgs(addrs[i], filepath.Join(dir, fmt.Sprint("n", i+1)), addrs[3+i], join, statements, tick)
		cmd, wait, log, err := startProc(bin, args, filepath.Join(dir, fmt.Sprintf("n%d.log", i+1)))
		if err != nil {
			c.Close()
			return nil, err
		}
		c.procs, c.waits, c.logs = append(c.procs, cmd), append(c.waits, wait), append(c.logs, log)
		c.metrics = append(c.metrics, addrs[3+i])
	}
	// Wait (bounded) for three voters.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if sum(c.scrape(), "dqlite_role{role=\"voter\"}") == 3 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			c.Close()
			return nil, fmt.Errorf("cluster %s: no three voters within 60 s (logs in %s)", name, dir)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	c.addrs = addrs[:3]
	c.db = openDB(c.addrs, driver.ReadLeader)
	c.name = name
	return c, nil
}

// nodeArgs are the flags of a harness node: its address, data directory
// and metrics address, -join when join is set, -tick when tick is.
func nodeArgs(addr, dir, metrics, join string, statements bool, tick string) []string {
	args := []string{"-address", addr, "-dir", dir, "-metrics", metrics, "-log-level", "warn"}
	if tick != "" {
		args = append(args, "-tick", tick)
	}
	if join != "" {
		args = append(args, "-join", join)
	}
	if statements {
		args = append(args, "-statements")
	}
	return args
}

// startProc starts bin with args, its output appended to logPath; wait
// receives the process's exit.
func startProc(bin string, args []string, logPath string) (*exec.Cmd, chan error, *os.File, error) {
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the harness
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, nil, nil, err
	}
	wait := make(chan error, 1)
	go func() { wait <- cmd.Wait() }()
	return cmd, wait, log, nil
}

func openDB(addrs []string, read driver.ReadLevel) *sql.DB {
	cn := driver.NewConnector(addrs, "bench")
	cn.NotIdempotent = true // statement mode cannot record sessions: compare like with like
	cn.Read = read
	db := sql.OpenDB(cn)
	db.SetMaxOpenConns(256)
	db.SetMaxIdleConns(256)
	return db
}

// WithRead returns another system named name over the same processes,
// through a connector of its own whose queries use the read level (writes
// still go to the leader). Closing it closes only its connector.
func (c *Cluster) WithRead(name string, read driver.ReadLevel) *Cluster {
	v := &Cluster{addrs: c.addrs, procs: c.procs, metrics: c.metrics, waits: c.waits, logs: c.logs, view: true}
	v.db = openDB(c.addrs, read)
	v.name = name
	return v
}

// Warm opens n connections of the system's pool at once, each running a
// read, so a later workload does not pay for them (the other clusters'
// pools are warm from the workloads before).
func (c *Cluster) Warm(ctx context.Context, n int) error {
	var conns []*sql.Conn
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	for i := 0; i < n; i++ {
		cn, err := c.db.Conn(ctx)
		if err != nil {
			return err
		}
		conns = append(conns, cn)
		var one int
		if err := cn.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			return err
		}
	}
	return nil
}

// Profile fetches a CPU profile of the leader process covering the next
// seconds into path (and its top functions into path.txt).
func (c *Cluster) Profile(ctx context.Context, seconds int, path string) error {
	leader := ""
	cl := http.Client{Timeout: 2 * time.Second}
	for _, m := range c.metrics {
		resp, err := cl.Get("http://" + m + "/metrics")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), "\ndqlite_is_leader 1\n") {
			leader = m
		}
	}
	if leader == "" {
		return errors.New("no leader to profile")
	}
	pcl := http.Client{Timeout: time.Duration(seconds+10) * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", leader, seconds), nil)
	if err != nil {
		return err
	}
	resp, err := pcl.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return err
	}
	top, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=25", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pprof: %v: %s", err, top)
	}
	return os.WriteFile(path+".txt", top, 0o644)
}

// scrape reads every node's /metrics: per node, each sample's value by its
// name with labels (nil for a node that did not answer).
func (c *Cluster) scrape() []map[string]float64 {
	out := make([]map[string]float64, len(c.metrics))
	cl := &http.Client{Timeout: time.Second}
	for i, m := range c.metrics {
		out[i] = scrapeOne(cl, m)
	}
	return out
}

// scrapeOne reads the /metrics of the node at the metrics address m: each
// sample's value by its name with labels (nil when it did not answer).
func scrapeOne(cl *http.Client, m string) map[string]float64 {
	resp, err := cl.Get("http://" + m + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	samples := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := cutLast(line, " "); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				samples[k] = f
			}
		}
	}
	if sc.Err() != nil {
		return nil
	}
	return samples
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// sum is a sample summed over the nodes.
func sum(nodes []map[string]float64, sample string) float64 {
	var s float64
	for _, n := range nodes {
		s += n[sample]
	}
	return s
}

// servedReads are the reads a node served from its own state, however it
// learnt it could (dqlite_reads_total: lease, round and forwarded are
// linearizable reads, stale the bounded-staleness ones; answered are other
// nodes' read index requests, not reads served here).
var servedReads = []string{
	`dqlite_reads_total{path="lease"}`, `dqlite_reads_total{path="round"}`,
	`dqlite_reads_total{path="forwarded"}`, `dqlite_reads_total{path="stale"}`,
}

func (c *Cluster) Stats() Stats {
	nodes := c.scrape()
	// Written: what the nodes append to their logs and write as snapshots
	// (the kernel's write_bytes is inflated on this kind of machine: it
	// counted 217 MB for 12.6 MB of write calls on a preallocated segment).
	st := Stats{Replicated: uint64(sum(nodes, "dqlite_peer_sent_bytes_total")),
		Written: uint64(sum(nodes, "dqlite_log_appended_bytes_total") + sum(nodes, "dqlite_snapshot_bytes_total"))}
	leaders := 0
	for i, n := range nodes {
		if n["dqlite_is_leader"] == 1 {
			st.Leader = i + 1
			leaders++
		}
		var r float64
		for _, k := range servedReads {
			r += n[k]
		}
		st.Reads = append(st.Reads, uint64(r))
	}
	if leaders != 1 {
		st.Leader = 0 // none, or two for a moment: not known
	}
	for _, p := range c.procs {
		r, _ := procRSS(p.Process.Pid)
		st.RSS = append(st.RSS, r)
		cpu, _ := procCPU(p.Process.Pid)
		st.CPU = append(st.CPU, cpu)
	}
	return st
}

// Close stops the processes (SIGTERM, then SIGKILL after 10 s).
func (c *Cluster) Close() error {
	if c.db != nil {
		c.db.Close()
	}
	if c.view {
		return nil
	}
	for i, p := range c.procs {
		p.Process.Signal(os.Interrupt)
		select {
		case <-c.waits[i]:
		case <-time.After(10 * time.Second):
			p.Process.Kill()
			<-c.waits[i]
		}
		c.logs[i].Close()
	}
	return nil
}

// procWriteBytes is /proc/PID/io's write_bytes (bytes sent to the block
// layer).
func procWriteBytes(pid int) (uint64, error) {
	return procField(fmt.Sprintf("/proc/%d/io", pid), "write_bytes:", 1)
}

// Stats are counters of a system so far.
type Stats struct {
	Replicated uint64          // bytes sent between nodes
	Written    uint64          // bytes written to disk (all nodes)
	RSS        []uint64        // resident memory per node
	CPU        []time.Duration // CPU time (user+system) per node
	// Reads are the reads each node served so far (dqlite_reads_total:
	// lease, round, forwarded and stale), for the clusters.
	Reads []uint64
	// Leader is the leading node's number (its index in the per-node
	// lists, plus one); 0 when not known or not a cluster.
	Leader int
}

// procCPU is the user+system CPU time of a process (/proc/PID/stat).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces, in parens).
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	s, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond, nil // USER_HZ is 100 on Linux
}

// procRSS is /proc/PID/status's VmRSS in bytes.
func procRSS(pid int) (uint64, error) {
	return procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:", 1024)
}

func procField(path, key string, unit uint64) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			n, err := strconv.ParseUint(f[0], 10, 64)
			return n * unit, err
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, key)
}

// rqliteSystem talks to an external rqlite cluster the user started, with
// its HTTP API (strong read consistency).
type rqliteSystem struct {
	base string
	cl   *http.Client
}

// OpenRqlite returns a system for the rqlite node at base (http://host:port).
func OpenRqlite(base string) System {
	return &rqliteSystem{base: strings.TrimSuffix(base, "/"), cl: &http.Client{Timeout: 30 * time.Second}}
}

func (r *rqliteSystem) Name() string { return "rqlite" }

func (r *rqliteSystem) post(ctx context.Context, path, q string, args []any) error {
	stmt := append([]any{q}, args...)
	body, _ := json.Marshal([][]any{stmt})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.cl.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode != 200 {
		return fmt.Errorf("rqlite: %s: %s", resp.Status, b)
	}
	var out struct {
		Results []struct {
			Error string `json:"error"`
		} `json:"results"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return err
	}
	if out.Error != "" {
		return errors.New("rqlite: " + out.Error)
	}
	for _, res := range out.Results {
		if res.Error != "" {
			return errors.New("rqlite: " + res.Error)
		}
	}
	return nil
}

func (r *rqliteSystem) Exec(ctx context.Context, q string, args ...any) error {
	return r.post(ctx, "/db/execute", q, args)
}
func (r *rqliteSystem) Query(ctx context.Context, q string, args ...any) error {
	return r.post(ctx, "/db/query?level=strong", q, args)
}
func (r *rqliteSystem) Stats() Stats { return Stats{} }
func (r *rqliteSystem) Close() error { return nil }
