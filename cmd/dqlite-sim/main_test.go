package main

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func build(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "dqlite-sim")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

var summary = regexp.MustCompile(`(?m)^seeds=(\d+) violations=(\d+) simulated=\S+ real=\S+$`)

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
