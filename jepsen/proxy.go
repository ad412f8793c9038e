// Package jepsen tests real dqlited processes from outside, Jepsen style:
// kill -9, SIGSTOP, partitions and one-way cuts through TCP proxies it
// controls, membership changes (remove, wipe, rejoin under a new id) and a
// full disk, under register, bank and set workloads driven through the
// database/sql driver, checked with porcupine and invariants. See Run.
package jepsen

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"
)

// Network holds the partition rules: which node's peer links into which
// node are cut. Nodes are known by index; their Raft ids map to indexes.
type Network struct {
	mu      sync.Mutex
	ids     map[uint64]int  // Raft id to node index
	cut     map[[2]int]bool // {from, to} index pairs whose links are cut
	delay   map[int]time.Duration
	proxies []*Proxy
}

func newNetwork() *Network {
	return &Network{ids: map[uint64]int{}, cut: map[[2]int]bool{}, delay: map[int]time.Duration{}}
}

// SetID records that node index idx runs under Raft id.
func (n *Network) SetID(id uint64, idx int) {
	n.mu.Lock()
	n.ids[id] = idx
	n.mu.Unlock()
}

// Cut replaces the rules: links from a to b for every {a, b} in pairs are
// cut (a one-way cut blocks what a sends to b: a's peer link into b).
func (n *Network) Cut(pairs [][2]int) {
	n.mu.Lock()
	n.cut = map[[2]int]bool{}
	for _, p := range pairs {
		n.cut[p] = true
	}
	proxies := n.proxies
	n.mu.Unlock()
	for _, p := range proxies {
		p.enforce()
	}
}

// Heal removes every rule and delay.
func (n *Network) Heal() {
	n.mu.Lock()
	n.delay = map[int]time.Duration{}
	n.mu.Unlock()
	n.Cut(nil)
}

// Delay makes every peer link into node to deliver data d late.
func (n *Network) Delay(to int, d time.Duration) {
	n.mu.Lock()
	n.delay[to] = d
	n.mu.Unlock()
}

func (n *Network) delayOf(to int) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.delay[to]
}

func (n *Network) allowed(fromID uint64, to int) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	from, ok := n.ids[fromID]
	return !ok || !n.cut[[2]int{from, to}]
}

// Proxy forwards connections to one node. A connection that starts with
// CONNECT (a peer link) is attributed to the sending node and subject to
// the rules; client connections always pass.
type Proxy struct {
	net    *Network
	idx    int
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  map[*pconn]struct{}
	closed bool
	wg     sync.WaitGroup
}

type pconn struct {
	from      uint64 // 0: a client
	down, up  net.Conn
	closeOnce sync.Once
}

func (c *pconn) close() {
	c.closeOnce.Do(func() { c.down.Close(); c.up.Close() })
}

// NewProxy listens on a free loopback port and forwards to target.
func (n *Network) NewProxy(idx int, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{net: n, idx: idx, ln: ln, target: target, conns: map[*pconn]struct{}{}}
	n.mu.Lock()
	n.proxies = append(n.proxies, p)
	n.mu.Unlock()
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's address (the node's address in the cluster).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// proxyHandshakeTimeout bounds reading a connection's first request.
const proxyHandshakeTimeout = 5 * time.Second

func (p *Proxy) serve(down net.Conn) {
	defer p.wg.Done()
	// Peek the protocol word and the first header: a CONNECT (type 11)
	// carries the sender's id first in its body.
	down.SetReadDeadline(time.Now().Add(proxyHandshakeTimeout))
	head := make([]byte, 16)
	if _, err := io.ReadFull(down, head); err != nil {
		down.Close()
		return
	}
	var from uint64
	if head[12] == 11 {
		id := make([]byte, 8)
		if _, err := io.ReadFull(down, id); err != nil {
			down.Close()
			return
		}
		head = append(head, id...)
		from = binary.LittleEndian.Uint64(id)
		if !p.net.allowed(from, p.idx) {
			down.Close()
			return
		}
	}
	down.SetReadDeadline(time.Time{})
	up, err := net.DialTimeout("tcp", p.target, time.Second)
	if err != nil {
		down.Close()
		return
	}
	c := &pconn{from: from, down: down, up: up}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.close()
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		c.close()
	}()
	if _, err := up.Write(head); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() {
		if from != 0 {
			p.copyDelayed(up, down)
		} else {
			io.Copy(up, down)
		}
		c.close()
		done <- struct{}{}
	}()
	go func() { io.Copy(down, up); c.close(); done <- struct{}{} }()
	<-done
	<-done
}

// copyDelayed copies a peer link's data, holding each chunk for the
// network's current delay into this node.
func (p *Proxy) copyDelayed(dst io.Writer, src io.Reader) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := p.net.delayOf(p.idx); d > 0 {
				time.Sleep(d) // the injected fault itself
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// enforce closes peer links the rules now cut.
func (p *Proxy) enforce() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if c.from != 0 && !p.net.allowed(c.from, p.idx) {
			c.close()
		}
	}
}

// Close stops the proxy and its connections.
func (p *Proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
