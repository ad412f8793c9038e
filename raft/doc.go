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
// apply CommittedEntries in order; a StorageErr is fatal for the node.
//
// Persistence is asynchronous: a leader sends entries to followers while its
// own fsync is in flight, and a follower acknowledges an append only once it
// is durable and verified. An acknowledgement names the last index that is
// both persisted locally and known to match the current term's leader's log
// (matched); a Persisted report for entries that were replaced meanwhile (a
// different term at that index) is ignored. A follower's commit index never
// exceeds what it verified against the leader.
//
// # Peer input
//
// Every message is checked before anything in it is acted upon, a newer
// term included (validate.go). Step returns an error wrapping
// ErrInvalidMessage, having changed nothing, for a message no correct peer
// could send to this node in its state:
//
//   - malformed: unknown type, sender 0 or ourselves, another addressee,
//     snapshot metadata on the wrong type;
//   - numbers past termMax, indexMax, offsetMax (2^62: no real cluster gets
//     there, and below them index arithmetic cannot overflow);
//   - entries not consecutive after the previous index, with terms going
//     down or beyond the message's, of unknown type, or a config entry
//     that does not decode to a valid membership;
//   - snapshot metadata with index or term 0, a term beyond the message's,
//     a config index beyond its index, or an invalid membership; a chunk
//     ending past Config.MaxSnapshotBytes;
//   - a second leader in one term (a leader message from other than the
//     leader we follow, or to the leader itself, MsgTimeoutNow included);
//   - an entry or snapshot contradicting our log where it is settled: at
//     or below the commit index, or in the leader's term at or below what
//     we verified against it;
//   - a heartbeat commit beyond our last index; an acknowledgement or
//     rejection beyond the leader's last index, a rejection hint beyond
//     the rejected index; a read context or snapshot offset beyond what the
//     leader sent; a vote grant for a term the candidate never asked;
//   - a response from a server no membership this node held ever named.
//
// Messages a correct cluster produces are never reported, whatever the
// network does (delay, duplication, reordering) and across restarts: stale
// terms, old acknowledgements, responses about an earlier round of a
// snapshot, a removed member's late messages, MsgTimeoutNow after we forgot
// our leader are dropped or handled silently. A leader message or vote
// request from a server no membership we held named is dropped silently
// too, since we may be the one behind: a non-voter (a node being added)
// follows whoever leads, and a voter follows such a leader once a member
// names it in a vote rejection (RejectHint). Raft is not Byzantine
// tolerant: a well-formed forged message from a member can break safety;
// peers must be authenticated below raft.
//
// # Storage failures
//
// A Storage read failing with anything but the expected ErrCompacted or
// ErrSnapshotChanged (or breaking the Storage contract) is not a panic: it is
// recorded (the first one, sticky) and reported once in Update.StorageErr.
// The node steps down if it leads and from then on sends no appends or
// snapshots, starts no election, grants no vote, takes no peer message and
// applies nothing: the caller stops it, as after a failed write. The same
// holds for a SnapshotSource's ReadSnapshot failing (but for
// ErrSnapshotChanged) and for metadata from its OpenSnapshot that raft
// cannot send (a programming error); an error from OpenSnapshot is no
// failure: it means "later".
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
//     entries receive it in chunks of at most MaxSnapshotChunkBytes, at most
//     SnapshotChunksInFlight of them unacknowledged, resent from the last
//     acknowledged byte after an election timeout without progress. Chunks
//     are numbered per replica (Context, echoed in the responses): a
//     follower refuses a chunk past the byte it expects, the leader goes
//     back there once, ignoring the refusals of chunks it sent before going
//     back, and a copy of the chunk at offset 0 does not start a transfer
//     over.
//     By default the leader sends the newest snapshot in Storage and a
//     follower assembles it in memory, handing out Update.Snapshot with its
//     Data. Two optional hooks stream snapshots instead (for a state
//     larger than memory). A Config.SnapshotSource opens the snapshot to
//     send each replica (OpenSnapshot, checked: at most the applied index,
//     the log continuing it, its term and membership as of its index) and
//     reads it in chunks (ReadSnapshot); when it says later
//     (ErrSnapshotLater, or any error) the replica keeps probing and the
//     next heartbeat response tries again, and when an opened snapshot is
//     gone (ErrSnapshotChanged) the leader opens another, the same index
//     possibly, and sends it from offset 0. A Config.SnapshotSink is given
//     each chunk in order as it arrives, synchronously; a chunk at offset
//     0 starts over; a sink error rejects the chunk and the leader starts
//     over from 0; AbortSnapshot tells it raft gave up on the partial
//     one; the installed Update.Snapshot has no Data. Either hook works
//     without the other (a leader's source with a follower's buffer, or
//     the other way round; but see SnapshotSource.ReadSnapshot on
//     opening an index again).
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
// failures, invalid peer messages) are returned, as described above.
//
// Snapshot size: without a SnapshotSink a follower assembles an incoming
// snapshot in memory before installing it, so its size is bounded by
// memory; with one, raft holds only the snapshot's metadata and the count
// of bytes received. Either way Config.MaxSnapshotBytes bounds what a
// follower accepts (a chunk ending past it is an invalid message). A
// leader reads one chunk at a time either way (from Storage, or from its
// SnapshotSource), at most SnapshotChunksInFlight in flight per replica.
package raft
