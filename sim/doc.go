// Package sim is the deterministic simulator of dqlite-go clusters.
//
// # Model
//
// One goroutine runs a whole cluster: a virtual clock, an event queue
// ordered by (time, sequence number) and one seeded PRNG (math/rand/v2)
// decide everything, so a seed replays a run exactly (the trace hash is
// compared in tests). Each node is the real loop.Loop over the real
// raft.Raft, on a disk (raft.MemoryStorage) that survives crashes: a write
// reaches it only when its simulated latency elapsed, so a crash loses every
// write in flight. Nodes tick at skewed rates; their state machine is a small
// key-value store (the SQLite state machine plugs into the same
// loop.StateMachine interface).
//
// # Faults
//
// During the fault phase: message drop, duplication, delay and reordering;
// full, half/half and one-way partitions; partitions flapping around the
// election timeout; every link cut one by one and restored in random order;
// crash and restart (a majority stays up); pauses longer than the election
// timeout; clock jumps; slow disk writes; membership changes (add as spare,
// promote, demote, remove, the leader too, and wiped nodes rejoining under a
// new id) and leadership transfers. Each kind is counted; tests fail if a
// required kind was never injected.
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
