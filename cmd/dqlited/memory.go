package main

import (
	"os"
	"runtime/debug"

	"github.com/dqlite-go/dqlite/vfs"
)

// defaultMemoryLimit is -memory-limit's default. With it, -malloc-arenas 1
// and the default page caches (16 MiB per database) and log memory
// (64 MiB), the leader of three nodes loaded with 10 MB transactions peaked
// at 265 MiB resident, the followers at 192 MiB; with neither setting, at
// 375 and 257 to 266 MiB (dqbench -large 512MiB -only-large, one run each;
// docs/OPERATIONS.md, Memory).
const defaultMemoryLimit = 160 << 20

// applyMemorySettings sets the process's memory settings from -memory-limit
// and -malloc-arenas, where the environment does not already.
func applyMemorySettings(o *options) {
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set && o.memoryLimit > 0 {
		debug.SetMemoryLimit(o.memoryLimit)
	}
	if _, set := os.LookupEnv("MALLOC_ARENA_MAX"); !set && o.mallocArenas > 0 {
		vfs.BoundMalloc(o.mallocArenas) // best effort: not every C library has these settings
	}
}
