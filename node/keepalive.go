package node

import (
	"time"

	"github.com/dqlite-go/dqlite/raft"
)

// keepAlive is a leader's heartbeats, with the queues of the peers they go
// to, for keepAliveWhileBusy.
type keepAlive struct {
	term   uint64
	msgs   []raft.Message
	queues []chan raft.Message
}

// keepAliveMax bounds how long heartbeats are sent for a busy loop: past
// it, the followers may elect another leader, so a step that never ends
// (or a wedged loop) does not hold the cluster without a working leader.
// (A variable so tests can reach it.)
var keepAliveMax = 30 * time.Second

// prepareKeepAlive records, at each tick, the heartbeats a leader would
// send. Called in the loop.
func (n *Node) prepareKeepAlive() {
	msgs := n.loop.Raft().KeepAliveHeartbeats()
	if len(msgs) == 0 {
		n.keepAlive.Store(nil)
		return
	}
	ka := &keepAlive{term: msgs[0].Term}
	for _, m := range msgs {
		if p := n.peers[m.To]; p != nil {
			ka.msgs = append(ka.msgs, m)
			ka.queues = append(ka.queues, p.queue)
		}
	}
	n.keepAlive.Store(ka)
}

// keepAliveWhileBusy sends a leader's heartbeats while its loop is busy
// with one event for longer than the heartbeat interval: a long SQLite
// step (an aggregate over a large table, a big CREATE INDEX) cannot yield,
// and without heartbeats the followers would elect another leader (and a
// client retrying the same statement there would cost that one its
// leadership too). Raft's state is not touched: the heartbeats were made by
// the loop at its last tick (see raft.KeepAliveHeartbeats).
func (n *Node) keepAliveWhileBusy() {
	defer n.wg.Done()
	ticker := time.NewTicker(n.cfg.Tick)
	defer ticker.Stop()
	var logged int64
	for {
		select {
		case <-n.stop:
			return
		case <-ticker.C:
		}
		since := n.busySince.Load()
		if since == 0 {
			continue
		}
		busy := time.Duration(time.Now().UnixNano() - since)
		ka := n.keepAlive.Load()
		if busy < n.cfg.Tick || busy > keepAliveMax || ka == nil {
			continue
		}
		for i, m := range ka.msgs {
			select {
			case ka.queues[i] <- m:
			default:
			}
		}
		if logged != since && busy >= 10*n.cfg.Tick {
			logged = since
			n.log.Info("loop busy with one event: sending heartbeats on its behalf", "busy", busy.Round(time.Millisecond))
		}
	}
}
