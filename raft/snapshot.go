package raft

import (
	"errors"
	"fmt"
	"slices"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

// SnapshotSource produces the snapshots a leader sends, instead of Storage
// (Config.SnapshotSource). With it, a leader never calls Storage.Snapshot
// or Storage.SnapshotChunk to send a snapshot, and replicas may be sent
// different snapshots at once (each opening is for one replica). Raft calls
// it synchronously from the goroutine that drives the Raft, so each call
// should be quick.
type SnapshotSource interface {
	// OpenSnapshot returns the metadata of a snapshot to send now: the state
	// machine's state at meta.Index (Term and Config as of that index). An
	// error for which IsSnapshotLater(err) is true means "not now"; the
	// leader tries again on a later tick/heartbeat response (the replica stays
	// where it is, nothing fails). Any other error is logged/ignored the same
	// way as later (it must never panic or fail the node): raft retries later.
	//
	// The metadata must be of a snapshot raft can stand behind: Index at
	// most the applied index (the last one handed out in CommittedEntries,
	// or Config.Applied), at least the log's first index - 1 (the leader
	// must hold every entry after it), Term and Config (with ConfigIndex)
	// as of Index. Anything else is a programming error, reported like a
	// storage failure (Update.StorageErr).
	OpenSnapshot() (SnapshotMeta, error)
	// ReadSnapshot returns up to maxBytes of snapshot index's data from
	// offset, and whether this is the end; ErrSnapshotChanged when that
	// snapshot is no longer available (raft opens a new one).
	//
	// Raft reads an opened snapshot from offset 0 and never past the end
	// of what it read of it; it may read bytes again (a chunk was lost).
	// It may open the same index again. A follower with a SnapshotSink
	// starts over when sent offset 0; a follower without one continues
	// from the bytes it holds, so unless every follower has a sink, the
	// bytes served for an index must not change from one opening to the
	// next. (With sinks, a late message can still, rarely, make a
	// follower continue a partial snapshot of an earlier opening: the
	// sink's check of the whole snapshot catches it, and the transfer
	// starts over.) Any other error is a storage failure
	// (Update.StorageErr), as is an empty chunk before the end or one
	// longer than maxBytes.
	ReadSnapshot(index, offset uint64, maxBytes int) (data []byte, last bool, err error)
}

// SnapshotSink receives the chunks of a snapshot a follower is sent, in
// order, instead of raft buffering them in memory (Config.SnapshotSink).
// Raft calls it synchronously from the goroutine that drives the Raft.
type SnapshotSink interface {
	// WriteSnapshotChunk is given each chunk in order (offset 0 first, each
	// offset the end of the previous chunk). A chunk at offset 0 starts a new
	// snapshot (dropping any partial one). With done set it is the last: the
	// sink must check the whole snapshot and make it ready to install. An
	// error rejects the chunk: raft answers the leader with a reject at offset 0
	// (the transfer starts over) and forgets the partial snapshot.
	//
	// After an error raft calls nothing else about that snapshot (no
	// AbortSnapshot): the sink drops the partial one itself. Once done
	// was accepted, raft hands out Update.Snapshot with that meta and no
	// Data: the caller installs what the sink made ready. Raft gives a
	// chunk at offset 0 also when it starts a snapshot over (the leader
	// opened it again, or resent its first chunk), with the same meta or
	// not; and a restarted Raft knows of no partial snapshot: its first
	// chunk is at offset 0. Check the whole snapshot (a checksum): the
	// chunks given in order may, rarely, come from two openings of the
	// same index on the leader (see SnapshotSource.ReadSnapshot).
	WriteSnapshotChunk(meta SnapshotMeta, offset uint64, data []byte, done bool) error
	// AbortSnapshot drops a partial snapshot (raft calls it when it gives up
	// on one: a newer snapshot/leader, or it turned out not to be needed).
	// Raft calls it when it drops a partial snapshot of which the sink
	// accepted a chunk: a newer term, a snapshot this node no longer needs
	// (it holds the index), or a chunk at offset 0 starting over (then
	// before giving that chunk).
	AbortSnapshot()
}

// ErrSnapshotLater is what a SnapshotSource returns from OpenSnapshot when
// it has no snapshot to send now (IsSnapshotLater is true for it).
var ErrSnapshotLater error = snapshotLaterError{}

type snapshotLaterError struct{}

func (snapshotLaterError) Error() string       { return "raft: no snapshot to send now, try later" }
func (snapshotLaterError) SnapshotLater() bool { return true }

// IsSnapshotLater reports whether err (or an error it wraps) has a method
// SnapshotLater() bool returning true, as ErrSnapshotLater has.
func IsSnapshotLater(err error) bool {
	var later interface{ SnapshotLater() bool }
	return errors.As(err, &later) && later.SnapshotLater()
}

// startSnapshot switches a replica that needs compacted entries to receiving
// a snapshot (the newest in storage, or one the SnapshotSource opens), in
// chunks of at most MaxSnapshotChunkBytes, at most SnapshotChunksInFlight of
// them unacknowledged.
func (r *Raft) startSnapshot(to NodeID, pr *progress) {
	if r.cfg.SnapshotSource != nil {
		r.openSnapshot(to, pr)
		return
	}
	meta := r.cfg.Storage.Snapshot()
	if meta.Index == 0 {
		r.log.fail(fmt.Errorf("raft: storage compacted the log below %d but has no snapshot", pr.next))
		return
	}
	pr.becomeSnapshot(meta)
	r.sendSnapshotChunks(to, pr)
}

// openSnapshot starts sending a replica the snapshot the source opens now.
func (r *Raft) openSnapshot(to NodeID, pr *progress) {
	meta, err := r.cfg.SnapshotSource.OpenSnapshot()
	if err != nil {
		// IsSnapshotLater(err) or not, the answer is the same: not
		// now (raft has nowhere to log the difference).
		r.snapshotLater(pr)
		return
	}
	if err := r.checkOpenedSnapshot(meta); err != nil {
		r.log.fail(err)
		return
	}
	meta.Config = meta.Config.Clone()
	pr.becomeSnapshot(meta)
	r.sendSnapshotChunks(to, pr)
}

// snapshotLater leaves a replica the source has no snapshot for now out of
// snapshot state: probing, paused until its next heartbeat response, which
// tries again (one OpenSnapshot per heartbeat interval, not one per
// proposal). A replicating one tries again on its next response.
func (r *Raft) snapshotLater(pr *progress) {
	if pr.state == snapshotState {
		pr.snap = SnapshotMeta{} // it holds none of it: probe after match
		pr.becomeProbe()
	}
	if pr.state == probeState {
		pr.probeSent = true
	}
}

// checkOpenedSnapshot checks the metadata the source opened: a snapshot of
// applied state that the log continues.
func (r *Raft) checkOpenedSnapshot(meta SnapshotMeta) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("raft: snapshot source opened snapshot %d/%d: %s", meta.Index, meta.Term,
			fmt.Sprintf(format, args...))
	}
	switch first := r.log.firstIndex(); {
	case meta.Index == 0 || meta.Index > r.log.applied:
		return bad("applied index is %d", r.log.applied)
	case meta.Index+1 < first:
		return bad("the log starts at %d: entries after it are compacted", first)
	case meta.ConfigIndex > meta.Index:
		return bad("its config is from %d", meta.ConfigIndex)
	}
	if err := meta.Config.Validate(); err != nil {
		return bad("%v", err)
	}
	term, err := r.log.term(meta.Index)
	if err != nil {
		return bad("reading the term of %d: %v", meta.Index, err)
	}
	if term != meta.Term {
		return bad("the log has term %d at %d", term, meta.Index)
	}
	// The membership at the index, where the history still knows it.
	if want, err := r.SnapshotMeta(meta.Index); err == nil &&
		(want.ConfigIndex != meta.ConfigIndex || !slices.Equal(want.Config.Servers, meta.Config.Servers)) {
		return bad("config [%s] from %d, the log has [%s] from %d", meta.Config, meta.ConfigIndex,
			want.Config, want.ConfigIndex)
	}
	return nil
}

// sendSnapshotChunks sends the replica the next chunks of its snapshot
// while fewer than SnapshotChunksInFlight chunks' worth of bytes are
// unacknowledged.
func (r *Raft) sendSnapshotChunks(to NodeID, pr *progress) {
	window := uint64(r.cfg.SnapshotChunksInFlight) * uint64(r.cfg.MaxSnapshotChunkBytes)
	for pr.state == snapshotState && (pr.snapOffset <= pr.snapAcked || pr.snapOffset-pr.snapAcked < window) {
		if !r.sendSnapshotChunk(to, pr) {
			return
		}
	}
}

// sendSnapshotChunk sends the chunk at pr.snapOffset; false when it sent
// none (the last was sent, reading failed, or the transfer restarted or
// stopped, which sent what it had to itself).
func (r *Raft) sendSnapshotChunk(to NodeID, pr *progress) bool {
	if pr.snapDone || r.log.readErr != nil {
		return false
	}
	src := r.cfg.SnapshotSource
	var data []byte
	var last bool
	var err error
	if src != nil {
		data, last, err = src.ReadSnapshot(pr.snap.Index, pr.snapOffset, r.cfg.MaxSnapshotChunkBytes)
	} else {
		data, last, err = r.cfg.Storage.SnapshotChunk(pr.snap.Index, pr.snapOffset, r.cfg.MaxSnapshotChunkBytes)
	}
	switch {
	case errors.Is(err, ErrSnapshotChanged):
		if src != nil && !pr.snapStarted {
			// Gone as soon as opened: opening another now could
			// go on forever.
			r.snapshotLater(pr)
			return false
		}
		r.restartSnapshot(to, pr)
		return false
	case err == nil && len(data) == 0 && !last:
		err = errors.New("empty chunk before the end")
	case err == nil && src != nil && len(data) > r.cfg.MaxSnapshotChunkBytes:
		err = fmt.Errorf("chunk of %d bytes, more than the %d asked", len(data), r.cfg.MaxSnapshotChunkBytes)
	}
	if err != nil {
		r.log.fail(fmt.Errorf("raft: reading snapshot %d at offset %d: %w", pr.snap.Index, pr.snapOffset, err))
		return false
	}
	r.noteSnapshotRead(to, pr.snap.Index, pr.snapOffset+uint64(len(data)))
	meta := pr.snap
	pr.snapSeq++
	r.send(Message{Type: MsgSnap, To: to, Snapshot: &meta, Offset: pr.snapOffset, Data: data, Done: last, Context: pr.snapSeq})
	pr.snapOffset += uint64(len(data))
	pr.snapDone = last
	pr.snapIdle = 0
	pr.snapStarted = true
	return true
}

// restartSnapshot starts over with the newest snapshot after the one being
// sent was replaced. A source may open the same index again.
func (r *Raft) restartSnapshot(to NodeID, pr *progress) {
	if r.cfg.SnapshotSource == nil && r.cfg.Storage.Snapshot().Index == pr.snap.Index {
		r.log.fail(fmt.Errorf("raft: storage reports its newest snapshot %d replaced", pr.snap.Index))
		return
	}
	r.startSnapshot(to, pr)
}

// noteSnapshotRead records that bytes up to end of snapshot index were read
// to send to replica to. From storage, every replica gets the newest
// snapshot: snapRead follows it. From a source, replicas may get different
// snapshots: srcRead follows the highest index read for each replica in this
// leadership (kept when it is removed: its late responses may follow), and
// responses about a lower one are not checked.
func (r *Raft) noteSnapshotRead(to NodeID, index, end uint64) {
	if r.cfg.SnapshotSource != nil {
		rd := r.srcRead[to]
		switch {
		case index > rd.index:
			rd = snapshotRead{index: index, end: end}
		case index == rd.index:
			rd.end = max(rd.end, end)
		default:
			return
		}
		if r.srcRead == nil {
			r.srcRead = map[NodeID]snapshotRead{}
		}
		r.srcRead[to] = rd
		return
	}
	if r.snapRead.index != index {
		r.snapRead = snapshotRead{index: index}
	}
	r.snapRead.end = max(r.snapRead.end, end)
}

// snapshotReadFor is what was read of a snapshot for sending to replica
// from in this leadership: it cannot acknowledge more of that index.
func (r *Raft) snapshotReadFor(from NodeID) snapshotRead {
	if r.cfg.SnapshotSource != nil {
		return r.srcRead[from]
	}
	return r.snapRead
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
	src := r.cfg.SnapshotSource
	if src == nil && m.Index != r.snapRead.index {
		// A newer snapshot was read since, so this one is gone: the
		// follower gets the newest unless it is getting all of this one.
		if !pr.snapDone || m.Reject {
			r.startSnapshot(m.From, pr)
		}
		return
	}
	off := m.Offset
	if src != nil && off > pr.snapOffset {
		// A late response, maybe about an earlier opening of this
		// index, whose bytes may differ: go on from what this opening
		// sent (ReadSnapshot never reads past it).
		off = pr.snapOffset
	}
	switch {
	case m.Reject && m.Context <= pr.snapRewindSeq:
		// A refusal of a chunk sent before the transfer last went back
		// (another chunk in flight behind the same gap, or older): going
		// back resent it.
		return
	case m.Reject:
		// The follower lost a chunk (it expects off), or dropped what
		// it had (off 0): go on from there.
		pr.snapOffset, pr.snapAcked, pr.snapDone, pr.snapRewindSeq = off, off, false, pr.snapSeq
	case off > pr.snapAcked:
		pr.snapAcked = off
	default:
		return // an acknowledgement overtaken by a later one
	}
	r.sendSnapshotChunks(m.From, pr)
}

// handleSnapshot receives one chunk of a snapshot from the leader. Chunks
// must arrive in order; the follower tells the leader the offset it expects
// next. The last chunk installs the snapshot. Without a SnapshotSink the
// chunks are assembled in memory; with one, each chunk goes to the sink
// (and a chunk at offset 0 starts over, even of the same snapshot: the
// leader may have opened it anew; but not a copy of the chunk that started
// it, or an older one, by the leader's chunk numbers in Context) and raft
// keeps only the count of bytes. Every response echoes the chunk's number.
func (r *Raft) handleSnapshot(m Message) {
	meta := *m.Snapshot
	if meta.Index <= r.log.committed || r.log.matchTerm(meta.Index, meta.Term) {
		// We already hold everything the snapshot covers.
		if r.log.matchTerm(meta.Index, meta.Term) {
			r.matched = max(r.matched, meta.Index)
			r.log.commitTo(meta.Index)
		}
		r.dropIncoming()
		r.send(Message{Type: MsgSnapResp, To: m.From, Index: meta.Index, Offset: m.Offset + uint64(len(m.Data)), Context: m.Context})
		r.pendingAck = true
		r.maybeAck()
		return
	}
	sink := r.cfg.SnapshotSink
	in := r.incoming
	same := in != nil && in.meta.Index == meta.Index && in.meta.Term == meta.Term
	// With a sink, a chunk at offset 0 starts over unless it is a copy of
	// (or older than) the one that started this transfer.
	restart := sink != nil && m.Offset == 0 &&
		!(same && m.From == in.from && m.Term == in.term && m.Context != 0 && m.Context <= in.seq)
	if !same || restart {
		if m.Offset != 0 {
			r.send(Message{Type: MsgSnapResp, To: m.From, Index: meta.Index, Offset: 0, Reject: true, Context: m.Context})
			return
		}
		r.dropIncoming()
		in = &incomingSnapshot{meta: meta, from: m.From, term: m.Term, seq: m.Context}
		r.incoming = in
	}
	if m.Offset != in.received {
		// Past what this node expects: a chunk before it was lost (or is
		// late), and the leader resends from what this node expects. Before
		// it: a duplicate, or a late resend; only say how far it got.
		r.send(Message{Type: MsgSnapResp, To: m.From, Index: meta.Index, Offset: in.received, Reject: m.Offset > in.received, Context: m.Context})
		return
	}
	if sink != nil {
		if err := sink.WriteSnapshotChunk(meta, m.Offset, m.Data, m.Done); err != nil {
			// The sink dropped it: start over.
			r.incoming = nil
			r.send(Message{Type: MsgSnapResp, To: m.From, Index: meta.Index, Offset: 0, Reject: true, Context: m.Context})
			return
		}
		in.received += uint64(len(m.Data))
	} else {
		in.buf = append(in.buf, m.Data...)
		in.received = uint64(len(in.buf))
	}
	r.send(Message{Type: MsgSnapResp, To: m.From, Index: meta.Index, Offset: in.received, Context: m.Context})
	if !m.Done {
		return
	}
	r.incoming = nil
	// With a sink, Data is nil: the caller installs what the sink holds.
	snap := &Snapshot{Meta: meta, Data: in.buf}
	snap.Meta.Config = meta.Config.Clone()
	r.log.restore(snap)
	if !mutant.On(mutant.RaftSnapshotKeepsConfig) {
		r.setSnapshotConfig(snap.Meta)
	}
	r.matched = meta.Index
	r.pendingAck = true
}

// dropIncoming forgets a partly received snapshot, telling the sink.
func (r *Raft) dropIncoming() {
	if r.incoming != nil && r.cfg.SnapshotSink != nil {
		r.cfg.SnapshotSink.AbortSnapshot()
	}
	r.incoming = nil
}
