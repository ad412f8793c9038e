package wire

import (
	"bufio"
	"errors"
	"net"
	"testing"
)

// TestPeerAuth runs both sides of the peer authentication over a pipe:
// matching keys pass on both sides; a wrong key, a missing key on either
// side, or a proof bound to another node id is refused.
func TestPeerAuth(t *testing.T) {
	k1 := []byte("0123456789abcdef0123456789abcdef")
	k2 := []byte("fedcba9876543210fedcba9876543210")
	cases := []struct {
		name               string
		acceptKey, dialKey []byte
		dialTo             uint64 // the id the dialer believes it reached
		acceptOK, dialOK   bool
	}{
		{"same key", k1, k1, 2, true, true},
		{"open links", nil, nil, 2, true, true},
		{"wrong key", k1, k2, 2, false, false},
		{"dialer without key", k1, nil, 2, false, false},
		{"acceptor without key", nil, k1, 2, true, false},
		{"proof for another node", k1, k1, 3, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, d := net.Pipe()
			defer a.Close()
			defer d.Close()
			acceptErr := make(chan error, 1)
			go func() {
				err := AcceptPeer(a, bufio.NewReader(a), c.acceptKey, 1, 2)
				if err != nil {
					a.Close() // as the node does: the dialer's read fails
				}
				acceptErr <- err
			}()
			dialErr := DialPeer(d, bufio.NewReader(d), c.dialKey, 1, c.dialTo)
			if dialErr != nil {
				d.Close()
			}
			aErr := <-acceptErr
			if (aErr == nil) != c.acceptOK || (dialErr == nil) != c.dialOK {
				t.Fatalf("acceptor: %v, dialer: %v", aErr, dialErr)
			}
			for _, err := range []error{aErr, dialErr} {
				if err != nil && !errors.Is(err, ErrPeerAuth) && !errors.Is(err, net.ErrClosed) {
					t.Fatalf("error not marked ErrPeerAuth: %v", err)
				}
			}
		})
	}
}
