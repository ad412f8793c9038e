// Package vfs is the SQLite side of dqlite-go: an in-memory SQLite VFS (one
// instance per node, several per process in the simulator) that captures
// each write transaction's WAL frames and keeps them invisible until Raft
// has committed them, and a thin binding for the connections the node runs.
//
// # Capture
//
// When a connection takes the WAL write lock, the VFS notes the WAL size and
// copies the WAL index. When the connection releases the lock after writing a
// commit frame, the VFS copies the transaction's WAL bytes and the new index
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
// # Followers
//
// ApplyFrames appends replicated pages as WAL frames (own salts, the
// checksum chain, the commit frame's database size) and invalidates the
// index header, so the next reader rebuilds the index from the WAL.
//
// # Determinism
//
// SQLite's clock is the VFS's (SetTime); its randomness is seeded from the
// default VFS, which a node (or the simulator) registers with a seed.
// Temporary files go to the OS VFS.
//
// # Concurrency
//
// One goroutine at a time per VFS instance. The C code has no locks of its
// own; it runs under SQLite's calls from that goroutine.
//
// # Linking
//
// The SQLite library is the amalgamation compiled by
// github.com/mattn/go-sqlite3; our C code declares the few API functions and
// structs it uses (sqlite3min.h) and links with unresolved symbols allowed
// in our object files, so a fresh machine needs only Go and gcc.
package vfs
