package buildtest

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// moduleRoot is this module's directory (two levels above the package).
func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestSourcesOfDqlited: dqlited's list holds the module's files it is built
// from (its own main.go, raft, loop, vfs's C file, go.mod, go.sum and
// the package directories), and nothing from the standard library, the
// module cache or test files.
func TestSourcesOfDqlited(t *testing.T) {
	files, err := Sources("github.com/dqlite-go/dqlite/cmd/dqlited")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no files")
	}
	root := moduleRoot(t)
	for _, want := range []string{"cmd/dqlited/main.go", "cmd/dqlited", "raft/raft.go", "raft", "loop/loop.go",
		"vfs/vfs.c", "node", "wal", "go.mod", "go.sum"} {
		if !slices.Contains(files, filepath.Join(root, want)) {
			t.Errorf("%s missing from %d files:\n%s", want, len(files), strings.Join(files, "\n"))
		}
	}
	for _, f := range files {
		if !strings.HasPrefix(f, root+string(filepath.Separator)) {
			t.Errorf("%s is outside the module", f)
		}
		if strings.HasSuffix(f, "_test.go") {
			t.Errorf("%s is a test file", f)
		}
	}
}

// TestSourcesRelative: a directory relative to the working directory (as
// cmd/dqlited's test passes "../dqlite") lists the same as its import path.
func TestSourcesRelative(t *testing.T) {
	rel, err := Sources("../../cmd/dqlite")
	if err != nil {
		t.Fatal(err)
	}
	abs, err := Sources("github.com/dqlite-go/dqlite/cmd/dqlite")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rel, abs) {
		t.Fatalf("relative:\n%s\nimport path:\n%s", strings.Join(rel, "\n"), strings.Join(abs, "\n"))
	}
	if !slices.Contains(rel, filepath.Join(moduleRoot(t), "cmd/dqlite/main.go")) {
		t.Fatalf("cmd/dqlite/main.go missing:\n%s", strings.Join(rel, "\n"))
	}
}

// TestSourcesError: a package that does not exist is an error, not an
// empty list that would record nothing.
func TestSourcesError(t *testing.T) {
	if files, err := Sources("./testdata/nosuch"); err == nil {
		t.Fatalf("no error, files %v", files)
	}
}

// TestBuild builds a small main package and runs it; a second Build of the
// same package (its sources recorded already) builds again.
func TestBuild(t *testing.T) {
	dir := t.TempDir()
	for range 2 {
		bin, err := Build(dir, "hello", "./testdata/hello")
		if err != nil {
			t.Fatal(err)
		}
		if bin != filepath.Join(dir, "hello") {
			t.Fatalf("path %s", bin)
		}
		out, err := exec.Command(bin).CombinedOutput()
		if err != nil || string(out) != "hello\n" {
			t.Fatalf("%q %v", out, err)
		}
	}
	if _, err := Build(dir, "nosuch", "./testdata/nosuch"); err == nil {
		t.Fatal("building a missing package succeeded")
	}
}
