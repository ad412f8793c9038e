// Package vfs is the SQLite side of dqlite-go: a SQLite VFS (one instance
// per node, several per process in the simulator) whose WALs and WAL
// indexes live in memory and whose databases' main files are either in
// memory too (New) or Files of the node's data directory reached through
// Go callbacks (NewFiles, store.go), that captures
// each write transaction's WAL frames and keeps them invisible until Raft
// has committed them, and a thin binding for the connections the node runs.
//
// # Capture
//
// When a connection takes the WAL write lock, the VFS notes the WAL size and
// copies the WAL index. When the connection releases the lock after SQLite
// committed (the index header counts the frames up to the commit frame),
// the VFS copies the transaction's WAL bytes and the new index
// ("pending"), then puts the old WAL size and index back: no connection sees
// the transaction (the writer's own page cache is reset when it notices the
// index changed under it). While a transaction is pending, no other write can
// start (the write lock answers busy). Poll returns its frames; Apply, after
// Raft commits the entry, puts the captured bytes and index back (keeping the
// live checkpoint information: backfill count and read marks); Abort drops
// them, leaving no trace. The transaction is the WAL bytes up to SQLite's
// commit frame, so frames left behind by ROLLBACK TO after a cache spill are
// not part of it.
//
// # Failures
//
// A transaction is captured whole or fails: it is never visible without
// being captured, nor captured when its COMMIT failed. Releasing a lock
// cannot report an error to SQLite, so nothing there can fail: taking the
// write lock copies the index (or the lock is refused), and writing the
// commit frame reserves the room for the capture (or the write fails).
// SQLite rolls back a transaction whose WAL write failed, or whose last
// frames could not be indexed (a new index region is mapped, and the
// capture's copy of the index grows, after the commit frame); the VFS then
// drops the frames past the committed ones, so a later recovery cannot read
// a failed commit's frames as committed. ApplyFrames makes room for all its
// frames before appending any. Every allocation of the C code goes through
// one fault switch, inert unless a test arms it to fail the nth.
//
// # Followers
//
// ApplyFrames appends replicated pages as WAL frames (own salts, the
// checksum chain, the commit frame's database size) and invalidates the
// index header, so the next reader rebuilds the index from the WAL.
//
// # Determinism
//
// SQLite's clock is the VFS's (SetTime). Its randomness (random(),
// randomblob(), WAL salts) is not: SQLite seeds its generator once per
// process from the default VFS, and no caller makes one of ours the default
// (New's makeDefault), so the seed comes from the operating system.
// Replication does not depend on it: followers receive pages, not
// statements. Temporary files go to the OS VFS.
//
// # Concurrency
//
// One goroutine at a time per VFS instance. The C code has no locks of its
// own; it runs under SQLite's calls from that goroutine. The one exception
// is a main File that can reserve space (an Allocator) opened through Files
// that can run goroutines (a Spawner, the node's): its writes and syncs are
// queued for a goroutine of its own (behind.go; reads see the queue), so
// that a checkpoint does not wait for the disk. The package starts no
// goroutine itself. A main File that is Marked has a small mark file the
// caller writes through WriteMark and StartSync, in order with the main
// File's own writes and syncs (the goroutine's queue carries them).
//
// # Checkpoints
//
// A checkpoint's page writes to a main File (between SQLite's CKPT_START
// and CKPT_DONE file controls) are coalesced into writes of up to 1 MiB.
// The last one happens after SQLite can hear of a failure: it fails the
// truncate before a full checkpoint's backfill count, a partial
// checkpoint's recorded count is put back, and Conn.Checkpoint returns
// ErrCheckpointWrite. A database with a main File keeps the WAL and capture
// room of its largest recent transaction until Trim finds it idle.
//
// # Linking
//
// The SQLite library is the amalgamation compiled by
// github.com/mattn/go-sqlite3; our C code declares the few API functions and
// structs it uses (sqlite3min.h) and links with unresolved symbols allowed
// in our object files, so a fresh machine needs only Go and gcc.
package vfs
