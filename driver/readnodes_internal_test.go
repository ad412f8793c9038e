package driver

import (
	"slices"
	"testing"

	"github.com/dqlite-go/dqlite/wire"
)

// TestReadCandidates: with ReadFollowers, the read connection rotates over
// the known nodes but the leader, which comes last; with ReadAllNodes, with
// no leader connection, or when the leader alone (or not) is known, over
// every known node.
func TestReadCandidates(t *testing.T) {
	abc := []string{"a", "b", "c"}
	for _, tc := range []struct {
		nodes  ReadNodes
		leader string // "": no leader connection
		addrs  []string
		cands  []string
		last   string
	}{
		{ReadFollowers, "b", abc, []string{"a", "c"}, "b"},
		{ReadFollowers, "a", abc, []string{"b", "c"}, "a"},
		{ReadAllNodes, "b", abc, abc, ""},
		{ReadFollowers, "", abc, abc, ""},
		{ReadFollowers, "b", []string{"b"}, []string{"b"}, ""},
		{ReadFollowers, "z", abc, abc, ""},
	} {
		cn := &conn{c: &Connector{ReadNodes: tc.nodes}}
		if tc.leader != "" {
			cn.w = &wire.Conn{Address: tc.leader}
		}
		cands, last := cn.readCandidates(tc.addrs)
		if !slices.Equal(cands, tc.cands) || last != tc.last {
			t.Errorf("%v, leader %q, known %v: candidates %v then %q, want %v then %q",
				tc.nodes, tc.leader, tc.addrs, cands, last, tc.cands, tc.last)
		}
	}
}
