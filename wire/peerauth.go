package wire

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Peer authentication. After the dialing node's CONNECT (its id and
// address) and before any Raft message, the two sides run one exchange in
// fixed-size frames, so nothing the other side sends is trusted or
// allocated for before it has proved it holds the cluster key:
//
//	acceptor -> dialer  challenge: "DQPA" | version u8 | flags u8 | 0 u16 | nonceA [32]
//	dialer -> acceptor  proof:     nonceD [32] | MAC("dialer")   [32]
//	acceptor -> dialer  answer:    MAC("acceptor") [32]
//
//	MAC(role) = HMAC-SHA256(key, "dqlite-go peer v1 " role | nonceA | nonceD |
//	                             dialer id u64 | acceptor id u64)
//
// The key never crosses the wire; fresh nonces on both sides make every
// proof single-use; the ids bind the proof to this pair of nodes (a dialer
// that reached the wrong node, or a proof replayed elsewhere, fails).
// flags bit 0 says the acceptor requires the key: without a key (peer links
// open, accepted only on loopback or when configured so) the challenge
// carries flags 0 and the exchange stops there. A dialer that holds a key
// refuses an acceptor that does not ask for it (a misconfigured or
// impersonated node), so authentication is mutual.
//
// This proves membership of the cluster (holding the key), not which member:
// any key holder can claim any id, as any holder of a peer certificate can.

const (
	peerAuthMagic   = "DQPA"
	peerAuthVersion = 1
	peerAuthKeyFlag = 1

	peerAuthNonceBytes     = 32
	peerAuthMACBytes       = sha256.Size
	peerAuthChallengeBytes = 8 + peerAuthNonceBytes
	peerAuthProofBytes     = peerAuthNonceBytes + peerAuthMACBytes

	// ClusterKeyBytesMin is the shortest cluster key accepted.
	ClusterKeyBytesMin = 16
)

// ErrPeerAuth marks a peer link refused because the other side did not
// prove it belongs to the cluster (or this side is not set up to prove it).
var ErrPeerAuth = errors.New("wire: peer authentication failed")

func peerAuthMAC(key []byte, role string, nonceA, nonceD []byte, dialer, acceptor uint64) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("dqlite-go peer v1 " + role))
	m.Write(nonceA)
	m.Write(nonceD)
	var ids [16]byte
	binary.LittleEndian.PutUint64(ids[:8], dialer)
	binary.LittleEndian.PutUint64(ids[8:], acceptor)
	m.Write(ids[:])
	return m.Sum(nil)
}

// AcceptPeer runs the acceptor's side of the exchange on a connection that
// sent CONNECT claiming dialerID. key nil means peer links are open: the
// dialer is told so and accepted. The caller sets the deadline.
func AcceptPeer(w io.Writer, r *bufio.Reader, key []byte, dialerID, selfID uint64) error {
	ch := make([]byte, peerAuthChallengeBytes)
	copy(ch, peerAuthMagic)
	ch[4] = peerAuthVersion
	if key != nil {
		ch[5] = peerAuthKeyFlag
	}
	nonceA := ch[8:]
	if _, err := rand.Read(nonceA); err != nil {
		return err
	}
	if _, err := w.Write(ch); err != nil {
		return err
	}
	if key == nil {
		return nil
	}
	proof := make([]byte, peerAuthProofBytes)
	if _, err := io.ReadFull(r, proof); err != nil {
		return fmt.Errorf("%w: reading the proof: %v", ErrPeerAuth, err)
	}
	nonceD, mac := proof[:peerAuthNonceBytes], proof[peerAuthNonceBytes:]
	if !hmac.Equal(mac, peerAuthMAC(key, "dialer", nonceA, nonceD, dialerID, selfID)) {
		return fmt.Errorf("%w: the proof does not match this cluster's key", ErrPeerAuth)
	}
	_, err := w.Write(peerAuthMAC(key, "acceptor", nonceA, nonceD, dialerID, selfID))
	return err
}

// DialPeer runs the dialer's side after it sent CONNECT as selfID to the
// node acceptorID. key nil: this node has no key and accepts only an
// acceptor whose links are open. The caller sets the deadline.
func DialPeer(w io.Writer, r *bufio.Reader, key []byte, selfID, acceptorID uint64) error {
	ch := make([]byte, peerAuthChallengeBytes)
	if _, err := io.ReadFull(r, ch); err != nil {
		return fmt.Errorf("wire: peer link: reading the challenge: %w", err)
	}
	if string(ch[:4]) != peerAuthMagic || ch[4] != peerAuthVersion || ch[5]&^peerAuthKeyFlag != 0 {
		return fmt.Errorf("%w: not a peer challenge (version %d, flags %#x)", ErrPeerAuth, ch[4], ch[5])
	}
	required := ch[5]&peerAuthKeyFlag != 0
	switch {
	case required && key == nil:
		return fmt.Errorf("%w: node %d requires the cluster key and this node has none", ErrPeerAuth, acceptorID)
	case !required && key != nil:
		return fmt.Errorf("%w: node %d does not ask for the cluster key (not a member, or misconfigured)", ErrPeerAuth, acceptorID)
	case !required:
		return nil
	}
	nonceA := ch[8:]
	proof := make([]byte, peerAuthNonceBytes, peerAuthProofBytes)
	if _, err := rand.Read(proof); err != nil {
		return err
	}
	proof = append(proof, peerAuthMAC(key, "dialer", nonceA, proof, selfID, acceptorID)...)
	if _, err := w.Write(proof); err != nil {
		return err
	}
	answer := make([]byte, peerAuthMACBytes)
	if _, err := io.ReadFull(r, answer); err != nil {
		return fmt.Errorf("%w: node %d refused the proof: %v", ErrPeerAuth, acceptorID, err)
	}
	if !hmac.Equal(answer, peerAuthMAC(key, "acceptor", nonceA, proof[:peerAuthNonceBytes], selfID, acceptorID)) {
		return fmt.Errorf("%w: node %d does not hold this cluster's key", ErrPeerAuth, acceptorID)
	}
	return nil
}
