// Package sim is the deterministic simulator of dqlite-go clusters.
//
// # Model
//
// One goroutine runs a whole cluster: a virtual clock, an event queue
// ordered by (time, sequence number) and one seeded PRNG (math/rand/v2)
// decide everything, so a seed replays a run exactly (the trace hash is
// compared in tests). Each node is the real loop.Loop over the real
// raft.Raft and the real wal.WAL, on a simulated disk (Disk) that survives
// crashes keeping only what was synced. A write job's append lands at a
// random point of its latency and its completion reaches the loop at the
// end, so the loop reads appended entries before it hears they are durable,
// as with production's disk goroutine; a crash before the append loses it.
// Messages go through the production peer codec (wire package). Nodes tick
// at skewed rates; their state machine is a small key-value store, or with
// SQLite the real fsm.DB on the real VFS with its database files on the
// node's simulated disk beside the log (frames replication; a bank
// workload in transactions spanning requests; a counter workload, in a
// database of its own, retried through the state machine's deduplication;
// Options.Statements replicates statements instead, the comparison mode,
// whose database files carry redo journals and which promises a retried
// increment only "at least once").
// With SQLite, snapshots are the database files: checkpoints record the
// index each file reflects, the log compacts to it, a restart replays
// what a checkpoint cut short by a crash may have left, and a lagging node
// gets the files streamed (counted: restart-from-files,
// snapshot-view-opened, snapshot-stream-installed). Every disk fault below
// hits the database files too (their sectors tear whole, as SQLite
// assumes of a disk).
//
// The seed also picks the cluster's shape (DefaultOptions): 3, 4 or 5
// voters, raft's message size and in-flight limits (down to about one entry
// per message), the snapshot threshold, the entries kept behind a snapshot,
// and what the heal phase leaves broken (HealMode).
//
// # Faults
//
// During the fault phase: message drop, duplication, delay and reordering;
// full, half/half and one-way partitions; partitions flapping around the
// election timeout; every link cut one by one and restored in random order;
// crash and restart (a majority stays up); pauses longer than the election
// timeout; clock jumps; a stale leader (cut off, ticks stalled, still
// serving the clients sent to it); slow disk writes, a slow leader disk, and
// a node's disk slower than an election, often followed by the leader's
// crash; crashes at a disk operation or between an append's write and its
// sync (torn writes, also inside preallocated space), EIO and ENOSPC on
// writes, EIO on reads and corrupt reads (a flipped bit, the file intact:
// the log must call it corruption), bit flips in closed segments;
// membership changes (add as spare, promote, demote, remove, the leader too,
// and wiped nodes replaced by new ids), some followed by the leader's crash
// or reaching only the server they change, and leadership transfers,
// through the tracked requests node uses. A third of the client requests go
// to any node. Each kind is counted; tests fail if a required kind was never
// injected.
//
// # Oracles
//
// After every event: at most one leader per term; an (index, term) pair
// names the same entry on every node's disk; every node applies the same
// entry at each index; commit never goes back; applied <= commit; a
// leader's commit index moves only onto an entry of its own term; a leader
// holds every entry committed in an earlier term; persisted term and vote
// never go back; a node whose log is all durable acts on the last
// configuration entry of that log or snapshot. On every log write and every
// message: what the log reported written cannot be lost by a crash, and a
// vote grant or an append acknowledgement leaves only once what it promises
// is durable. On every read: the value is at least as new as every write to
// its key acknowledged before the read began. After the faults, with the
// heal mode's victim still down or cut off: a leader commits a write
// (liveness) and a cut-off voter never raised its term (pre-vote); then
// every member converges to the same applied index and state, the SQLite
// counter shows each retried write applied once, and porcupine checks the
// clients' history for linearizability (writing its HTML visualization on
// a violation). A panic in the system under test is a violation too. Each
// violation names its oracle; docs/SIMULATOR.md lists them.
//
// # Mutants
//
// RunMutants runs the simulator against each deliberate bug of the
// internal/mutant catalogue, one at a time, and reports the first seed and
// oracle that caught it, then runs the unmodified code on the same seeds.
//
// Seeds run in parallel goroutines (RunSeeds), each seed staying
// single-threaded.
package sim
