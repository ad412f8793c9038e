// Package loop is the one event loop that drives a node: it owns the node's
// Raft, its state machine and the client requests waiting on them, and
// handles one event at a time (a tick, a peer message, a client request, the
// completion of a disk write).
//
// # Concurrency
//
// None inside: a Loop is called by exactly one goroutine, the runtime that
// wraps it in production (package node: real timers, sockets and an I/O
// goroutine) or the simulator. Blocking work is done outside: every event
// returns an Output with the messages to send, at most one WriteJob (an
// append with one write and one sync) and the replies to deliver; the runtime
// performs the write and reports WriteDone.
//
// # Group commit
//
// While a write is in flight, new entries are staged; when it completes they
// all go out in the next write. The number of syncs is therefore bounded by
// the disk's latency, not by the number of entries.
//
// # Invariants
//
//   - Term and vote are durable before any message of the same Raft update
//     is returned (SetHardState is synchronous and rare).
//   - A received snapshot is never installed while a write is in flight.
//   - After a storage failure, or a committed entry this replica could not
//     apply (ErrApplyFailed: an Apply error that is not a
//     DeterministicError), the loop stops appending, applying, sending and
//     leading for good (until a restart); Err says why. A proposed write
//     waiting then fails with ErrUnknownOutcome wrapping ErrStopped, any
//     other request (and every new one) with ErrNotLeader wrapping
//     ErrStopped (it never ran). Failed writes are not retried. A replica
//     never applies past an entry it failed to apply, so it cannot diverge
//     silently.
//   - The writer slot belongs to a proposed entry until it applies or this
//     node stops leading in its term (never to its requests: a client that
//     times out does not free it), and the loop asserts that the state
//     machine holds no capture whenever a write starts.
//   - A write's reply carries the result of applying it, or
//     ErrLeadershipLost when a different entry was applied at its index or
//     an entry of a later term committed at or below it (it did not
//     happen), or ErrUnknownOutcome when a snapshot covered it, or
//     ErrTimeout (outcome unknown).
//   - Every queue is bounded: MaxPendingRequests, RequestTimeoutTicks.
package loop
