package node

import (
	"bufio"
	"encoding/gob"
	"net"
	"time"

	"github.com/dqlite-go/dqlite/raft"
)

// Peer links carry raft.Message values as a gob stream after a hello naming
// the sender. (The dqlite wire protocol's CONNECT with our own checksummed
// framing replaces this in the wire work.)
type hello struct {
	From    raft.NodeID
	Address string // where the sender listens (a new node learns its peers' addresses from them)
}

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
		conn, err := net.DialTimeout("tcp", p.addr, dialTimeout)
		if err == nil {
			backoff = 10 * time.Millisecond
			err = n.stream(p, conn)
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
	w := bufio.NewWriter(conn)
	enc := gob.NewEncoder(w)
	conn.SetWriteDeadline(time.Now().Add(peerWriteTimeout))
	if err := enc.Encode(hello{From: n.cfg.ID, Address: n.cfg.Address}); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for {
		select {
		case <-n.stop:
			return nil
		case m := <-p.queue:
			conn.SetWriteDeadline(time.Now().Add(peerWriteTimeout))
			if err := enc.Encode(m); err != nil {
				return err
			}
			// Batch what is already queued into one flush.
			for len(p.queue) > 0 {
				if err := enc.Encode(<-p.queue); err != nil {
					return err
				}
			}
			if err := w.Flush(); err != nil {
				return err
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

// accept serves incoming peer connections.
func (n *Node) accept() {
	defer n.wg.Done()
	for {
		c, err := n.ln.Accept()
		if err != nil {
			if n.stopped() {
				return
			}
			n.log.Warn("accept failed", "err", err)
			continue
		}
		n.connMu.Lock()
		if n.connClosed {
			n.connMu.Unlock()
			c.Close()
			return
		}
		n.conns[c] = struct{}{}
		n.wg.Add(1)
		n.connMu.Unlock()
		go n.readPeer(c)
	}
}

// readPeer decodes messages from one connection into loop events.
func (n *Node) readPeer(c net.Conn) {
	defer n.wg.Done()
	defer func() {
		n.connMu.Lock()
		delete(n.conns, c)
		n.connMu.Unlock()
		c.Close()
	}()
	dec := gob.NewDecoder(bufio.NewReader(c))
	var h hello
	if err := dec.Decode(&h); err != nil {
		return
	}
	if h.Address != "" && !n.post(func() {
		if _, known := n.addrHints[h.From]; !known {
			n.addrHints[h.From] = h.Address
		}
	}) {
		return
	}
	for {
		var m raft.Message
		if err := dec.Decode(&m); err != nil {
			if !n.stopped() {
				n.log.Debug("peer connection closed", "peer", h.From, "err", err)
			}
			return
		}
		if m.From != h.From {
			n.log.Warn("message sender does not match the link", "link", h.From, "from", m.From)
			return
		}
		if !n.post(func() {
			out, err := n.loop.Step(m)
			if err != nil {
				n.log.Warn("malformed peer message", "peer", h.From, "err", err)
			}
			n.handle(out)
		}) {
			return
		}
	}
}
