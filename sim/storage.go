package sim

import (
	"fmt"

	"github.com/dqlite-go/dqlite/raft"
)

// disk is a node's durable state in the simulator: a raft.MemoryStorage
// that survives crashes. Everything written to it is durable (a write in
// flight at a crash never reaches it). It checks, on every write, the
// properties durable state must keep: term and vote never go back, and an
// (index, term) pair always names the same entry on every node.
type disk struct {
	*raft.MemoryStorage
	id   raft.NodeID
	sim  *Sim
	hard raft.HardState
}

func (d *disk) SetHardState(hs raft.HardState) error {
	if hs.Term < d.hard.Term || (hs.Term == d.hard.Term && d.hard.Vote != raft.None && hs.Vote != d.hard.Vote) {
		d.sim.violate("node %d: persisted term/vote went back from %+v to %+v", d.id, d.hard, hs)
	}
	d.hard = hs
	d.MemoryStorage.SetHardState(hs)
	return nil
}

func (d *disk) InstallSnapshot(snap raft.Snapshot) error {
	return d.ApplySnapshot(snap)
}

func (d *disk) CreateSnapshot(meta raft.SnapshotMeta, data []byte) error {
	return d.MemoryStorage.CreateSnapshot(meta, data)
}

func (d *disk) Append(ents []raft.Entry) error {
	for _, e := range ents {
		d.sim.checkEntry(d.id, e)
	}
	if err := d.MemoryStorage.Append(ents); err != nil {
		return fmt.Errorf("sim: node %d append: %w", d.id, err)
	}
	return nil
}
