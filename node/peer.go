package node

import (
	"bufio"
	"context"
	"net"
	"time"

	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wire"
)

// Peer links use the dqlite protocol's CONNECT (see package wire): the
// dialing node sends the protocol version, then CONNECT with its id and the
// address it listens on, then Raft messages in wire's checksummed frames.
// One listening port serves clients and peers.

const (
	peerWriteTimeout = 5 * time.Second
	redialBackoffMax = time.Second
)

type peer struct {
	id    raft.NodeID
	addr  string
	queue chan raft.Message
}

// send queues m for its peer, starting the peer's sender on first use.
// Called from the loop goroutine. A full queue drops the message: Raft
// retransmits what matters.
func (n *Node) send(m raft.Message) {
	p := n.peers[m.To]
	if p == nil {
		m2, _ := n.members.Load().(raft.Membership)
		addr := n.addrHints[m.To]
		if s, ok := m2.Get(m.To); ok && s.Address != "" {
			addr = s.Address
		}
		if addr == "" {
			n.log.Debug("no address for peer", "peer", m.To)
			return
		}
		p = &peer{id: m.To, addr: addr, queue: make(chan raft.Message, peerQueueMax)}
		n.peers[m.To] = p
		n.wg.Add(1)
		go n.runPeer(p)
	}
	select {
	case p.queue <- m:
	default:
		n.log.Debug("peer queue full, message dropped", "peer", m.To)
	}
}

// runPeer dials the peer and streams its queue, redialing with capped
// backoff until the node closes.
func (n *Node) runPeer(p *peer) {
	defer n.wg.Done()
	backoff := 10 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
		conn, err := wire.Dial(ctx, p.addr, n.cfg.TLS)
		cancel()
		if err == nil {
			backoff = 10 * time.Millisecond
			err = n.stream(p, conn.NetConn())
			conn.Close()
		}
		if n.stopped() {
			return
		}
		n.log.Debug("peer link down", "peer", p.id, "err", err)
		select {
		case <-n.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, redialBackoffMax)
	}
}

func (n *Node) stream(p *peer, conn net.Conn) error {
	connect, err := wire.EncodeRequest(&wire.Request{Type: wire.ReqConnect, ID: uint64(n.cfg.ID), Address: n.cfg.Address})
	if err != nil {
		return err
	}
	conn.SetWriteDeadline(time.Now().Add(peerWriteTimeout))
	if _, err := conn.Write(connect); err != nil {
		return err
	}
	var buf []byte
	for {
		select {
		case <-n.stop:
			return nil
		case m := <-p.queue:
			// Batch what is already queued into one write.
			buf = wire.AppendPeerMessage(buf[:0], &m)
			for len(p.queue) > 0 && len(buf) < 1<<20 {
				m := <-p.queue
				buf = wire.AppendPeerMessage(buf, &m)
			}
			conn.SetWriteDeadline(time.Now().Add(peerWriteTimeout))
			if _, err := conn.Write(buf); err != nil {
				return err
			}
			n.metrics.peerBytes.Add(uint64(len(buf)))
			if cap(buf) > 4<<20 {
				buf = nil // do not keep a snapshot chunk's buffer
			}
		}
	}
}

func (n *Node) stopped() bool {
	select {
	case <-n.stop:
		return true
	default:
		return false
	}
}

// accept hands incoming connections (clients and peers) to the wire
// server.
func (n *Node) accept() {
	defer n.wg.Done()
	for {
		c, err := n.ln.Accept()
		if err != nil {
			if n.stopped() {
				return
			}
			n.log.Warn("accept failed", "err", err)
			select {
			case <-n.stop:
				return
			case <-time.After(10 * time.Millisecond): // e.g. out of file descriptors
			}
			continue
		}
		n.srv.Go(c)
	}
}

// servePeer reads Raft messages from a peer link into loop events (the wire
// server calls it, through the backend, for a connection that sent
// CONNECT).
func (n *Node) servePeer(c net.Conn, r *bufio.Reader, from raft.NodeID, address string) {
	defer c.Close()
	if address != "" && !n.post(func() {
		if _, known := n.addrHints[from]; !known {
			n.addrHints[from] = address
		}
	}) {
		return
	}
	for {
		m, err := wire.ReadPeerMessage(r)
		if err != nil {
			if !n.stopped() {
				n.log.Debug("peer connection closed", "peer", from, "err", err)
			}
			return
		}
		if m.From != from {
			n.log.Warn("message sender does not match the link", "link", from, "from", m.From)
			return
		}
		if (m.Type == raft.MsgVoteResp || m.Type == raft.MsgPreVoteResp) && m.Reject {
			n.log.Debug("vote rejected", "by", from, "type", m.Type.String(), "term", m.Term)
		}
		if !n.post(func() {
			out, err := n.loop.Step(m)
			if err != nil {
				n.log.Warn("malformed peer message", "peer", from, "err", err)
			}
			n.handle(out)
		}) {
			return
		}
	}
}
