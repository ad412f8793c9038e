package sim

import (
	"time"

	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wire"
)

// network holds the directed links that are cut.
type network struct {
	cut map[[2]raft.NodeID]bool
	// isolated is a node cut off from every other by the heal phase
	// (apart from cut, which pending fault events may still change).
	isolated raft.NodeID
}

// send puts a message on the network with the fault phase's drop,
// duplication, delay and reordering. It travels as production's peer links
// carry it: encoded and decoded by the wire package's peer codec.
func (s *Sim) send(m raft.Message) {
	frame := wire.AppendPeerMessage(nil, &m)
	decoded, err := wire.DecodePeerMessage(frame[8:])
	if err != nil {
		s.violate("peer-codec", "message %s does not decode: %v", m.String(), err)
		return
	}
	m = decoded
	if s.net.cut[[2]raft.NodeID{m.From, m.To}] || (s.net.isolated != raft.None && (m.From == s.net.isolated || m.To == s.net.isolated)) {
		s.count("partitioned-message")
		return
	}
	copies := 1
	if s.faultsOn {
		if s.chance(s.opts.DropRate) {
			s.count("drop")
			return
		}
		if s.chance(s.opts.DupRate) {
			s.count("duplicate")
			copies = 2
		}
	}
	for i := 0; i < copies; i++ {
		d := s.randDuration(s.opts.LatencyMin, s.opts.LatencyMax)
		if s.faultsOn && s.chance(s.opts.ReorderRate) {
			d += s.randDuration(10*time.Millisecond, 120*time.Millisecond)
			s.count("reorder")
		}
		s.after(d, &event{kind: evDeliver, msg: m})
	}
}
