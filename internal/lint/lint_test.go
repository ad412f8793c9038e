package lint

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// corePackages are the packages that must stay deterministic. A package that
// does not exist yet is skipped by name (and reported in the log), so adding
// one later puts it under the lint automatically.
var corePackages = map[string]Rules{
	"raft": {NoOSNet: true},
	"wal":  {},
	"fsm":  {},
	"vfs":  {},
	"loop": {},
}

// TestCorePackagesAreDeterministic runs the bans over the real core packages.
func TestCorePackagesAreDeterministic(t *testing.T) {
	root := filepath.Join("..", "..")
	checked := 0
	for pkg, rules := range corePackages {
		dir := filepath.Join(root, pkg)
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			t.Logf("%s: not present yet", pkg)
			continue
		}
		vs, err := CheckDir(dir, rules)
		if err != nil {
			t.Fatalf("%s: %v", pkg, err)
		}
		for _, v := range vs {
			t.Errorf("%v", v)
		}
		checked++
	}
	if checked == 0 {
		t.Fatal("no core package found: the lint checks nothing")
	}
}

// TestPlantedViolationsAreFound writes a file with one of each banned
// construct and checks every one is reported, and that allowed uses are not.
func TestPlantedViolationsAreFound(t *testing.T) {
	dir := t.TempDir()
	src := `package p

import (
	"math/rand"
	r2 "math/rand/v2"
	"net"
	"os"
	t "time"
)

func f() {
	_ = t.Now()
	t.Sleep(1)
	go f()
	_ = rand.Int()
	_ = r2.IntN(3)
	_ = r2.New(r2.NewPCG(1, 2)) // allowed: a constructor
	_ = t.Duration(5)            // allowed: not a clock
	_, _ = net.Dial, os.Exit
	panic("x")
}
`
	if err := os.WriteFile(filepath.Join(dir, "p.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	// A test file with violations is not checked.
	if err := os.WriteFile(filepath.Join(dir, "p_test.go"), []byte("package p\nfunc g() { go g() }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	vs, err := CheckDir(dir, Rules{NoOSNet: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vs {
		got = append(got, v.Rule)
	}
	want := []string{
		"imports math/rand (v1)", "imports net", "imports os", "calls time.Now", "calls time.Sleep",
		"starts a goroutine", "calls global rand.IntN", "calls panic",
	}
	joined := strings.Join(got, "\n")
	for _, w := range want {
		if !strings.Contains(joined, w) {
			t.Errorf("planted violation %q not reported; got:\n%s", w, joined)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d violations, want %d:\n%s", len(got), len(want), joined)
	}
	// Without NoOSNet, os and net are allowed.
	vs, _ = CheckDir(dir, Rules{})
	if len(vs) != len(want)-2 {
		t.Errorf("without NoOSNet got %d violations, want %d", len(vs), len(want)-2)
	}
}
