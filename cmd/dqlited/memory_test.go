package main

import (
	"io"
	"os"
	"runtime/debug"
	"testing"

	"github.com/dqlite-go/dqlite/vfs"
)

// TestMemorySettings: by default dqlited sets the Go runtime's soft memory
// limit to defaultMemoryLimit; -memory-limit changes it; GOMEMLIMIT in the
// environment wins over both.
func TestMemorySettings(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(old)
	if _, set := os.LookupEnv("GOMEMLIMIT"); set {
		t.Skip("GOMEMLIMIT is set for this test process")
	}
	args := []string{"-address", "127.0.0.1:1", "-dir", t.TempDir()}
	o, err := parse(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	applyMemorySettings(o)
	if got := debug.SetMemoryLimit(-1); got != defaultMemoryLimit {
		t.Fatalf("memory limit %d, want the default %d", got, defaultMemoryLimit)
	}
	o, err = parse(append(args, "-memory-limit", "300000000"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	applyMemorySettings(o)
	if got := debug.SetMemoryLimit(-1); got != 300000000 {
		t.Fatalf("memory limit %d, want 300000000", got)
	}
	t.Setenv("GOMEMLIMIT", "1GiB")
	debug.SetMemoryLimit(old)
	applyMemorySettings(o)
	if got := debug.SetMemoryLimit(-1); got != old {
		t.Fatalf("memory limit %d with GOMEMLIMIT set, want it left at %d", got, old)
	}
}

// TestBoundMalloc: glibc (this project's C library) takes the settings.
func TestBoundMalloc(t *testing.T) {
	if err := vfs.BoundMalloc(1); err != nil {
		t.Fatal(err)
	}
}
