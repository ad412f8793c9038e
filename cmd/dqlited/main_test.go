package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/driver"
	"github.com/dqlite-go/dqlite/internal/buildtest"
	"github.com/dqlite-go/dqlite/internal/testcluster"
	"github.com/dqlite-go/dqlite/wire"
)

var binDir string

// TestMain makes the directory the binaries are built into.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dqlited-test-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildBins builds dqlited and the dqlite shell into binDir once.
var buildBins = sync.OnceValue(func() error {
	for _, b := range []struct{ name, pkg string }{{"dqlited", "."}, {"dqlite", "../dqlite"}} {
		if _, err := buildtest.Build(binDir, b.name, b.pkg); err != nil {
			return err
		}
	}
	return nil
})

// bin returns the path of the built dqlited or dqlite. The build happens
// in the first test that needs it, not in TestMain: go test logs the
// sources buildtest.Build reads only while tests run, and with them logged
// it reruns these tests after a change to any of them.
func bin(t *testing.T, name string) string {
	t.Helper()
	if err := buildBins(); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(binDir, name)
}

// proc is a dqlited process.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	addr    string
	metrics string
	log     string
	done    chan struct{}
	err     error
}

func startProc(t *testing.T, addr, metrics, dir string, extra ...string) *proc {
	args := append([]string{"-address", addr, "-dir", dir, "-metrics", metrics, "-tick", "50ms", "-log-level", "debug"}, extra...)
	p := &proc{t: t, addr: addr, metrics: metrics, log: filepath.Join(dir, "..", filepath.Base(dir)+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin(t, "dqlited"), args...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the harness
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("log of %s:\n%s", addr, b)
		}
	})
	return p
}

// waitExit waits for the process to exit and returns its exit code.
func (p *proc) waitExit(timeout time.Duration) int {
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %v", p.addr, timeout)
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	p.t.Fatalf("%s: %v", p.addr, p.err)
	return -1
}

// eventually checks cond every 50ms until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// startCluster starts a first node bootstrapping the cluster and two
// joining it, and waits until all three are voters.
func startCluster(t *testing.T) []*proc {
	addrs := testcluster.FreeAddrs(t, 6)
	base := t.TempDir()
	var procs []*proc
	for i := 0; i < 3; i++ {
		var extra []string
		if i > 0 {
			extra = []string{"-join", addrs[0]}
		}
		procs = append(procs, startProc(t, addrs[i], addrs[3+i], filepath.Join(base, fmt.Sprint("n", i+1)), extra...))
	}
	waitVoters(t, procs, nil)
	return procs
}

func shell(t *testing.T, addrs []string, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin(t, "dqlite"), append([]string{"-s", strings.Join(addrs, ","), "-timeout", "20s"}, append(args, "test")...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dqlite %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func addrsOf(procs []*proc) []string {
	var a []string
	for _, p := range procs {
		a = append(a, p.addr)
	}
	return a
}

// TestShellAgainstProcesses runs three dqlited processes (one bootstraps,
// two join and are promoted by role management) and uses the shell
// non-interactively: create, insert, select, .cluster, .leader, .dump (the
// dump opens with sqlite3), and a script on stdin.
func TestShellAgainstProcesses(t *testing.T) {
	procs := startCluster(t)
	addrs := addrsOf(procs)
	shell(t, addrs, "", "-c", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
	if out := shell(t, addrs, "", "-c", "INSERT INTO t (name) VALUES ('alice'), ('bob')"); !strings.Contains(out, "2 rows affected") {
		t.Fatalf("insert: %s", out)
	}
	var rows []map[string]any
	out := shell(t, addrs, "", "-f", "json", "-c", "SELECT id, name FROM t ORDER BY id")
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 2 || rows[1]["name"] != "bob" {
		t.Fatalf("select: %q %v", out, err)
	}
	out = shell(t, addrs, "", "-c", ".cluster")
	if strings.Count(out, "voter") != 3 {
		t.Fatalf(".cluster: %s", out)
	}
	out = strings.TrimSpace(shell(t, addrs, "", "-c", ".leader"))
	if !strings.Contains(strings.Join(addrs, " "), out) || out == "" {
		t.Fatalf(".leader: %q", out)
	}
	out = shell(t, addrs, "INSERT INTO t (name) VALUES ('carol');\nSELECT count(*) AS n\n  FROM t;\n.describe\n")
	if !strings.Contains(out, "n\n-\n3") || !strings.Contains(out, "weight") {
		t.Fatalf("script: %q", out)
	}
	dump := filepath.Join(t.TempDir(), "test.db")
	shell(t, addrs, "", "-c", ".dump "+dump)
	got, err := exec.Command("sqlite3", dump, "SELECT group_concat(name) FROM t").CombinedOutput()
	if err != nil || strings.TrimSpace(string(got)) != "alice,bob,carol" {
		t.Fatalf("sqlite3 on the dump: %q %v", got, err)
	}
	// Restore: the sqlite3 tool's .dump of the dump loads through the shell
	// (its BEGIN ... COMMIT goes as one request).
	shell(t, addrs, "", "-c", "DROP TABLE t")
	script, err := exec.Command("sqlite3", dump, ".dump").Output()
	if err != nil {
		t.Fatal(err)
	}
	shell(t, addrs, string(script))
	if out := shell(t, addrs, "", "-c", "SELECT group_concat(name) AS names FROM t"); !strings.Contains(out, "alice,bob,carol") {
		t.Fatalf("after the restore: %q", out)
	}
	// No leader reachable: a clear message naming what each node said.
	cmd := exec.Command(bin(t, "dqlite"), "-s", "127.0.0.1:1", "-timeout", "2s", "-c", "SELECT 1", "test")
	msg, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "no leader reachable; 127.0.0.1:1:") {
		t.Fatalf("unreachable cluster: %q %v", msg, err)
	}
}

var (
	promName   = `[a-zA-Z_:][a-zA-Z0-9_:]*`
	promSample = regexp.MustCompile(`^(` + promName + `)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? (\S+)$`)
	promMeta   = regexp.MustCompile(`^# (HELP|TYPE) (` + promName + `) (.+)$`)
)

// parseProm parses the Prometheus text format strictly: every line is a
// comment or a sample with a float value, every sample's metric has a TYPE.
func parseProm(t *testing.T, text string) map[string]float64 {
	t.Helper()
	types := map[string]string{}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if m := promMeta.FindStringSubmatch(line); m != nil {
			if m[1] == "TYPE" {
				switch m[3] {
				case "counter", "gauge", "histogram", "summary", "untyped":
				default:
					t.Fatalf("bad type in %q", line)
				}
				types[m[2]] = m[3]
			}
			continue
		}
		m := promSample.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("not Prometheus text format: %q", line)
		}
		v, err := strconv.ParseFloat(m[4], 64)
		if err != nil {
			t.Fatalf("bad value in %q", line)
		}
		if types[m[1]] == "" {
			t.Fatalf("sample without TYPE: %q", line)
		}
		out[m[1]+m[2]] = v
	}
	return out
}

func get(url string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// TestMetricsAndReadiness scrapes /metrics and parses it as Prometheus
// text; /readyz is ready on cluster members and not on a node that knows
// no leader.
func TestMetricsAndReadiness(t *testing.T) {
	procs := startCluster(t)
	shell(t, addrsOf(procs), "", "-c", "CREATE TABLE t (x); INSERT INTO t VALUES (1)")
	for _, p := range procs {
		code, body := get("http://" + p.metrics + "/metrics")
		if code != 200 {
			t.Fatalf("metrics: %d %s", code, body)
		}
		m := parseProm(t, body)
		if m["dqlite_term"] < 1 || m["dqlite_applied_index"] < 3 || m["dqlite_leader_id"] == 0 || m[`dqlite_role{role="voter"}`] != 1 {
			t.Fatalf("metrics of %s: %v", p.addr, m)
		}
		eventually(t, 10*time.Second, "ready", func() bool { c, _ := get("http://" + p.metrics + "/readyz"); return c == 200 })
		if c, _ := get("http://" + p.metrics + "/healthz"); c != 200 {
			t.Fatalf("healthz: %d", c)
		}
	}
	// A node that cannot reach the cluster it joins knows no leader.
	addrs := testcluster.FreeAddrs(t, 3)
	lonely := startProc(t, addrs[0], addrs[1], filepath.Join(t.TempDir(), "lonely"), "-join", addrs[2])
	eventually(t, 10*time.Second, "the lonely node's metrics endpoint", func() bool {
		c, _ := get("http://" + lonely.metrics + "/healthz")
		return c == 200
	})
	if c, body := get("http://" + lonely.metrics + "/readyz"); c != http.StatusServiceUnavailable {
		t.Fatalf("readyz of a node without a leader: %d %s", c, body)
	}
}

// TestSIGTERMHandsOver sends SIGTERM to the leader process under a write
// workload: leadership moves, no write fails, and the process exits 0.
func TestSIGTERMHandsOver(t *testing.T) {
	procs := startCluster(t)
	addrs := addrsOf(procs)
	db := sql.OpenDB(driver.NewConnector(addrs, "test"))
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE TABLE w (worker INTEGER, i INTEGER)"); err != nil {
		t.Fatal(err)
	}
	leaderAddr := func() string {
		c, err := wire.FindLeader(ctx, addrs, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.Address
	}
	old := leaderAddr()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []error
	writes := 0
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, err := db.ExecContext(ctx, "INSERT INTO w VALUES (?, ?)", w, i)
				mu.Lock()
				writes++
				if err != nil {
					failures = append(failures, err)
				}
				mu.Unlock()
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return writes }
	eventually(t, 20*time.Second, "writes before the SIGTERM", func() bool { return count() > 100 })
	var victim *proc
	for _, p := range procs {
		if p.addr == old {
			victim = p
		}
	}
	if err := victim.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := victim.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("the leader exited with status %d", code)
	}
	before := count()
	eventually(t, 20*time.Second, "writes after the hand-over", func() bool { return count() > before+100 })
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d writes failed, first: %v", len(failures), failures[0])
	}
	if now := leaderAddr(); now == old {
		t.Fatalf("leadership did not move from %s", old)
	}
	b, _ := os.ReadFile(victim.log)
	if !strings.Contains(string(b), "handing leadership over") {
		t.Fatalf("the leader's log does not show the hand-over:\n%s", b)
	}
	t.Logf("%d writes, none failed", count())
}
