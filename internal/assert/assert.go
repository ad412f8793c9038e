// Package assert is the one place where broken invariants (our own bugs) turn
// into panics. Errors the world causes (I/O, bad input, a peer's garbage) are
// returned as errors instead; see docs/STYLE.md rule 3.
//
// Every message carries the values involved so a failing simulator seed can be
// diagnosed from the panic text alone.
package assert

import "fmt"

// Violation is the value passed to panic, so recover() callers (the simulator)
// can tell an assertion failure apart from a runtime error.
type Violation struct{ Msg string }

func (v Violation) Error() string { return "assertion failed: " + v.Msg }

// That panics with a Violation when cond is false.
func That(cond bool, format string, args ...any) {
	if !cond {
		panic(Violation{Msg: fmt.Sprintf(format, args...)})
	}
}

// Fail panics unconditionally: for states the code must never reach.
func Fail(format string, args ...any) {
	panic(Violation{Msg: fmt.Sprintf(format, args...)})
}

// NoError panics when err is not nil: for errors that can only come from a bug
// (for example an in-memory storage that cannot fail).
func NoError(err error, context string) {
	if err != nil {
		panic(Violation{Msg: context + ": " + err.Error()})
	}
}
