// Package fsm is the replicated state machine of dqlite-go: the formats of
// the commands carried in Raft entries (a write transaction's WAL frames; SQL
// statements for the rqlite-style comparison mode), and applying committed
// entries to SQLite through package vfs. A DB is a node's set of databases
// (databases.go, with snapshots and restore): each entry names the database
// it writes, and snapshots carry every database an entry wrote. The leader
// executes writes (sqlite.go), transactions spanning requests (tx.go) and
// batches of autocommit writes with their deduplication (batch.go); reads
// run on cursors (cursors.go); every
// node applies committed entries (apply.go); a write sent as a query
// returns its rows (rows.go). With a data directory (OpenFiles) the
// databases are files with a record naming them (files.go) and, beside
// each, a mark file of the index it reflects, which checkpoints write in
// order with the file's own writes (marks.go); snapshots are streamed from them (stream.go) and checked by
// InspectFiles (inspect.go). Statement mode uses the same files, and
// journals each WAL before a checkpoint copies it (redo.go), since
// re-running statements over a file a checkpoint cut short is not exact.
// Frames mode has only this path (tests and the simulator use an in-memory
// faulty disk); Open (in memory, whole images as snapshots) takes
// statement mode only, for this package's tests.
//
// Concurrency: none. The node's loop calls it from its one goroutine (the
// VFS may write a database file from a goroutine the node runs for it: see
// vfs.Spawner).
//
// Invariants: commands are versioned and checksummed (CRC-32C); a command
// that does not decode is corruption (ErrCorrupt), never applied in part.
// Every size has a named limit (MaxCommandBytes, MaxPageSize, MaxStatements,
// MaxParams, MaxNameBytes) enforced when encoding and decoding. Decoded
// frames alias the input bytes.
//
// The byte formats are drawn in command.go.
package fsm
