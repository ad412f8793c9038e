package raft

// The entry size family of limits: every other package's limit on an entry,
// a command or a peer message derives from these (node asserts the
// relations at compile time).
const (
	// MaxEntryBytes bounds one entry's data: one replicated command
	// (fsm.MaxCommandBytes is this limit), one transaction's frames.
	MaxEntryBytes = 64 << 20
	// EntryOverheadBytes is what an entry costs in a message beyond its
	// data, as counted by MaxMsgBytes.
	EntryOverheadBytes = entryOverheadBytes
	// MaxMessageBytes bounds what one message carries: its entries (a
	// Config's MaxMsgBytes must not exceed it, and a message holds at
	// least one entry of at most MaxEntryBytes) or one snapshot chunk.
	MaxMessageBytes = MaxEntryBytes + EntryOverheadBytes
)
