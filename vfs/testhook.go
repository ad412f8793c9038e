package vfs

/*
#include "sqlite3min.h"
#include "vfs.h"
*/
import "C"

// Test-only hooks. They would live in export_test.go, but a _test.go file
// cannot use cgo; unexported, they are out of reach outside the package.

// failAllocAfter arms the C code's allocation fault switch: the nth
// allocation it makes from now on (counting every VFS in the process) fails
// as if the heap were exhausted, and the switch disarms itself. n = 0
// disarms it. No other goroutine may be using a VFS meanwhile.
func failAllocAfter(n int64) { C.dq_test_fail_alloc_after = C.longlong(n) }

// allocFaultCountdown is how many allocations remain before the armed
// failure: 0 once it has fired, or when the switch is off.
func allocFaultCountdown() int64 { return int64(C.dq_test_fail_alloc_after) }
