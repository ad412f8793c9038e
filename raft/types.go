package raft

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

// NodeID names a server. Zero means "none".
type NodeID uint64

// None is the NodeID meaning "no node".
const None NodeID = 0

// EntryType says what an Entry carries.
type EntryType uint8

const (
	// EntryNormal carries application data (a state machine command).
	EntryNormal EntryType = iota + 1
	// EntryNoop is appended by every new leader; it carries nothing.
	EntryNoop
	// EntryConfig carries an encoded Membership (see EncodeMembership).
	EntryConfig
)

func (t EntryType) String() string {
	switch t {
	case EntryNormal:
		return "normal"
	case EntryNoop:
		return "noop"
	case EntryConfig:
		return "config"
	}
	return fmt.Sprintf("EntryType(%d)", uint8(t))
}

// Entry is one log entry. Data is owned by whoever holds the entry; raft never
// modifies the Data of an entry once appended.
type Entry struct {
	Index uint64
	Term  uint64
	Type  EntryType
	Data  []byte
}

func (e Entry) size() uint64 { return uint64(len(e.Data)) + entryOverheadBytes }

// entryOverheadBytes is what an entry costs in a message beyond its data
// (index, term, type and length), used for batching limits.
const entryOverheadBytes = 24

// HardState is what must be durable before any message of the same Update is
// sent: the current term and the vote cast in it. They are always written
// together, atomically.
type HardState struct {
	Term uint64
	Vote NodeID
}

// Role of a server in the membership.
type Role uint8

const (
	// Voter replicates the log and counts in quorums and elections.
	Voter Role = iota + 1
	// Standby replicates the log but neither votes nor counts in quorums.
	Standby
	// Spare neither replicates nor votes: it is a member in name only, ready
	// to be promoted.
	Spare
)

func (r Role) String() string {
	switch r {
	case Voter:
		return "voter"
	case Standby:
		return "standby"
	case Spare:
		return "spare"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Server is one member of the cluster.
type Server struct {
	ID      NodeID
	Address string
	Role    Role
}

// Membership is the cluster configuration: its servers sorted by ID.
type Membership struct {
	Servers []Server
}

// Clone returns a deep copy.
func (m Membership) Clone() Membership {
	return Membership{Servers: append([]Server(nil), m.Servers...)}
}

// Get returns the server with the given id.
func (m Membership) Get(id NodeID) (Server, bool) {
	for _, s := range m.Servers {
		if s.ID == id {
			return s, true
		}
	}
	return Server{}, false
}

// RoleOf returns the role of id, or 0 if id is not a member.
func (m Membership) RoleOf(id NodeID) Role {
	s, _ := m.Get(id)
	return s.Role
}

// Voters returns the IDs of the voters in ascending order.
func (m Membership) Voters() []NodeID {
	var out []NodeID
	for _, s := range m.Servers {
		if s.Role == Voter {
			out = append(out, s.ID)
		}
	}
	return out
}

// Quorum is the number of voters that form a majority.
func (m Membership) Quorum() int {
	if mutant.On(mutant.RaftQuorumEven) {
		return (len(m.Voters()) + 1) / 2
	}
	return len(m.Voters())/2 + 1
}

func (m Membership) String() string {
	var b strings.Builder
	for i, s := range m.Servers {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d:%s", s.ID, s.Role)
	}
	return b.String()
}

// Validate checks ids are non-zero, unique and sorted, roles are known, and
// there is at least one voter.
func (m Membership) Validate() error {
	if len(m.Voters()) == 0 {
		return errors.New("raft: membership has no voter")
	}
	for i, s := range m.Servers {
		if s.ID == None {
			return errors.New("raft: membership has a server with id 0")
		}
		if s.Role < Voter || s.Role > Spare {
			return fmt.Errorf("raft: server %d has unknown role %d", s.ID, s.Role)
		}
		if i > 0 && m.Servers[i-1].ID >= s.ID {
			return fmt.Errorf("raft: membership ids not sorted and unique at %d", s.ID)
		}
	}
	return nil
}

func (m *Membership) sortServers() {
	sort.Slice(m.Servers, func(i, j int) bool { return m.Servers[i].ID < m.Servers[j].ID })
}

// SnapshotMeta describes a snapshot: the last index and term it covers and the
// membership in force at that index.
type SnapshotMeta struct {
	Index       uint64
	Term        uint64
	Config      Membership
	ConfigIndex uint64 // index of the entry that set Config
}

// Snapshot is a complete snapshot received from a leader, to install. With
// a Config.SnapshotSink, Data is nil: the sink received the data and made
// it ready to install.
type Snapshot struct {
	Meta SnapshotMeta
	Data []byte
}

// MessageType enumerates the peer messages.
type MessageType uint8

const (
	MsgApp MessageType = iota + 1
	MsgAppResp
	MsgVote
	MsgVoteResp
	MsgPreVote
	MsgPreVoteResp
	MsgHeartbeat
	MsgHeartbeatResp
	MsgSnap
	MsgSnapResp
	MsgTimeoutNow
	MsgReadIndex
	MsgReadIndexResp
)

var msgNames = [...]string{"", "MsgApp", "MsgAppResp", "MsgVote", "MsgVoteResp", "MsgPreVote",
	"MsgPreVoteResp", "MsgHeartbeat", "MsgHeartbeatResp", "MsgSnap", "MsgSnapResp", "MsgTimeoutNow",
	"MsgReadIndex", "MsgReadIndexResp"}

func (t MessageType) String() string {
	if int(t) < len(msgNames) && t != 0 {
		return msgNames[t]
	}
	return fmt.Sprintf("MessageType(%d)", uint8(t))
}

// Message is a peer message. Which fields matter depends on Type:
//
//	MsgApp:           Index/LogTerm of the entry preceding Entries, Entries, Commit
//	MsgAppResp:       Index = last index known to match (or, with Reject, the
//	                  rejected Index) and RejectHint/LogTerm = the follower's
//	                  hint for fast back-off
//	MsgVote/PreVote:  Index/LogTerm = candidate's last entry; Transfer when
//	                  the election was asked for by a leadership transfer
//	MsgVoteResp/...:  Reject; a rejection's RejectHint is the NodeID of the
//	                  leader the responder follows in its term (0: none)
//	MsgHeartbeat:     Commit, Context (ReadIndex round)
//	MsgHeartbeatResp: Context
//	MsgSnap:          Snapshot metadata, Offset and Data of one chunk, Done on
//	                  the last chunk, Context = the chunk's number (counted
//	                  per replica by the leader)
//	MsgSnapResp:      Snapshot.Index and Offset = next byte the follower wants
//	                  (Reject: a chunk before the one answered is missing, or
//	                  with Offset 0 the follower dropped the transfer);
//	                  Context echoed
//	MsgTimeoutNow:    nothing
//	MsgReadIndex:     Context = the asker's batch of reads (a follower or
//	                  standby asks its leader for a read index)
//	MsgReadIndexResp: Context echoed; Index = the read index, or Reject
type Message struct {
	Type       MessageType
	From, To   NodeID
	Term       uint64
	LogTerm    uint64
	Index      uint64
	Entries    []Entry
	Commit     uint64
	Reject     bool
	RejectHint uint64
	Context    uint64
	Transfer   bool
	Snapshot   *SnapshotMeta
	Offset     uint64
	Data       []byte
	Done       bool
}

func (m Message) String() string {
	s := fmt.Sprintf("%s %d->%d t%d", m.Type, m.From, m.To, m.Term)
	switch m.Type {
	case MsgApp:
		s += fmt.Sprintf(" prev=%d/%d n=%d commit=%d", m.Index, m.LogTerm, len(m.Entries), m.Commit)
	case MsgAppResp:
		s += fmt.Sprintf(" index=%d reject=%v hint=%d/%d", m.Index, m.Reject, m.RejectHint, m.LogTerm)
	case MsgVote, MsgPreVote:
		s += fmt.Sprintf(" last=%d/%d transfer=%v", m.Index, m.LogTerm, m.Transfer)
	case MsgVoteResp, MsgPreVoteResp:
		s += fmt.Sprintf(" reject=%v", m.Reject)
	case MsgHeartbeat:
		s += fmt.Sprintf(" commit=%d ctx=%d", m.Commit, m.Context)
	case MsgHeartbeatResp:
		s += fmt.Sprintf(" ctx=%d", m.Context)
	case MsgSnap:
		s += fmt.Sprintf(" snap=%d/%d off=%d n=%d done=%v", m.Snapshot.Index, m.Snapshot.Term, m.Offset, len(m.Data), m.Done)
	case MsgSnapResp:
		s += fmt.Sprintf(" index=%d off=%d reject=%v", m.Index, m.Offset, m.Reject)
	case MsgReadIndex:
		s += fmt.Sprintf(" ctx=%d", m.Context)
	case MsgReadIndexResp:
		s += fmt.Sprintf(" ctx=%d index=%d reject=%v", m.Context, m.Index, m.Reject)
	}
	return s
}

// ReadState is the outcome of a ReadIndex request: once the local applied
// index reaches Index, a read sees every write committed before the request.
type ReadState struct {
	Index   uint64
	Context uint64
}

// StateType is a node's current state in the protocol.
type StateType uint8

const (
	StateFollower StateType = iota + 1
	StatePreCandidate
	StateCandidate
	StateLeader
)

func (s StateType) String() string {
	switch s {
	case StateFollower:
		return "follower"
	case StatePreCandidate:
		return "precandidate"
	case StateCandidate:
		return "candidate"
	case StateLeader:
		return "leader"
	}
	return fmt.Sprintf("StateType(%d)", uint8(s))
}

// NoticeKind says what a Notice reports.
type NoticeKind uint8

const (
	// NoticeConfigAppended: a membership change was appended at Index/Term
	// (for a promotion to voter, after the catch-up rounds).
	NoticeConfigAppended NoticeKind = iota + 1
	// NoticeConfigFailed: a membership change was abandoned (Err says why).
	NoticeConfigFailed
	// NoticeTransferFailed: a leadership transfer did not complete in time.
	NoticeTransferFailed
	// NoticeReadFailed: a ReadIndex request (Context) was dropped because
	// leadership was lost; the caller must retry elsewhere.
	NoticeReadFailed
)

// Notice reports the asynchronous outcome of a request.
type Notice struct {
	Kind    NoticeKind
	Index   uint64
	Term    uint64
	Context uint64
	Err     error
}

// Update is the batch of effects raft hands to its caller after one or more
// inputs. The caller must honour these ordering rules:
//
//  1. Snapshot (if any) is installed and made durable first, replacing the
//     log up to its index; the caller reports it with Persisted(meta.Index,
//     meta.Term). With a SnapshotSink its Data is nil: what is installed
//     is the snapshot the sink accepted last (done) with this metadata.
//  2. HardState (if any) must be durable before any of Messages is sent.
//  3. Entries must be handed to durable storage in order, after Snapshot; an
//     entry whose index is at or below the storage's last index replaces that
//     suffix (truncate, then append). When an append and its fsync complete,
//     the caller reports Persisted(lastIndex, lastTerm) and must already make
//     those entries readable through Storage. Messages do not wait for
//     Entries: a leader sends to followers while its own write is in flight.
//  4. CommittedEntries are applied to the state machine in order. They are
//     all durable locally (raft never hands out an entry to apply before the
//     caller reported it persisted).
//  5. ReadStates are answered once the applied index reaches their Index.
//  6. StorageErr, when set, is fatal for this node: see the field.
//
// Slices in an Update are owned by the caller once returned; raft keeps its
// own references to entries but never modifies them.
type Update struct {
	HardState        *HardState
	Snapshot         *Snapshot
	Entries          []Entry
	Messages         []Message
	CommittedEntries []Entry
	ReadStates       []ReadState
	Notices          []Notice
	// StorageErr is the first error Storage returned on a read raft cannot
	// do without: Term, Entries or SnapshotChunk (or SnapshotSource's
	// ReadSnapshot) failing with anything but ErrCompacted (below the
	// first index) or ErrSnapshotChanged, or answering against the Storage
	// (or SnapshotSource) contract, metadata from OpenSnapshot that raft
	// cannot send included (OpenSnapshot's errors are not failures).
	// It comes in exactly one Update; the failure is sticky. By then raft
	// has stepped down if it led, and from then on sends no appends or
	// snapshots, starts no election, grants no vote and hands out no
	// committed entries, so the node cannot harm the cluster, but cannot
	// make progress either. The caller must treat it as a storage
	// failure: stop the node (after honouring the rest of this Update,
	// HardState before Messages as always) and restart it from durable
	// state once storage is repaired.
	StorageErr error
}

// IsEmpty reports whether the Update carries nothing.
func (u *Update) IsEmpty() bool {
	return u.HardState == nil && u.Snapshot == nil && len(u.Entries) == 0 && len(u.Messages) == 0 &&
		len(u.CommittedEntries) == 0 && len(u.ReadStates) == 0 && len(u.Notices) == 0 && u.StorageErr == nil
}

// Errors returned by the request methods.
var (
	ErrNotLeader          = errors.New("raft: not the leader")
	ErrTransferInProgress = errors.New("raft: leadership transfer in progress")
	ErrConfigInProgress   = errors.New("raft: a membership change is already in progress")
	// ErrNoLiveQuorum refuses a change that would leave too few responsive
	// voters to commit anything.
	ErrNoLiveQuorum     = errors.New("raft: membership change refused: it would leave no responsive quorum")
	ErrNotReady         = errors.New("raft: leader has not yet committed an entry in its term")
	ErrProposalTooLarge = errors.New("raft: proposal larger than the maximum message size")
	ErrTooManyPending   = errors.New("raft: too many uncommitted bytes")
	ErrUnknownNode      = errors.New("raft: unknown node")
	ErrBadConfigChange  = errors.New("raft: invalid membership change")
	ErrCatchUpFailed    = errors.New("raft: node did not catch up in time for promotion")
	ErrLeadershipLost   = errors.New("raft: leadership lost")
	ErrStopped          = errors.New("raft: node stopped after a storage failure")
)

// ErrCompacted is returned by Storage when the requested index is below its
// first available index (it was compacted into a snapshot).
var ErrCompacted = errors.New("raft: requested index is compacted")

// ErrUnavailable is returned by Storage when the requested index is beyond
// its last index.
var ErrUnavailable = errors.New("raft: requested entry is unavailable")

// ErrSnapshotChanged is returned by Storage.SnapshotChunk when the snapshot
// at the requested index is no longer the current one, and by
// SnapshotSource.ReadSnapshot when that snapshot is no longer available.
var ErrSnapshotChanged = errors.New("raft: snapshot changed")
