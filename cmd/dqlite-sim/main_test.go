package main

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/dqlite-go/dqlite/internal/buildtest"
	"github.com/dqlite-go/dqlite/internal/mutant"
)

// build builds the command; it also reads the command's sources
// (buildtest.Build), so go test reruns the test after a change to any of
// them instead of reporting it cached.
func build(t *testing.T) string {
	bin, err := buildtest.Build(t.TempDir(), "dqlite-sim", ".")
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return bin
}

var summary = regexp.MustCompile(`(?m)^seeds=(\d+) violations=(\d+) simulated=\S+ real=\S+ seeds/s=[0-9.]+$`)

// TestCommandSummary runs a few seeds and checks the summary line, the
// fault counts and the exit status; then breaks raft on purpose and checks
// the failing seed is printed with its replay command and the exit status
// is non-zero.
func TestCommandSummary(t *testing.T) {
	bin := build(t)
	out, err := exec.Command(bin, "-seeds", "5").CombinedOutput()
	if err != nil {
		t.Fatalf("clean run failed: %v\n%s", err, out)
	}
	m := summary.FindStringSubmatch(string(out))
	if m == nil || m[1] != "5" || m[2] != "0" || !strings.Contains(string(out), "faults: ") {
		t.Fatalf("unexpected output:\n%s", out)
	}
	out, err = exec.Command(bin, "-seeds", "3", "-testing-bug", "raft-commit-without-quorum", "-out", t.TempDir()).CombinedOutput()
	if err == nil {
		t.Fatalf("broken raft passed:\n%s", out)
	}
	if !strings.Contains(string(out), "replay: go run ./cmd/dqlite-sim -seed ") ||
		!strings.Contains(string(out), "-testing-bug raft-commit-without-quorum") {
		t.Fatalf("no replay line:\n%s", out)
	}
	if m := summary.FindStringSubmatch(string(out)); m == nil || m[2] == "0" {
		t.Fatalf("summary does not count the violations:\n%s", out)
	}
}

// TestCommandMutants runs the catalogue with a budget too small for some
// bugs: every bug gets a line, the caught ones with their seed and oracle,
// and the survivors make the exit status non-zero.
func TestCommandMutants(t *testing.T) {
	bin := build(t)
	out, err := exec.Command(bin, "-mutants", "-seeds", "1", "-out", t.TempDir()).CombinedOutput()
	if err == nil {
		t.Fatalf("a one-seed budget caught every bug (or survivors do not fail the run):\n%s", out)
	}
	for _, in := range mutant.Catalogue {
		if !regexp.MustCompile(`(?m)^` + in.Name + ` +` + in.Pkg + ` `).Match(out) {
			t.Errorf("no line for %s:\n%s", in.Name, out)
		}
	}
	if !strings.Contains(string(out), "SURVIVED") || !regexp.MustCompile(`(?m)^raft-ack-before-persist .* 1 +durability `).Match(out) {
		t.Fatalf("unexpected table:\n%s", out)
	}
	if !strings.Contains(string(out), "unmodified code, kv: seeds=1 violations=0") {
		t.Fatalf("no baseline line:\n%s", out)
	}
}
