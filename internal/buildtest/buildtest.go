// Package buildtest builds main packages of this module for tests that run
// real processes, and makes the test process read every source file the
// binary is built from.
//
// go test caches a passing result and reuses it while the test binary and
// the files and environment variables the test process itself used are
// unchanged; it cannot see what a child process such as go build reads. A
// test that only ran `go build` would thus stay "(cached)" after a change to
// the sources of the binary it built. Build therefore also opens each of
// those files (and each package directory, so an added or removed file
// counts too), which go test logs and checks on the next run.
package buildtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// Build builds the main package pkg (an import path, or a directory
// relative to the working directory, as go build takes it) into dir/name
// and returns the binary's path. In a test process (testing.Testing) it
// first reads every file Sources lists, once per process and package;
// elsewhere (a command that runs real processes, like dqbench) it only
// builds. Call it from a test, not from TestMain before m.Run: go test
// only logs the files opened while m.Run runs.
func Build(dir, name, pkg string) (string, error) {
	if testing.Testing() {
		if err := record(pkg); err != nil {
			return "", err
		}
	}
	bin := filepath.Join(dir, name)
	out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building %s: %v\n%s", pkg, err, out)
	}
	return bin, nil
}

var (
	mu       sync.Mutex
	recorded = map[string]*recording{}
)

type recording struct {
	mu   sync.Mutex
	done bool
}

// record reads every file Sources lists for pkg, once per process and
// package (a relative directory is keyed by its absolute path); a failure
// is not remembered, the next call tries again.
func record(pkg string) error {
	key := pkg
	if strings.HasPrefix(pkg, ".") {
		if abs, err := filepath.Abs(pkg); err == nil {
			key = abs
		}
	}
	mu.Lock()
	r := recorded[key]
	if r == nil {
		r = &recording{}
		recorded[key] = r
	}
	mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return nil
	}
	files, err := Sources(pkg)
	if err != nil {
		return err
	}
	for _, f := range files {
		if err := read(f); err != nil {
			return err
		}
	}
	r.done = true
	return nil
}

// read opens f and reads it through: a file's content, a directory's
// entries. A missing file is not an error (it was opened all the same, so
// its creation counts as a change).
func read(f string) error {
	h, err := os.Open(f)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer h.Close()
	if info, err := h.Stat(); err == nil && info.IsDir() {
		_, err = h.ReadDir(-1)
		return err
	}
	_, err = io.Copy(io.Discard, h)
	return err
}

type module struct {
	Path    string
	Version string
	Main    bool
	Dir     string
	GoMod   string
	Replace *module
}

type listed struct {
	ImportPath string
	Dir        string
	Standard   bool
	Module     *module
	GoFiles    []string
	CgoFiles   []string
	CFiles     []string
	CXXFiles   []string
	MFiles     []string
	HFiles     []string
	FFiles     []string
	SFiles     []string
	SwigFiles  []string
	SysoFiles  []string
	EmbedFiles []string
}

// local reports whether m's files are edited in place: the main module,
// or a module replaced by a local directory. (Other modules come from the
// module cache and are pinned by go.mod and go.sum.)
func (m *module) local() bool {
	return m != nil && (m.Main || m.Replace != nil && m.Replace.Version == "")
}

// Sources returns, sorted, the files a binary built from pkg depends on
// outside the standard library and the module cache: for each package of
// `go list -deps pkg` in the main module (or a locally replaced one), its
// directory and its Go, cgo, C, C++, header, assembly, syso and embedded
// files; and the go.mod and go.sum of those modules.
func Sources(pkg string) ([]string, error) {
	cmd := exec.Command("go", "list", "-deps",
		"-json=ImportPath,Dir,Standard,Module,GoFiles,CgoFiles,CFiles,CXXFiles,MFiles,HFiles,FFiles,SFiles,SwigFiles,SysoFiles,EmbedFiles",
		pkg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list -deps %s: %v\n%s", pkg, err, stderr.Bytes())
	}
	set := map[string]bool{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listed
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go list -deps %s: %v", pkg, err)
		}
		if p.Standard || !p.Module.local() || p.Dir == "" {
			continue
		}
		set[p.Dir] = true
		for _, list := range [][]string{p.GoFiles, p.CgoFiles, p.CFiles, p.CXXFiles, p.MFiles, p.HFiles,
			p.FFiles, p.SFiles, p.SwigFiles, p.SysoFiles, p.EmbedFiles} {
			for _, f := range list {
				set[filepath.Join(p.Dir, f)] = true
			}
		}
		m := p.Module
		if m.Replace != nil {
			m = m.Replace
		}
		if m.GoMod != "" {
			set[m.GoMod] = true
			set[filepath.Join(filepath.Dir(m.GoMod), "go.sum")] = true
		}
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("go list -deps %s: no package of this module", pkg)
	}
	files := make([]string, 0, len(set))
	for f := range set {
		files = append(files, f)
	}
	sort.Strings(files)
	return files, nil
}
