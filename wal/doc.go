// Package wal is the durable Raft storage of a node: the log in segment
// files, term and vote, and snapshots, all in one directory and all through
// the FS interface (OSFS in production, a faulty simulated disk in tests).
//
// # Files
//
//	seg-<first index>.log   segments: a header, then one batch per write
//	snap-<index>-<term>.snap snapshots (the newest two are kept)
//	meta                     term and vote
//
// Formats are drawn in format.go. Every header, batch and snapshot carries a
// CRC-32C; term and vote are written together.
//
// # Durability rules
//
//   - An Append returns after one write and one sync of the whole batch
//     (group commit happens above: the loop batches what arrives while a
//     write is in flight). Acknowledged bytes are never rewritten in place.
//   - Replacing a suffix (a follower's conflict) first removes later
//     segments, then rewrites the segment holding the cut through a
//     temporary file and a rename: a crash leaves a prefix of the old log.
//     A failure part way leaves the log showing the prefix the disk holds,
//     with every entry below the cut.
//   - Term and vote, snapshots and rewritten segments are written to a
//     temporary file, synced, renamed, and the directory synced.
//   - A write or sync error is never retried: the log fails and every later
//     write returns ErrFailed. A full disk (ENOSPC) cuts the partial batch
//     and can be resumed (Resume) once space returns.
//
// # Recovery
//
// A torn batch (or torn segment creation) at the tail of the last segment is
// the normal result of a crash: it is cut and reported. A checksum failure
// anywhere else, a gap between segments, or a log that does not fit the
// snapshot is a CorruptionError naming the file, offset and index range, and
// Open refuses to continue; cmd/dqlite-inspect prints and repairs.
//
// # Memory
//
// The log keeps, per entry, its term and location (EntryIndexBytes, 64 bytes
// on 64-bit machines) and the data of the most recent entries; index and data
// together stay within Options.CacheBytes by evicting the oldest data, which
// is read back from its segment when needed. Compaction behind snapshots
// bounds the number of entries, hence the index (MemoryBytes reports both).
//
// # Concurrency
//
// Writers are serialized; readers (the raft.Storage methods) may run
// concurrently with an Append on another goroutine, and see the log as it
// was before the Append or as it is after, never in between. An Append that
// replaces a suffix does the file work first (removing later segments,
// renaming a rewritten copy over the segment holding the cut) while readers
// go on reading the old files, still open; then, in one critical section, it
// drops the replaced entries, points the kept ones at the copy and adds the
// new ones; only then does it close the old files. Readers reach segment
// files only through the index, so a file is closed only once no entry
// refers to it. wal starts no goroutines.
package wal
