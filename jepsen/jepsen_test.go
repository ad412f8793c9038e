package jepsen

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

var binDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "jepsen-bin-")
	if err != nil {
		panic(err)
	}
	binDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

// run runs the harness with its output in a folder kept when the test
// fails (node logs, summary, porcupine's visualization).
func run(t *testing.T, cfg Config) *Summary {
	t.Helper()
	bin, err := BuildDqlited(binDir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.MkdirTemp("", "jepsen-"+t.Name()+"-")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Out, cfg.Bin, cfg.Log = out, bin, testWriter{t}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d, output in %s", cfg.Seed, out)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Duration+cfg.CheckTimeout+5*time.Minute)
	defer cancel()
	sum, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("run: %v (output kept in %s)", err, out)
	}
	t.Logf("summary:\n%s", sum.Table())
	t.Cleanup(func() {
		if !t.Failed() && os.Getenv("DQLITE_JEPSEN_KEEP") == "" {
			os.RemoveAll(out)
		} else {
			t.Logf("output kept in %s", out)
		}
	})
	return sum
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b[:len(b)-1]))
	return len(b), nil
}

func checkClean(t *testing.T, sum *Summary) {
	if len(sum.Violations) > 0 {
		t.Errorf("%d violations", len(sum.Violations))
	}
	if sum.Linearizable != porcupine.Ok {
		t.Errorf("register history: %v (Unknown means the check timed out: not proven)", sum.Linearizable)
	}
	if !sum.Converged {
		t.Error("the nodes did not converge")
	}
	for _, u := range sum.Unspread {
		t.Errorf("register reads at level any not spread over the nodes: %s", u)
	}
	if len(sum.Reads) == 0 {
		t.Error("no node's read counters could be read")
	}
	for _, k := range AllNemeses {
		if _, skipped := sum.Skipped[k]; !skipped && sum.Faults[k] == 0 {
			t.Errorf("nemesis %s was never injected", k)
		}
	}
	for w, o := range sum.Ops {
		if o[0] == 0 {
			t.Errorf("workload %s acknowledged no operation", w)
		}
	}
}

// TestChaos is the CI-sized run: 3 dqlited processes, every nemesis at
// least once, about a minute.
func TestChaos(t *testing.T) {
	sum := run(t, Config{Nodes: 3, Duration: 30 * time.Second})
	checkClean(t, sum)
}

// TestChaosCatchesAckBeforeCommit runs the harness against nodes running
// the catalogue's loop-reply-before-apply bug (writes acknowledged as soon
// as they are proposed): the checkers must find violations.
func TestChaosCatchesAckBeforeCommit(t *testing.T) {
	sum := run(t, Config{Nodes: 3, Duration: 20 * time.Second, Extra: []string{"-testing-bug", "loop-reply-before-apply"}})
	if len(sum.Violations) == 0 {
		t.Fatal("the harness did not catch writes acknowledged before they committed")
	}
	t.Logf("caught: %s", sum.Violations[0])
}

// TestChaosLong is the long mode: DQLITE_JEPSEN_DURATION=30m (and
// DQLITE_JEPSEN_NODES=5) go test ./jepsen -run Long -timeout 2h
func TestChaosLong(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("DQLITE_JEPSEN_DURATION"))
	if err != nil {
		t.Skip("long mode: set DQLITE_JEPSEN_DURATION (e.g. 30m) and DQLITE_JEPSEN_NODES (3 or 5)")
	}
	nodes, _ := strconv.Atoi(os.Getenv("DQLITE_JEPSEN_NODES"))
	if nodes == 0 {
		nodes = 5
	}
	sum := run(t, Config{Nodes: nodes, Duration: d, Keys: 50, CheckTimeout: 15 * time.Minute})
	checkClean(t, sum)
}
