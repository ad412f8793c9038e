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
// keep: term and vote never go back, an (index, term) pair always names
// the same entry on every node, and what a write reported done is on the
// disk in a form a crash cannot lose. It remembers what is durable (the
// hard state, the last index, the configuration entries of the log) for
// the oracles that check what a node may say or believe.
type storage struct {
	*wal.WAL
	id  raft.NodeID
	sim *Sim
	fs  *Disk
	// The oracle's memory of what is durable, kept across restarts (a
	// restarted node must find it all): the last hard state persisted,
	// the durable log's last index, and the configuration entries of the
	// durable log (and of the snapshot), in index order.
	hard    raft.HardState
	last    uint64
	configs []configEntry
}

type configEntry struct {
	index uint64
	data  string
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// walOptions keeps segments small so rollover, compaction and torn tails in
// several files happen within short runs.
func (s *Sim) walOptions() wal.Options {
	return wal.Options{SegmentSizeMax: 4096, CacheBytes: 16 << 10, TrailingEntries: s.opts.TrailingEntries, Logger: discard}
}

// opened checks a log just opened after a restart against what was
// durable before (recovery may cut only what no write reported done), and
// reads the configuration entries it holds. The node's read faults were
// cancelled before the open, so these reads inject nothing.
func (d *storage) opened() {
	if last := d.WAL.LastIndex(); last < d.last {
		d.sim.violate("durability", "node %d: its log recovered to index %d, but %d was durable", d.id, last, d.last)
	}
	d.last = d.WAL.LastIndex()
	d.configs = nil
	if snap := d.WAL.Snapshot(); snap.Index > 0 {
		d.configs = append(d.configs, configEntry{index: snap.ConfigIndex, data: string(raft.EncodeMembership(snap.Config))})
	}
	for lo := d.WAL.FirstIndex(); lo <= d.last; {
		ents, err := d.WAL.Entries(lo, d.last+1, 1<<20)
		if err != nil || len(ents) == 0 {
			d.configs = nil // unreadable: the node fails on its own; not judged
			return
		}
		d.noteConfigs(ents)
		lo = ents[len(ents)-1].Index + 1
	}
}

func (d *storage) noteConfigs(ents []raft.Entry) {
	first := ents[0].Index
	for len(d.configs) > 0 && d.configs[len(d.configs)-1].index >= first {
		d.configs = d.configs[:len(d.configs)-1]
	}
	for _, e := range ents {
		if e.Type == raft.EntryConfig {
			d.configs = append(d.configs, configEntry{index: e.Index, data: string(e.Data)})
		}
	}
}

// checkSynced: a write the log reported done left nothing a crash could
// lose.
func (d *storage) checkSynced(what string) {
	if name := d.fs.Unsynced(); name != "" {
		d.sim.violate("durability", "node %d: %s returned with %s not synced", d.id, what, name)
	}
}

func (d *storage) SetHardState(hs raft.HardState) error {
	if hs.Term < d.hard.Term || (hs.Term == d.hard.Term && d.hard.Vote != raft.None && hs.Vote != d.hard.Vote) {
		d.sim.violate("hardstate-monotonic", "node %d: persisted term/vote went back from %+v to %+v", d.id, d.hard, hs)
	}
	if err := d.WAL.SetHardState(hs); err != nil {
		return err
	}
	d.checkSynced("SetHardState")
	d.hard = hs
	return nil
}

func (d *storage) Append(ents []raft.Entry) error {
	for _, e := range ents {
		d.sim.checkEntry(d.id, e)
	}
	if err := d.WAL.Append(ents); err != nil {
		// A failed append may have cut the suffix it was replacing
		// (the log makes the cut durable first).
		if len(ents) > 0 && ents[0].Index <= d.last {
			d.last = ents[0].Index - 1
			for len(d.configs) > 0 && d.configs[len(d.configs)-1].index >= ents[0].Index {
				d.configs = d.configs[:len(d.configs)-1]
			}
		}
		return err
	}
	d.checkSynced("Append")
	if len(ents) > 0 {
		d.last = ents[len(ents)-1].Index
		d.noteConfigs(ents)
	}
	return nil
}

func (d *storage) InstallSnapshot(snap raft.Snapshot) error {
	if err := d.WAL.InstallSnapshot(snap); err != nil {
		return err
	}
	d.checkSynced("InstallSnapshot")
	d.last = d.WAL.LastIndex()
	kept := []configEntry{{index: snap.Meta.ConfigIndex, data: string(raft.EncodeMembership(snap.Meta.Config))}}
	for _, c := range d.configs {
		if c.index > snap.Meta.Index && c.index <= d.last {
			kept = append(kept, c) // the log's suffix was kept
		}
	}
	d.configs = kept
	return nil
}

// lastConfig is the configuration entry in force by the durable log, and
// whether it is known.
func (d *storage) lastConfig() (configEntry, bool) {
	if len(d.configs) == 0 {
		return configEntry{}, false
	}
	return d.configs[len(d.configs)-1], true
}
