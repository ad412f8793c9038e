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
// Nodes tick at skewed rates; their state machine is a small key-value
// store, or with -sqlite the real fsm.DB on the real VFS (frames
// replication, bank transfers in transactions spanning requests).
//
// # Faults
//
// During the fault phase: message drop, duplication, delay and reordering;
// full, half/half and one-way partitions; partitions flapping around the
// election timeout; every link cut one by one and restored in random order;
// crash and restart (a majority stays up); pauses longer than the election
// timeout; clock jumps; slow disk writes; crashes between a write and its
// sync (torn tails), EIO and ENOSPC on writes, EIO on reads and corrupt
// reads (a flipped bit, the file intact: the log must call it corruption),
// bit flips in closed segments; membership changes (add as spare, promote,
// demote, remove, the leader too, and wiped nodes rejoining under a new id)
// and leadership transfers, through the tracked requests node uses. Each
// kind is counted; tests fail if a required kind was never injected.
//
// # Oracles
//
// After every event: at most one leader per term; an (index, term) pair
// names the same entry on every node's disk; every node applies the same
// entry at each index; commit never goes back; applied <= commit; persisted
// term and vote never go back; a leader holds every entry committed in an
// earlier term. After the faults: a leader commits a write within the heal
// phase (liveness), every member converges to the same applied index and
// state, and porcupine checks the clients' history for linearizability
// (writing its HTML visualization on a violation). A panic in the system
// under test is a violation too.
//
// Seeds run in parallel goroutines (RunSeeds), each seed staying
// single-threaded.
package sim
