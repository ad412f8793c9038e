package node

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
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
	redialBackoffMin = 10 * time.Millisecond
	redialBackoffMax = time.Second
)

type peer struct {
	id    raft.NodeID
	addr  string
	queue chan raft.Message
	// kick ends the sender's redial backoff: the peer just linked to us,
	// so it is up again (a restarted node would otherwise wait up to
	// redialBackoffMax for our link, and lose the election a transfer to
	// it starts).
	kick chan struct{}
	// queuedBytes is the payload of the queued messages (see
	// peerQueueBytesMax); the loop adds, the sender subtracts.
	queuedBytes atomic.Int64
}

// peerQueueBytesMax bounds the entry and snapshot data queued for one peer
// (one message of any size is always accepted): a peer that is down or slow
// must not make the leader hold gigabytes of appends it will resend anyway.
const peerQueueBytesMax = 64 << 20

// messageBytes is what a queued message holds in memory, roughly.
func messageBytes(m *raft.Message) int64 {
	size := int64(len(m.Data)) + 128
	for _, e := range m.Entries {
		size += int64(len(e.Data)) + raft.EntryOverheadBytes
	}
	return size
}

// take removes the next queued message.
func (p *peer) take() raft.Message {
	m := <-p.queue
	p.queuedBytes.Add(-messageBytes(&m))
	return m
}

// discard drops what is queued (messages of a link that failed: Raft
// resends what still matters, and a reconnected link then starts with
// fresh messages instead of a backlog of stale appends). It returns how
// many were dropped.
func (p *peer) discard() int {
	n := 0
	for len(p.queue) > 0 {
		p.take()
		n++
	}
	return n
}

// send queues m for its peer, starting the peer's sender on first use.
// Called from the loop goroutine. A full queue (peerQueueMax messages, or
// peerQueueBytesMax bytes) drops the message: Raft retransmits what
// matters.
func (n *Node) send(m raft.Message) {
	p := n.peer(m.To)
	if p == nil {
		return
	}
	size := messageBytes(&m)
	if len(p.queue) > 0 && p.queuedBytes.Load()+size > peerQueueBytesMax {
		n.log.Debug("peer queue full, message dropped", "peer", m.To, "queued_bytes", p.queuedBytes.Load())
		return
	}
	select {
	case p.queue <- m:
		p.queuedBytes.Add(size)
	default:
		n.log.Debug("peer queue full, message dropped", "peer", m.To)
	}
}

// peer returns the sender of id, starting it on first use (nil when id's
// address is unknown). Called from the loop goroutine.
func (n *Node) peer(id raft.NodeID) *peer {
	if p := n.peers[id]; p != nil {
		return p
	}
	m, _ := n.members.Load().(raft.Membership)
	addr := n.addrHints[id]
	if s, ok := m.Get(id); ok && s.Address != "" {
		addr = s.Address
	}
	if addr == "" {
		n.log.Debug("no address for peer", "peer", id)
		return nil
	}
	p := &peer{id: id, addr: addr, queue: make(chan raft.Message, peerQueueMax), kick: make(chan struct{}, 1)}
	n.peers[id] = p
	n.wg.Add(1)
	go n.runPeer(p)
	return p
}

// linkMembers starts the links to every other member at start-up: the
// peers see this node is up (see peer.kick) before it has anything to
// send. Called from the loop goroutine.
func (n *Node) linkMembers() {
	m, _ := n.members.Load().(raft.Membership)
	for _, s := range m.Servers {
		if s.ID != n.cfg.ID {
			n.peer(s.ID)
		}
	}
}

// runPeer dials the peer and streams its queue, redialing with capped
// backoff until the node closes. The backoff restarts only after a link
// that authenticated: a port that accepts and then refuses (a partition, a
// node that now has another id) is not redialed in a tight loop.
func (n *Node) runPeer(p *peer) {
	defer n.wg.Done()
	backoff := redialBackoffMin
	warned := false // an authentication failure was logged since the last good link
	for {
		ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
		conn, err := wire.Dial(ctx, p.addr, n.cfg.TLS)
		cancel()
		authenticated := false
		if err == nil {
			authenticated, err = n.stream(p, conn.NetConn())
			conn.Close()
		}
		if n.stopped() {
			return
		}
		switch {
		case authenticated:
			backoff, warned = redialBackoffMin, false
		case errors.Is(err, wire.ErrPeerAuth) && !warned:
			warned = true
			n.log.Warn("peer link not authenticated", "peer", p.id, "address", p.addr, "err", err)
		}
		dropped := p.discard()
		n.log.Debug("peer link down", "peer", p.id, "err", err, "stale_messages_dropped", dropped)
		t := time.NewTimer(backoff)
		select {
		case <-n.stop:
			t.Stop()
			return
		case <-t.C:
		case <-p.kick:
			t.Stop()
			backoff = redialBackoffMin / 2
		}
		backoff = min(2*backoff, redialBackoffMax)
	}
}

// errPeerClosed: the other side closed a peer link.
var errPeerClosed = errors.New("node: the peer closed the link")

// stream runs one outbound peer link: CONNECT, authentication, then the
// peer's queue. It reports whether the link authenticated. The acceptor
// never writes after the exchange, so a read that returns means the link
// ended: a watcher notices at once instead of writing into a dead socket.
func (n *Node) stream(p *peer, conn net.Conn) (bool, error) {
	connect, err := wire.EncodeRequest(&wire.Request{Type: wire.ReqConnect, ID: uint64(n.cfg.ID), Address: n.cfg.Address})
	if err != nil {
		return false, err
	}
	conn.SetDeadline(time.Now().Add(peerAuthTimeout))
	if _, err := conn.Write(connect); err != nil {
		return false, err
	}
	br := bufio.NewReaderSize(conn, 64)
	if err := wire.DialPeer(conn, br, n.cfg.ClusterKey, uint64(n.cfg.ID), uint64(p.id)); err != nil {
		return false, err
	}
	conn.SetDeadline(time.Time{})
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		var b [1]byte
		br.Read(b[:])
	}()
	defer func() {
		conn.Close()
		<-closed
	}()
	return true, n.streamQueue(p, conn, closed)
}

// streamQueue writes the peer's queued messages until the link or the node
// ends.
func (n *Node) streamQueue(p *peer, conn net.Conn, closed <-chan struct{}) error {
	var buf []byte
	for {
		select {
		case <-n.stop:
			return nil
		case <-closed:
			return errPeerClosed
		case m := <-p.queue:
			p.queuedBytes.Add(-messageBytes(&m))
			// Batch what is already queued into one write.
			buf = wire.AppendPeerMessage(buf[:0], &m)
			for len(p.queue) > 0 && len(buf) < 1<<20 {
				m := p.take()
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

// invalidPeerInput logs and counts what an authenticated peer sent that no
// correct member sends (a bad frame, another sender's message, a message
// raft refuses); the caller drops the link.
func (n *Node) invalidPeerInput(from raft.NodeID, err error) {
	n.metrics.peerMessagesInvalid.Add(1)
	n.log.Warn("invalid peer message: dropping the link", "peer", from, "err", err)
}

// peerAuthTimeout bounds the CONNECT and authentication exchange.
const peerAuthTimeout = 10 * time.Second

// authPeer runs the acceptor's side of peer authentication on a link that
// sent CONNECT claiming id from: the peer certificate first (with PeerCAs),
// then the cluster key's challenge-response (see wire.AcceptPeer).
func (n *Node) authPeer(c net.Conn, r *bufio.Reader, from raft.NodeID) error {
	if n.cfg.PeerCAs != nil {
		if err := verifyPeerCert(c, n.cfg.PeerCAs); err != nil {
			return err
		}
	}
	c.SetDeadline(time.Now().Add(peerAuthTimeout))
	if err := wire.AcceptPeer(c, r, n.cfg.ClusterKey, uint64(from), uint64(n.cfg.ID)); err != nil {
		return err
	}
	return c.SetDeadline(time.Time{})
}

// verifyPeerCert checks that a TLS link's client certificate was issued by
// a peer CA (a client certificate from the clients' CA does not verify).
func verifyPeerCert(c net.Conn, roots *x509.CertPool) error {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return fmt.Errorf("%w: a peer certificate is required, and this link is not TLS", wire.ErrPeerAuth)
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return fmt.Errorf("%w: no peer certificate", wire.ErrPeerAuth)
	}
	inter := x509.NewCertPool()
	for _, ct := range certs[1:] {
		inter.AddCert(ct)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return fmt.Errorf("%w: the certificate of %q is not a peer certificate: %v", wire.ErrPeerAuth, certs[0].Subject.CommonName, err)
	}
	return nil
}

// checkPeerAuth refuses a configuration that would open peer links to
// anyone who reaches a non-loopback address.
func checkPeerAuth(cfg *Config) error {
	if cfg.ClusterKey != nil && len(cfg.ClusterKey) < wire.ClusterKeyBytesMin {
		return fmt.Errorf("node %d: the cluster key has %d bytes, fewer than %d", cfg.ID, len(cfg.ClusterKey), wire.ClusterKeyBytesMin)
	}
	if cfg.PeerCAs != nil && cfg.TLS == nil {
		return fmt.Errorf("node %d: PeerCAs needs TLS", cfg.ID)
	}
	if cfg.ClusterKey != nil || cfg.PeerCAs != nil || cfg.OpenPeerLinks {
		return nil
	}
	listen := cfg.ListenAddress
	if listen == "" {
		listen = cfg.Address
	}
	if IsLocalAddress(listen) {
		return nil
	}
	return fmt.Errorf("node %d: peer links on %s would be open to anyone who reaches it, who could then act as a member "+
		"(forge votes and entries): set a cluster key (Config.ClusterKey, dqlited -cluster-key-file or DQLITE_CLUSTER_KEY), "+
		"peer certificates (Config.PeerCAs, dqlited -tls-peer-ca), or accept open links explicitly (Config.OpenPeerLinks, dqlited -open-peer-links)",
		cfg.ID, listen)
}

// IsLocalAddress reports whether only this machine can reach addr: a
// loopback host or an abstract Unix socket.
func IsLocalAddress(addr string) bool {
	if strings.HasPrefix(addr, "@") {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
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
	if err := n.authPeer(c, r, from); err != nil {
		n.metrics.peerLinksRefused.Add(1)
		n.log.Warn("peer link refused", "claimed", from, "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	if !n.post(func() {
		if _, known := n.addrHints[from]; !known && address != "" {
			n.addrHints[from] = address
		}
		if p := n.peers[from]; p != nil {
			select { // the peer is up: our link to it need not wait
			case p.kick <- struct{}{}:
			default:
			}
		}
	}) {
		return
	}
	for {
		m, err := wire.ReadPeerMessage(r)
		switch {
		case errors.Is(err, wire.ErrPeerFrame):
			n.invalidPeerInput(from, err)
			return
		case err != nil:
			if !n.stopped() {
				n.log.Debug("peer connection closed", "peer", from, "err", err)
			}
			return
		case m.From != from:
			n.invalidPeerInput(from, fmt.Errorf("message from %d on the link of %d", m.From, from))
			return
		}
		if (m.Type == raft.MsgVoteResp || m.Type == raft.MsgPreVoteResp) && m.Reject {
			n.log.Debug("vote rejected", "by", from, "type", m.Type.String(), "term", m.Term)
		}
		if !n.post(func() {
			n.eventKind = m.Type.String()
			out, err := n.loop.Step(m)
			if err != nil {
				// A message no correct member sends: stop reading this
				// link (the peer redials; Raft retransmits).
				n.invalidPeerInput(from, fmt.Errorf("%s: %w", m.Type, err))
				c.Close()
			}
			n.handle(out)
		}) {
			return
		}
	}
}
