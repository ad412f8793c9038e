package node

import (
	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/loop"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wal"
	"github.com/dqlite-go/dqlite/wire"
)

// The byte limits of the packages a node wires together form one chain,
// each link derived from or checked against the one before: a command is
// one entry's data (raft.MaxEntryBytes); a message carries at most one
// maximal entry or MaxMsgBytes of them (raft.MaxMessageBytes); a peer frame
// holds any message; a log batch holds any write job (at most
// loop.DefaultMaxWriteJobBytes, or one maximal entry alone). Each
// declaration below fails to compile (a negative constant converted to
// uint) when a relation breaks.
const (
	_ = uint(fsm.MaxCommandBytes - raft.MaxEntryBytes)
	_ = uint(raft.MaxEntryBytes - fsm.MaxCommandBytes)
	_ = uint(raft.MaxMessageBytes - maxMsgBytes)
	_ = uint(wire.MaxPeerFrameBytes - raft.MaxMessageBytes)
	_ = uint(wal.MaxBatchBytes - loop.DefaultMaxWriteJobBytes - raft.MaxMessageBytes)
	_ = uint(raft.MaxEntryBytes - raft.DefaultMaxSnapshotChunkBytes)
)
