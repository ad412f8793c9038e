package raft

import (
	"errors"
	"fmt"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

// startSnapshot switches a replica that needs compacted entries to receiving
// the newest snapshot, in chunks of at most MaxSnapshotChunkBytes, one chunk
// in flight at a time.
func (r *Raft) startSnapshot(to NodeID, pr *progress) {
	meta := r.cfg.Storage.Snapshot()
	if meta.Index == 0 {
		r.log.fail(fmt.Errorf("raft: storage compacted the log below %d but has no snapshot", pr.next))
		return
	}
	pr.becomeSnapshot(meta)
	r.sendSnapshotChunk(to, pr)
}

func (r *Raft) sendSnapshotChunk(to NodeID, pr *progress) {
	if pr.snapDone || r.log.readErr != nil {
		return
	}
	data, last, err := r.cfg.Storage.SnapshotChunk(pr.snap.Index, pr.snapOffset, r.cfg.MaxSnapshotChunkBytes)
	switch {
	case errors.Is(err, ErrSnapshotChanged):
		r.restartSnapshot(to, pr)
		return
	case err == nil && len(data) == 0 && !last:
		err = errors.New("empty chunk before the end")
	}
	if err != nil {
		r.log.fail(fmt.Errorf("raft: reading snapshot %d at offset %d: %w", pr.snap.Index, pr.snapOffset, err))
		return
	}
	r.noteSnapshotRead(pr.snap.Index, pr.snapOffset+uint64(len(data)))
	meta := pr.snap
	r.send(Message{Type: MsgSnap, To: to, Snapshot: &meta, Offset: pr.snapOffset, Data: data, Done: last})
	pr.snapOffset += uint64(len(data))
	pr.snapDone = last
	pr.snapIdle = 0
}

// restartSnapshot starts over with the newest snapshot after the one being
// sent was replaced.
func (r *Raft) restartSnapshot(to NodeID, pr *progress) {
	if r.cfg.Storage.Snapshot().Index == pr.snap.Index {
		r.log.fail(fmt.Errorf("raft: storage reports its newest snapshot %d replaced", pr.snap.Index))
		return
	}
	r.startSnapshot(to, pr)
}

func (r *Raft) noteSnapshotRead(index, end uint64) {
	if r.snapRead.index != index {
		r.snapRead = snapshotRead{index: index}
	}
	r.snapRead.end = max(r.snapRead.end, end)
}

// handleSnapshotResponse moves a snapshot transfer on. Step checked the
// offset is within what was sent of that snapshot; a response from an
// earlier round of the same snapshot may still rewind (harmlessly: the
// follower tells us what it holds on the next chunk).
func (r *Raft) handleSnapshotResponse(m Message, pr *progress) {
	if pr.state != snapshotState || m.Index != pr.snap.Index {
		return
	}
	pr.snapIdle = 0
	if m.Index != r.snapRead.index {
		// A newer snapshot was read since, so this one is gone: the
		// follower gets the newest unless it is getting all of this one.
		if !pr.snapDone || m.Reject {
			r.startSnapshot(m.From, pr)
		}
		return
	}
	if m.Offset < pr.snapOffset || m.Reject {
		// The follower lost chunks (or restarted): rewind.
		pr.snapOffset, pr.snapDone = m.Offset, false
	}
	pr.snapAcked = m.Offset
	r.sendSnapshotChunk(m.From, pr)
}

// handleSnapshot receives one chunk of a snapshot from the leader. Chunks
// must arrive in order; the follower tells the leader the offset it expects
// next. The last chunk installs the snapshot.
func (r *Raft) handleSnapshot(m Message) {
	meta := *m.Snapshot
	if meta.Index <= r.log.committed || r.log.matchTerm(meta.Index, meta.Term) {
		// We already hold everything the snapshot covers.
		if r.log.matchTerm(meta.Index, meta.Term) {
			r.matched = max(r.matched, meta.Index)
			r.log.commitTo(meta.Index)
		}
		r.incoming = nil
		r.send(Message{Type: MsgSnapResp, To: m.From, Index: meta.Index, Offset: m.Offset + uint64(len(m.Data))})
		r.pendingAck = true
		r.maybeAck()
		return
	}
	in := r.incoming
	if in == nil || in.meta.Index != meta.Index || in.meta.Term != meta.Term {
		if m.Offset != 0 {
			r.send(Message{Type: MsgSnapResp, To: m.From, Index: meta.Index, Offset: 0, Reject: true})
			return
		}
		in = &incomingSnapshot{meta: meta}
		r.incoming = in
	}
	if m.Offset != uint64(len(in.buf)) {
		r.send(Message{Type: MsgSnapResp, To: m.From, Index: meta.Index, Offset: uint64(len(in.buf))})
		return
	}
	in.buf = append(in.buf, m.Data...)
	r.send(Message{Type: MsgSnapResp, To: m.From, Index: meta.Index, Offset: uint64(len(in.buf))})
	if !m.Done {
		return
	}
	r.incoming = nil
	snap := &Snapshot{Meta: meta, Data: in.buf}
	snap.Meta.Config = meta.Config.Clone()
	r.log.restore(snap)
	if !mutant.On(mutant.RaftSnapshotKeepsConfig) {
		r.setSnapshotConfig(snap.Meta)
	}
	r.matched = meta.Index
	r.pendingAck = true
}
