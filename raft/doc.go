// Package raft is the consensus core of dqlite-go: Raft as a pure,
// deterministic state machine.
//
// # Concurrency and determinism
//
// A Raft has no goroutines, does no I/O, reads no clock and uses no global
// randomness. One goroutine (the node's loop, or the simulator) calls every
// method. Time advances only through Tick; randomness (election timeouts)
// comes from the *rand.Rand in Config. The same inputs in the same order give
// the same outputs, which is what makes the simulator's seeds replayable.
//
// # Inputs and outputs
//
// Inputs: Step (a peer message), Tick, Propose, ProposeConfigChange,
// TransferLeadership, ReadIndex, Persisted (a storage completion) and
// StepDown. Output: Update, a batch of effects whose ordering rules are
// written on the type: persist HardState before sending Messages; install a
// Snapshot before Entries; report Persisted when an append is durable;
// apply CommittedEntries in order.
//
// Persistence is asynchronous: a leader sends entries to followers while its
// own fsync is in flight, and a follower acknowledges an append only once it
// is durable and verified. An acknowledgement names the last index that is
// both persisted locally and known to match the current term's leader's log
// (matched); a Persisted report for entries that were replaced meanwhile (a
// different term at that index) is ignored. A follower's commit index never
// exceeds what it verified against the leader.
//
// # Protocol features
//
//   - Elections with randomized timeouts in [ElectionTicks, 2*ElectionTicks),
//     pre-vote (a node cut off cannot inflate terms), check-quorum (a leader
//     that did not hear from a quorum of voters within an election timeout
//     steps down), and a lease: votes are refused while a live leader is
//     known, unless the election comes from a leadership transfer.
//   - A no-op entry appended by each new leader; reads and membership changes
//     wait until it commits (an entry of the current term).
//   - Replication with batching (MaxMsgBytes per append), pipelining
//     (MaxInflightMsgs per follower), probe/replicate/snapshot flow control,
//     and fast back-off on conflicts using the follower's (index, term) hint.
//   - Roles: voter (votes, counts in quorums), standby (replicates only) and
//     spare (neither). One membership change at a time, taking effect when
//     appended: add (as spare), assign a role, remove (the leader too: it
//     leads until the change commits, then hands over). A promotion to
//     voter runs catch-up rounds first (at most CatchUpRounds).
//   - Leadership transfer to a named voter or the most up-to-date one.
//   - Snapshots: the caller takes one at an applied index (SnapshotMeta gives
//     its metadata) and compacts storage; followers that need compacted
//     entries receive it in chunks of at most MaxSnapshotChunkBytes, one in
//     flight at a time, resent after an election timeout without progress.
//   - ReadIndex: a read point confirmed by a quorum of heartbeat
//     acknowledgements in the current term.
//
// # Limits
//
// Every queue has a named bound in Config: MaxMsgBytes, MaxInflightMsgs,
// MaxSnapshotChunkBytes, MaxUncommittedBytes, MaxApplyBytes, MaxPendingReads,
// CatchUpRounds. Requests past a bound fail with an error (ErrTooManyPending,
// ErrProposalTooLarge) instead of growing memory.
//
// # Invariants
//
// applied <= committed <= last index; applied <= persisted; a committed entry
// is never overwritten (checked by assertion); at most one vote per term; the
// membership in force is the last config entry in the log. Broken invariants
// panic through internal/assert; errors caused by the world (storage
// failures, malformed messages) are returned.
//
// The known simplification: a follower assembles an incoming snapshot in
// memory before installing it; Config.MaxSnapshotBytes bounds it (a chunk
// past it is an invalid message), so snapshot size is bounded by memory.
package raft
