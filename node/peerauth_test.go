package node

import (
	"strings"
	"testing"

	"github.com/dqlite-go/dqlite/wire"
)

// TestPeerAuthConfig checks which configurations New accepts for peer
// links: open links only on loopback (or when asked for), a key of at least
// wire.ClusterKeyBytesMin bytes, and peer CAs only with TLS.
func TestPeerAuthConfig(t *testing.T) {
	key := make([]byte, wire.ClusterKeyBytesMin)
	cases := []struct {
		name string
		cfg  Config
		err  string // "" when accepted
	}{
		{"loopback, open", Config{Address: "127.0.0.1:9001"}, ""},
		{"localhost, open", Config{Address: "localhost:9001"}, ""},
		{"abstract socket, open", Config{Address: "@dqlite"}, ""},
		{"any interface, open", Config{Address: "0.0.0.0:9001"}, "open to anyone"},
		{"private address, open", Config{Address: "10.0.0.1:9001"}, "open to anyone"},
		{"loopback listening on every interface", Config{Address: "127.0.0.1:9001", ListenAddress: ":9001"}, "open to anyone"},
		{"private address, open on purpose", Config{Address: "10.0.0.1:9001", OpenPeerLinks: true}, ""},
		{"private address, key", Config{Address: "10.0.0.1:9001", ClusterKey: key}, ""},
		{"short key", Config{Address: "10.0.0.1:9001", ClusterKey: key[:8]}, "fewer than"},
	}
	for _, c := range cases {
		err := checkPeerAuth(&c.cfg)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.err)
		}
	}
}
