package vfs

/*
#include <malloc.h>

// dq_bound_malloc bounds glibc's malloc arenas (M_ARENA_MAX) and fixes the
// size from which blocks are mapped on their own (M_MMAP_THRESHOLD); -1
// where the C library has no such settings.
static int dq_bound_malloc(int arenas, int mmap_threshold) {
#if defined(M_ARENA_MAX) && defined(M_MMAP_THRESHOLD)
	return mallopt(M_ARENA_MAX, arenas) && mallopt(M_MMAP_THRESHOLD, mmap_threshold);
#else
	(void)arenas;
	(void)mmap_threshold;
	return -1;
#endif
}
*/
import "C"

import "errors"

// BoundMalloc bounds the memory glibc's malloc keeps resident for the
// process's C heap (SQLite's memory, and the VFS's WALs):
//
//   - arenas: glibc makes one arena per thread that finds the others busy,
//     up to eight per core, and each keeps the memory freed into it, so
//     cgo calls from many threads leave tens of MiB of freed memory
//     resident. One is enough here: a node's loop goroutine does nearly
//     all of the work in SQLite.
//   - blocks of MallocMmapThreshold bytes or more are mapped on their own
//     and unmapped when freed. glibc's default threshold rises to the size
//     of any such block freed (up to 32 MiB), after which a large
//     transaction's buffers come from the arena, fragment it, and stay.
//
// A process-wide setting, for a program to make at start (dqlited's
// -malloc-arenas); MALLOC_ARENA_MAX and MALLOC_MMAP_THRESHOLD_ in the
// environment do the same.
func BoundMalloc(arenas int) error {
	switch C.dq_bound_malloc(C.int(arenas), C.int(MallocMmapThreshold)) {
	case 1:
		return nil
	case -1:
		return errors.New("vfs: this C library has no malloc arena or mmap threshold setting")
	default:
		return errors.New("vfs: mallopt refused")
	}
}

// MallocMmapThreshold is the size from which BoundMalloc has C blocks
// mapped on their own.
const MallocMmapThreshold = 1 << 20
