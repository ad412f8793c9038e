package sim

import (
	"io"
	"log/slog"

	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wal"
)

// storage is a node's durable state in the simulator: the real wal.WAL on
// the node's simulated Disk (which survives crashes, losing what was not
// synced). It checks, on every write, the properties durable state must
// keep: term and vote never go back, and an (index, term) pair always names
// the same entry on every node.
type storage struct {
	*wal.WAL
	id   raft.NodeID
	sim  *Sim
	hard raft.HardState
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// walOptions keeps segments small so rollover, compaction and torn tails in
// several files happen within short runs.
func walOptions() wal.Options {
	return wal.Options{SegmentSizeMax: 4096, CacheBytes: 16 << 10, TrailingEntries: 8, Logger: discard}
}

func (d *storage) SetHardState(hs raft.HardState) error {
	if hs.Term < d.hard.Term || (hs.Term == d.hard.Term && d.hard.Vote != raft.None && hs.Vote != d.hard.Vote) {
		d.sim.violate("node %d: persisted term/vote went back from %+v to %+v", d.id, d.hard, hs)
	}
	if err := d.WAL.SetHardState(hs); err != nil {
		return err
	}
	d.hard = hs
	return nil
}

func (d *storage) Append(ents []raft.Entry) error {
	for _, e := range ents {
		d.sim.checkEntry(d.id, e)
	}
	return d.WAL.Append(ents)
}
