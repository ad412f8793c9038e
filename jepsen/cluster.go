package jepsen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dqlite-go/dqlite/wire"
)

// proc is one node: a dqlited process behind its proxy.
type proc struct {
	idx     int
	id      uint64
	addr    string // the proxy: how everyone reaches the node
	listen  string // where dqlited listens
	metrics string
	dir     string
	logPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	paused  bool
	starts  int
	running bool
}

// cluster is the processes of a run.
type cluster struct {
	bin     string
	out     string // output folder: logs
	extra   []string
	net     *Network
	proxies []*Proxy
	procs   []*proc
	nextID  uint64
	log     func(string, ...any)
	// key is the cluster key (hex) every process proves on its peer links
	// (DQLITE_CLUSTER_KEY), so the runs exercise authenticated links.
	key string
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// newCluster starts n nodes: the first bootstraps, the others join; it
// waits until min(n, 5) of them are voters... (role management keeps 3
// voters and up to 3 standbys).
func newCluster(ctx context.Context, bin, dataDir, out string, n int, extra []string, log func(string, ...any)) (*cluster, error) {
	c := &cluster{bin: bin, out: out, extra: extra, net: newNetwork(), nextID: 100, log: log}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, err
	}
	c.key = hex.EncodeToString(key[:])
	for i := 0; i < n; i++ {
		listen, err := freeAddr()
		if err != nil {
			return nil, err
		}
		metrics, err := freeAddr()
		if err != nil {
			return nil, err
		}
		px, err := c.net.NewProxy(i, listen)
		if err != nil {
			return nil, err
		}
		c.proxies = append(c.proxies, px)
		p := &proc{idx: i, id: uint64(i + 1), addr: px.Addr(), listen: listen, metrics: metrics,
			dir: filepath.Join(dataDir, fmt.Sprint("n", i+1))}
		c.net.SetID(p.id, i)
		c.procs = append(c.procs, p)
	}
	for _, p := range c.procs {
		if err := c.start(p); err != nil {
			c.stop()
			return nil, err
		}
	}
	if err := c.waitVoters(ctx, 3, 60*time.Second); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

func (c *cluster) addrs() []string {
	var a []string
	for _, p := range c.procs {
		a = append(a, p.addr)
	}
	return a
}

// start starts p's process (joining through the others when its data
// directory is new).
func (c *cluster) start(p *proc) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return err
	}
	p.starts++
	p.logPath = filepath.Join(c.out, fmt.Sprintf("node%d-id%d.log", p.idx+1, p.id))
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := []string{"-id", strconv.FormatUint(p.id, 10), "-address", p.addr, "-listen", p.listen,
		"-dir", p.dir, "-metrics", p.metrics, "-tick", "50ms", "-log-level", "debug", "-handover-timeout", "2s"}
	if p.idx > 0 || p.id != 1 {
		var others []string
		for _, q := range c.procs {
			if q != p {
				others = append(others, q.addr)
			}
		}
		args = append(args, "-join", strings.Join(others, ","))
	}
	args = append(args, c.extra...)
	cmd := exec.Command(c.bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the harness
	cmd.Env = append(os.Environ(), "DQLITE_CLUSTER_KEY="+c.key)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	p.cmd, p.done, p.running, p.paused = cmd, done, true, false
	return nil
}

// kill9 kills p at once and waits for it to be gone.
func (c *cluster) kill9(p *proc) {
	p.mu.Lock()
	cmd, done, running := p.cmd, p.done, p.running
	p.running, p.paused = false, false
	p.mu.Unlock()
	if !running {
		return
	}
	cmd.Process.Kill()
	<-done
}

func (c *cluster) signal(p *proc, sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running {
		p.cmd.Process.Signal(sig)
		p.paused = sig == syscall.SIGSTOP
	}
}

// stop ends every process and proxy.
func (c *cluster) stop() {
	for _, p := range c.procs {
		c.signal(p, syscall.SIGCONT)
		c.kill9(p)
	}
	for _, px := range c.proxies {
		px.Close()
	}
}

// leader returns a connection to the leader, or an error.
func (c *cluster) leader(ctx context.Context) (*wire.Conn, error) {
	return wire.FindLeader(ctx, c.addrs(), nil)
}

// leaderIdx is the index of the node that leads, or -1.
func (c *cluster) leaderIdx(ctx context.Context) int {
	conn, err := c.leader(ctx)
	if err != nil {
		return -1
	}
	defer conn.Close()
	for _, p := range c.procs {
		if p.addr == conn.Address {
			return p.idx
		}
	}
	return -1
}

// waitVoters waits until the cluster has n voters, all answering.
func (c *cluster) waitVoters(ctx context.Context, n int, timeout time.Duration) error {
	return waitFor(ctx, timeout, fmt.Sprintf("%d voters", n), func() bool {
		conn, err := c.leader(ctx)
		if err != nil {
			return false
		}
		defer conn.Close()
		servers, err := conn.Cluster(ctx, 1)
		voters := 0
		for _, s := range servers {
			if s.Role == wire.RoleVoter {
				voters++
			}
		}
		return err == nil && voters >= n
	})
}

// waitFor checks cond every 100 ms until it holds, ctx ends or timeout.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// metric reads one sample from a node's /metrics.
func metric(addr, name string) (float64, error) {
	m, err := metrics(addr)
	if err != nil {
		return 0, err
	}
	v, ok := m[name]
	if !ok {
		return 0, fmt.Errorf("%s: no %s", addr, name)
	}
	return v, nil
}

// metrics reads every sample of a node's /metrics, by name with labels
// (e.g. dqlite_reads_total{path="lease"}).
func metrics(addr string) (map[string]float64, error) {
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, nil
}

// removeAttemptTimeout bounds one REMOVE attempt of the membership nemesis.
const removeAttemptTimeout = 5 * time.Second

// errRefused is a fault the cluster rightly refused to take.
var errRefused = errors.New("refused by the cluster")

// rejoin removes p from the cluster, wipes its data and starts it again
// under a new id (the membership nemesis).
func (c *cluster) rejoin(ctx context.Context, p *proc) error {
	// Remove (retried for a while: the leader may be moving or busy with
	// another membership change).
	var lastErr error
	refused := false
	err := waitFor(ctx, 20*time.Second, fmt.Sprintf("removal of id %d", p.id), func() bool {
		conn, err := c.leader(ctx)
		if err != nil {
			lastErr = err
			return false
		}
		defer conn.Close()
		// One attempt waits a few seconds, not the node's request timeout:
		// a leader that loses leadership with the removal in its log
		// cannot tell whether it committed (outcome unknown), and when it
		// removed itself no leader will tell it; the next attempt asks the
		// new leader.
		actx, cancel := context.WithTimeout(ctx, removeAttemptTimeout)
		defer cancel()
		lastErr = conn.Empty(actx, &wire.Request{Type: wire.ReqRemove, ID: p.id})
		// The cluster refuses a removal that would leave no responsive
		// quorum: correct, and usually over once the leader hears from
		// a node a fault just let go of, so it is asked again until the
		// wait ends (back-to-back refusals made the kind never run).
		refused = lastErr != nil && strings.Contains(lastErr.Error(), "no responsive quorum")
		// An earlier attempt whose reply was lost (a removed leader does
		// not hear its removal commit) may have done it already.
		gone := lastErr != nil && strings.Contains(lastErr.Error(), "is not a member")
		return lastErr == nil || gone
	})
	if err != nil && refused {
		return errRefused
	}
	if err != nil {
		return fmt.Errorf("%v: %v", err, lastErr)
	}
	c.kill9(p)
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(p.dir, e.Name())); err != nil {
			return err
		}
	}
	c.nextID++
	p.mu.Lock()
	p.id = c.nextID
	p.mu.Unlock()
	c.net.SetID(p.id, p.idx)
	return c.start(p)
}

// setDatabase is the set workload's database (the others use "jepsen").
const setDatabase = "jepsen-set"

// imageHash is a hash of one node's databases (DUMP of each, as of its
// applied state).
func imageHash(ctx context.Context, addr string) (uint64, error) {
	conn, err := wire.Dial(ctx, addr, nil)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	h := fnv.New64a()
	for _, name := range []string{"jepsen", setDatabase} {
		files, err := conn.Dump(ctx, name)
		if err != nil {
			return 0, fmt.Errorf("dump of %s: %w", name, err)
		}
		if len(files) == 0 {
			return 0, errors.New("empty dump")
		}
		h.Write(files[0].Data)
	}
	return h.Sum64(), nil
}
