// Package lint enforces the determinism and style bans of the core packages
// (raft, wal, fsm, vfs, loop) so nobody has to remember them:
//
//   - no time.Now, time.Sleep or any other wall-clock or timer function;
//   - no math/rand (v1) at all, and no package-level functions of
//     math/rand/v2 other than the constructors (randomness is passed in);
//   - no go statements (the loop package's runtime wrapper lives elsewhere);
//   - no panic outside internal/assert;
//   - for raft: no os, net, syscall or io/fs imports.
//
// It parses source with go/parser; test files are not checked.
package lint

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Violation is one banned construct found in a file.
type Violation struct {
	Pos  token.Position
	Rule string
}

func (v Violation) String() string { return fmt.Sprintf("%s: %s", v.Pos, v.Rule) }

// Rules selects which bans apply to a package.
type Rules struct {
	// NoOSNet bans importing os, net (and its subpackages), syscall, io/fs.
	NoOSNet bool
}

var bannedTime = map[string]bool{
	"Now": true, "Sleep": true, "Since": true, "Until": true, "After": true,
	"AfterFunc": true, "NewTimer": true, "NewTicker": true, "Tick": true,
}

var allowedRandV2 = map[string]bool{
	"New": true, "NewPCG": true, "NewChaCha8": true, "NewZipf": true,
}

// CheckDir checks every non-test .go file directly in dir.
func CheckDir(dir string, rules Rules) ([]Violation, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Violation
	fset := token.NewFileSet()
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		out = append(out, checkFile(fset, f, rules)...)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Pos, out[j].Pos
		if a.Filename != b.Filename {
			return a.Filename < b.Filename
		}
		return a.Offset < b.Offset
	})
	return out, nil
}

func checkFile(fset *token.FileSet, f *ast.File, rules Rules) []Violation {
	var out []Violation
	add := func(p token.Pos, rule string) {
		out = append(out, Violation{Pos: fset.Position(p), Rule: rule})
	}
	// Local names of the imports we care about.
	names := map[string]string{} // local name -> import path
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		local := path[strings.LastIndex(path, "/")+1:]
		if path == "math/rand/v2" {
			local = "rand"
		}
		if imp.Name != nil {
			local = imp.Name.Name
		}
		names[local] = path
		switch {
		case path == "math/rand":
			add(imp.Pos(), "imports math/rand (v1): pass a *rand.Rand from math/rand/v2 in")
		case rules.NoOSNet && (path == "os" || path == "net" || strings.HasPrefix(path, "net/") ||
			path == "syscall" || path == "io/fs"):
			add(imp.Pos(), "imports "+path+": this package does no I/O")
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.GoStmt:
			add(n.Pos(), "starts a goroutine: only the runtime wrapper owns goroutines")
		case *ast.CallExpr:
			if id, ok := n.Fun.(*ast.Ident); ok && id.Name == "panic" {
				add(n.Pos(), "calls panic: use internal/assert")
			}
			sel, ok := n.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			pkg, ok := sel.X.(*ast.Ident)
			if !ok {
				return true
			}
			switch names[pkg.Name] {
			case "time":
				if bannedTime[sel.Sel.Name] {
					add(n.Pos(), "calls time."+sel.Sel.Name+": time is passed in")
				}
			case "math/rand/v2":
				if !allowedRandV2[sel.Sel.Name] {
					add(n.Pos(), "calls global rand."+sel.Sel.Name+": randomness is passed in")
				}
			}
		}
		return true
	})
	return out
}
