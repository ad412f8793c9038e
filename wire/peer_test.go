package wire

import (
	"bufio"
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/dqlite-go/dqlite/raft"
)

func samplePeerMessages() []raft.Message {
	cfg := raft.Membership{Servers: []raft.Server{{ID: 1, Address: "a:1", Role: raft.Voter}, {ID: 2, Address: "b:2", Role: raft.Spare}}}
	return []raft.Message{
		{Type: raft.MsgApp, From: 1, To: 2, Term: 3, LogTerm: 2, Index: 9, Commit: 8,
			Entries: []raft.Entry{{Index: 10, Term: 3, Type: raft.EntryNormal, Data: []byte("frames")}, {Index: 11, Term: 3}}},
		{Type: raft.MsgAppResp, From: 2, To: 1, Term: 3, Index: 11, Reject: true, RejectHint: 4, LogTerm: 1},
		{Type: raft.MsgVote, From: 3, To: 1, Term: 4, Index: 11, LogTerm: 3, Transfer: true},
		{Type: raft.MsgHeartbeat, From: 1, To: 3, Term: 4, Commit: 11, Context: 77},
		{Type: raft.MsgSnap, From: 1, To: 2, Term: 4, Offset: 4096, Data: []byte("chunk"), Done: true,
			Snapshot: &raft.SnapshotMeta{Index: 100, Term: 4, Config: cfg, ConfigIndex: 50}},
	}
}

// TestPeerFramesRoundTrip checks every field of Raft messages survives the
// peer framing, several frames in one stream.
func TestPeerFramesRoundTrip(t *testing.T) {
	var b []byte
	msgs := samplePeerMessages()
	for i := range msgs {
		b = AppendPeerMessage(b, &msgs[i])
	}
	r := bufio.NewReader(bytes.NewReader(b))
	for i, want := range msgs {
		got, err := ReadPeerMessage(r)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("message %d:\n got  %+v\n want %+v", i, got, want)
		}
	}
}

// TestPeerFrameCorruption checks a flipped bit anywhere in a frame, a
// truncation or an oversized length is an error, never a wrong message.
func TestPeerFrameCorruption(t *testing.T) {
	m := samplePeerMessages()[0]
	frame := AppendPeerMessage(nil, &m)
	for i := range frame {
		for bit := 0; bit < 8; bit++ {
			bad := append([]byte(nil), frame...)
			bad[i] ^= 1 << bit
			got, err := ReadPeerMessage(bufio.NewReader(bytes.NewReader(bad)))
			if err == nil {
				t.Fatalf("flip of bit %d of byte %d accepted: %+v", bit, i, got)
			}
		}
	}
	if _, err := ReadPeerMessage(bufio.NewReader(bytes.NewReader(frame[:len(frame)-1]))); err == nil {
		t.Fatal("truncated frame accepted")
	}
	huge := append([]byte(nil), frame...)
	huge[3] = 0x7f
	if _, err := ReadPeerMessage(bufio.NewReader(bytes.NewReader(huge))); !errors.Is(err, ErrPeerFrame) {
		t.Fatalf("oversized frame: %v", err)
	}
}

// FuzzPeerMessage feeds arbitrary payloads to the peer decoder.
func FuzzPeerMessage(f *testing.F) {
	for _, m := range samplePeerMessages() {
		f.Add(AppendPeerMessage(nil, &m)[8:])
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		m, err := DecodePeerMessage(p)
		if err != nil {
			return
		}
		// What decodes re-encodes to the same payload.
		if again := AppendPeerMessage(nil, &m)[8:]; !bytes.Equal(again, p) {
			t.Fatalf("re-encoding differs:\n%x\n%x", p, again)
		}
	})
}
