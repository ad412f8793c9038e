package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/driver"
	"github.com/dqlite-go/dqlite/internal/testcluster"
	"github.com/dqlite-go/dqlite/internal/tlstest"
	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wire"
)

// keyedCluster starts three dqlited processes with ids 1, 2, 3: the first
// bootstraps, creating the cluster key file, the others join with it (or,
// when key is false, with peer links open on loopback).
func keyedCluster(t *testing.T, key bool, extra ...string) (procs []*proc, keyFile string) {
	addrs := testcluster.FreeAddrs(t, 6)
	base := t.TempDir()
	keyFile = filepath.Join(base, "cluster.key")
	for i := 0; i < 3; i++ {
		args := append([]string{"-id", fmt.Sprint(i + 1)}, extra...)
		if key {
			args = append(args, "-cluster-key-file", keyFile)
		}
		if i > 0 {
			args = append(args, "-join", addrs[0])
		}
		procs = append(procs, startProc(t, addrs[i], addrs[3+i], filepath.Join(base, fmt.Sprint("n", i+1)), args...))
		if i == 0 && key {
			eventually(t, 10*time.Second, "the bootstrapping node to create the key", func() bool {
				_, err := os.Stat(keyFile)
				return err == nil
			})
		}
	}
	waitVoters(t, procs, nil)
	return procs, keyFile
}

func waitVoters(t *testing.T, procs []*proc, tlsCfg *tls.Config) {
	eventually(t, 30*time.Second, "three voters", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := wire.FindLeader(ctx, addrsOf(procs), tlsCfg)
		if err != nil {
			return false
		}
		defer c.Close()
		servers, err := c.Cluster(ctx, 1)
		voters := 0
		for _, s := range servers {
			if s.Role == wire.RoleVoter {
				voters++
			}
		}
		return err == nil && voters == 3
	})
}

// metricsOf scrapes one process's metrics.
func metricsOf(t *testing.T, p *proc) map[string]float64 {
	t.Helper()
	code, body := get("http://" + p.metrics + "/metrics")
	if code != 200 {
		t.Fatalf("metrics of %s: %d %s", p.addr, code, body)
	}
	return parseProm(t, body)
}

// leaderProc returns the leading process and one follower.
func leaderProc(t *testing.T, procs []*proc) (leader, follower *proc) {
	t.Helper()
	eventually(t, 20*time.Second, "a leader", func() bool {
		leader, follower = nil, nil
		for _, p := range procs {
			m := metricsOf(t, p)
			if m["dqlite_is_leader"] == 1 {
				leader = p
			} else if follower == nil {
				follower = p
			}
		}
		return leader != nil
	})
	return leader, follower
}

// hostileLink opens a connection to p claiming to be member claim: the
// protocol version, CONNECT, then (with key) the dialer's side of the
// authentication. Without key it sends garbage where the proof goes.
func hostileLink(t *testing.T, p *proc, tlsCfg *tls.Config, key []byte, claim, target uint64) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	if tlsCfg != nil {
		c, err = tls.Dial("tcp", p.addr, tlsCfg)
	} else {
		c, err = net.Dial("tcp", p.addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var v [8]byte
	binary.LittleEndian.PutUint64(v[:], wire.ProtocolVersion)
	connect, err := wire.EncodeRequest(&wire.Request{Type: wire.ReqConnect, ID: claim, Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(append(v[:], connect...)); err != nil {
		t.Fatal(err)
	}
	if key != nil {
		if err := wire.DialPeer(c, bufio.NewReader(c), key, claim, target); err != nil {
			t.Fatalf("authenticating with the cluster key: %v", err)
		}
	}
	return c
}

// closedByPeer reports whether the node closed c (a read ends with EOF or
// a reset, not with our deadline).
func closedByPeer(c net.Conn) bool { return closedWithin(c, 5*time.Second) }

func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

type hostileFrame struct {
	name   string
	toLead bool // sent to the leader claiming to be a follower (else the reverse)
	frame  func(term, lastIndex uint64, from, to raft.NodeID) []byte
	// ignored: a message a correct member may send late (a snapshot
	// response when no snapshot is being sent): dropped without a word,
	// the link stays.
	ignored bool
}

func peerFrame(m raft.Message) []byte { return wire.AppendPeerMessage(nil, &m) }

// hostileFrames are messages no correct member sends; each must make the
// receiver drop the link and nothing else.
var hostileFrames = []hostileFrame{
	{"ack beyond the log", true, func(term, _ uint64, from, to raft.NodeID) []byte {
		return peerFrame(raft.Message{Type: raft.MsgAppResp, From: from, To: to, Term: term, Index: 1 << 40})
	}, false},
	{"undecodable configuration entry", false, func(term, last uint64, from, to raft.NodeID) []byte {
		return peerFrame(raft.Message{Type: raft.MsgApp, From: from, To: to, Term: term, Index: last, LogTerm: term,
			Entries: []raft.Entry{{Index: last + 1, Term: term, Type: raft.EntryConfig, Data: []byte("not a configuration")}}})
	}, false},
	{"snapshot response beyond the snapshot, none being sent", true, func(term, last uint64, from, to raft.NodeID) []byte {
		return peerFrame(raft.Message{Type: raft.MsgSnapResp, From: from, To: to, Term: term, Index: last, Offset: 1 << 50})
	}, true},
	{"entries that overflow the index", false, func(term, _ uint64, from, to raft.NodeID) []byte {
		return peerFrame(raft.Message{Type: raft.MsgApp, From: from, To: to, Term: term, Index: ^uint64(0), LogTerm: term,
			Entries: []raft.Entry{{Index: 0, Term: term, Type: raft.EntryNormal}}})
	}, false},
	{"huge frame length", true, func(uint64, uint64, raft.NodeID, raft.NodeID) []byte {
		return []byte{0xf0, 0xff, 0xff, 0xff, 0, 0, 0, 0}
	}, false},
	{"a million entries in a few bytes", false, func(term, _ uint64, from, to raft.NodeID) []byte {
		b := peerFrame(raft.Message{Type: raft.MsgApp, From: from, To: to, Term: term})
		// The entry count sits after the 3-byte head and nine u64 fields.
		binary.LittleEndian.PutUint32(b[8+3+72:], 1<<20)
		binary.LittleEndian.PutUint32(b[4:], crc32c(b[8:]))
		return b
	}, false},
	{"sender other than the link's", true, func(term, _ uint64, _, to raft.NodeID) []byte {
		return peerFrame(raft.Message{Type: raft.MsgHeartbeatResp, From: 99, To: to, Term: term})
	}, false},
}

// TestHostilePeerInputs sends real dqlited processes, over plain TCP, each
// hostile peer input: with the cluster key (authenticated, so the message
// reaches validation: the link must be dropped) and without it (refused
// before any Raft message is read); and, on a cluster whose peer links are
// open on loopback, the same messages unauthenticated. Every node must stay
// up and the cluster keep serving writes.
func TestHostilePeerInputs(t *testing.T) {
	for _, keyed := range []bool{true, false} {
		t.Run(fmt.Sprintf("cluster key %v", keyed), func(t *testing.T) {
			procs, keyFile := keyedCluster(t, keyed)
			var key []byte
			if keyed {
				text, err := os.ReadFile(keyFile)
				if err != nil {
					t.Fatal(err)
				}
				if key, err = hex.DecodeString(strings.TrimSpace(string(text))); err != nil {
					t.Fatal(err)
				}
			}
			db := sql.OpenDB(driver.NewConnector(addrsOf(procs), "test"))
			defer db.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := db.ExecContext(ctx, "CREATE TABLE t (x)"); err != nil {
				t.Fatal(err)
			}
			sendAll(t, procs, key)
			if keyed {
				refusedBeforeRaft(t, procs)
			}
			for i := 0; i < 10; i++ {
				if _, err := db.ExecContext(ctx, "INSERT INTO t VALUES (?)", i); err != nil {
					t.Fatalf("write after the attacks: %v", err)
				}
			}
			for _, p := range procs {
				select {
				case <-p.done:
					t.Fatalf("%s exited: %v", p.addr, p.err)
				default:
				}
			}
		})
	}
}

// sendAll sends each hostile frame on its own authenticated link (key nil:
// the cluster's links are open) and checks the node dropped the link and
// counted the message.
func sendAll(t *testing.T, procs []*proc, key []byte) {
	for _, h := range hostileFrames {
		leader, follower := leaderProc(t, procs)
		lm, fm := metricsOf(t, leader), metricsOf(t, follower)
		target, claim, tm := leader, follower, lm
		if !h.toLead {
			target, claim, tm = follower, leader, fm
		}
		targetID, claimID := uint64(tm["dqlite_node_id"]), uint64(metricsOf(t, claim)["dqlite_node_id"])
		before := tm["dqlite_peer_messages_invalid_total"]
		c := hostileLink(t, target, nil, key, claimID, targetID)
		frame := h.frame(uint64(tm["dqlite_term"]), uint64(tm["dqlite_last_index"]), raft.NodeID(claimID), raft.NodeID(targetID))
		if _, err := c.Write(frame); err != nil {
			t.Fatalf("%s: %v", h.name, err)
		}
		if h.ignored {
			if closedWithin(c, time.Second) {
				t.Fatalf("%s: node %d dropped the link for a message it should ignore", h.name, targetID)
			}
			if after := metricsOf(t, target)["dqlite_peer_messages_invalid_total"]; after != before {
				t.Fatalf("%s: an ignored message was counted as invalid", h.name)
			}
			t.Logf("%s: node %d ignored it", h.name, targetID)
			continue
		}
		if !closedByPeer(c) {
			t.Fatalf("%s: node %d kept the link open", h.name, targetID)
		}
		// The node counts the input before it closes the link.
		if after := metricsOf(t, target)["dqlite_peer_messages_invalid_total"]; after != before+1 {
			t.Fatalf("%s: invalid peer input counter %v -> %v, want one more", h.name, before, after)
		}
		t.Logf("%s: node %d dropped the link", h.name, targetID)
	}
}

// refusedBeforeRaft opens links without the key to every node, one sending
// no proof but an ack beyond the log right away, one a garbage proof: each
// is refused, counted as refused, and no Raft message was read (the invalid
// message counter does not move).
func refusedBeforeRaft(t *testing.T, procs []*proc) {
	for _, p := range procs {
		m := metricsOf(t, p)
		id := uint64(m["dqlite_node_id"])
		for _, payload := range [][]byte{
			peerFrame(raft.Message{Type: raft.MsgAppResp, From: 1, To: raft.NodeID(id), Term: uint64(m["dqlite_term"]), Index: 1 << 40}),
			make([]byte, 64),
		} {
			c := hostileLink(t, p, nil, nil, 1, id)
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
			if !closedByPeer(c) {
				t.Fatalf("node %d kept an unauthenticated link open", id)
			}
		}
		after := metricsOf(t, p)
		if after["dqlite_peer_links_refused_total"] < m["dqlite_peer_links_refused_total"]+2 {
			t.Fatalf("node %d: refused links %v -> %v", id, m["dqlite_peer_links_refused_total"], after["dqlite_peer_links_refused_total"])
		}
		if after["dqlite_peer_messages_invalid_total"] != m["dqlite_peer_messages_invalid_total"] {
			t.Fatalf("node %d read a Raft message from an unauthenticated link", id)
		}
	}
}

// TestClientCertificateCannotOpenPeerLink runs a TLS cluster whose nodes'
// certificates come from a peer CA distinct from the clients' CA: the
// nodes link up, a client with a client certificate writes, and the same
// client certificate sending CONNECT is refused.
func TestClientCertificateCannotOpenPeerLink(t *testing.T) {
	dir := t.TempDir()
	peerCA, clientCA := tlstest.NewCA(t, "peer CA"), tlstest.NewCA(t, "client CA")
	peerCA.WriteCert(t, filepath.Join(dir, "peer-ca.pem"))
	clientCA.WriteCert(t, filepath.Join(dir, "client-ca.pem"))
	addrs := testcluster.FreeAddrs(t, 6)
	var procs []*proc
	for i := 0; i < 3; i++ {
		cert, key := filepath.Join(dir, fmt.Sprint("n", i, ".pem")), filepath.Join(dir, fmt.Sprint("n", i, ".key"))
		peerCA.Issue(t, fmt.Sprint("node ", i+1), cert, key)
		args := []string{"-id", fmt.Sprint(i + 1), "-tls-cert", cert, "-tls-key", key,
			"-tls-ca", filepath.Join(dir, "client-ca.pem"), "-tls-peer-ca", filepath.Join(dir, "peer-ca.pem")}
		if i > 0 {
			args = append(args, "-join", addrs[0])
		}
		procs = append(procs, startProc(t, addrs[i], addrs[3+i], filepath.Join(dir, fmt.Sprint("d", i)), args...))
	}
	clientCert := clientCA.Issue(t, "app", filepath.Join(dir, "app.pem"), filepath.Join(dir, "app.key"))
	clientTLS := &tls.Config{Certificates: []tls.Certificate{clientCert}, RootCAs: peerCA.Pool(), MinVersion: tls.VersionTLS13}
	waitVoters(t, procs, clientTLS)
	conn := driver.NewConnector(addrsOf(procs), "test")
	conn.TLS = clientTLS
	db := sql.OpenDB(conn)
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (x); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatalf("write with a client certificate: %v", err)
	}
	for _, p := range procs {
		before := metricsOf(t, p)["dqlite_peer_links_refused_total"]
		c := hostileLink(t, p, clientTLS, nil, 2, 1)
		c.Write(peerFrame(raft.Message{Type: raft.MsgAppResp, From: 2, To: 1, Term: 1, Index: 1 << 40}))
		if !closedByPeer(c) {
			t.Fatalf("%s kept a peer link opened with a client certificate", p.addr)
		}
		if after := metricsOf(t, p)["dqlite_peer_links_refused_total"]; after != before+1 {
			t.Fatalf("%s: refused peer links %v -> %v", p.addr, before, after)
		}
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatalf("write after the attempts: %v", err)
	}
}

func crc32c(b []byte) uint32 { return crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)) }
