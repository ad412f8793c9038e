// Package mutant is the catalogue of deliberate bugs ("mutants") planted in
// the code behind named switches, so tests can show that the simulator and
// the unit tests catch each of them.
//
// Every switch is inert unless a test activates it: production code checks
// On(bug) at the one place the bug lives, and On is false unless Activate
// was called. Nothing outside tests and the simulator's catalogue run calls
// Activate. At most one bug is active in a process at a time (the
// simulator's parallel seeds share it, see Activate).
package mutant

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// Bug names one deliberate bug. The zero value is no bug.
type Bug uint32

// The catalogue. Each constant's comment says what correct rule it breaks;
// Catalogue describes them for people and tools.
const (
	None Bug = iota

	// raft
	RaftDoubleVote           // grant every vote, even after voting in the term
	RaftCommitWithoutQuorum  // leader commits what it persisted alone
	RaftFigure8              // leader commits an earlier term's entry by counting replicas
	RaftVoteNotPersisted     // a vote-only hard-state change is never handed out to be persisted
	RaftPreVoteRejectTerm    // the higher term carried by a pre-vote rejection is ignored
	RaftConfigNoRollback     // truncating a config entry does not roll back the configuration in force
	RaftReadIndexNoQuorum    // ReadIndex confirmed by a single acknowledgement
	RaftQuorumEven           // quorum is one short for even voter counts
	RaftNoPreVote            // elections start without a pre-vote
	RaftVoteIgnoresLog       // votes granted without the up-to-date check
	RaftAppendIgnoresPrev    // appends accepted without matching the previous entry
	RaftAckBeforePersist     // follower acknowledges entries not yet durable
	RaftCommitBeyondMatch    // heartbeats carry the leader's commit uncapped: a follower commits past what matches
	RaftReadBeforeTermCommit // ReadIndex served before the leader committed in its term
	RaftSnapshotKeepsConfig  // installing a snapshot keeps the replaced log's configuration
	RaftRemovedNoCampaign    // a voter removed by an uncommitted change stops campaigning
	RaftStrangerVotesDropped // vote requests from a server never seen in a membership are dropped
	RaftLeaseTooLong         // the leader's read lease is twice the vote lease, ignoring drift
	RaftLeaseFromTicks       // the vote lease is counted in ticks, not on the clock (a tick burst ends it)

	// loop
	LoopReadBeforeApply  // a linearizable read runs before the state machine applied its read index
	LoopReplyBeforeApply // a write is acknowledged when proposed, before it commits

	// wal
	WALNoFsync          // appended entries are not synced
	WALNoReadCRC        // entries read back are not checked against their checksum
	WALHardStateNoSync  // term and vote are written but not synced
	WALRecoverKeepsTorn // recovery keeps a torn batch at the end of the last segment

	// fsm
	FSMDedupIgnored     // a retried request already applied applies again
	FSMRestoreKeepsOld  // restoring a snapshot keeps the rows written after it
	FSMRecordBeforeSync // a checkpoint records its file's index before syncing the file

	// vfs
	VFSCaptureDropsPage // the capture of a write transaction omits one of its pages
	VFSCaptureNoSize    // the capture loses the database size of the commit frame

	// wire
	WirePeerDropsCommit // the peer codec does not carry a message's commit index

	numBugs
)

// Info describes one catalogued bug.
type Info struct {
	Bug  Bug
	Name string // the switch's name, as tools spell it: "raft-figure8"
	Pkg  string // the package the bug lives in
	Rule string // the rule it breaks
}

// Catalogue lists every bug, in constant order.
var Catalogue = []Info{
	{RaftDoubleVote, "raft-double-vote", "raft", "a voter grants at most one vote per term"},
	{RaftCommitWithoutQuorum, "raft-commit-without-quorum", "raft", "an entry commits once a quorum holds it"},
	{RaftFigure8, "raft-figure8", "raft", "a leader commits by counting replicas only entries of its own term (Raft §5.4.2, Figure 8)"},
	{RaftVoteNotPersisted, "raft-vote-not-persisted", "raft", "a vote is durable before the grant is sent"},
	{RaftPreVoteRejectTerm, "raft-prevote-reject-term", "raft", "a pre-vote rejection carrying a higher term makes the pre-candidate adopt it"},
	{RaftConfigNoRollback, "raft-config-no-rollback", "raft", "the configuration in force is the last configuration entry in the log (rolled back when truncated)"},
	{RaftReadIndexNoQuorum, "raft-readindex-no-quorum", "raft", "a read index is confirmed by a quorum of heartbeat acknowledgements"},
	{RaftQuorumEven, "raft-quorum-even", "raft", "a quorum of n voters is n/2+1 (also for even n)"},
	{RaftNoPreVote, "raft-no-prevote", "raft", "a node raises its term to campaign only after a pre-vote quorum"},
	{RaftVoteIgnoresLog, "raft-vote-ignores-log", "raft", "a vote goes only to a candidate whose log is at least as up to date (§5.4.1)"},
	{RaftAppendIgnoresPrev, "raft-append-ignores-prev", "raft", "a follower appends only after the previous entry matches (log matching)"},
	{RaftAckBeforePersist, "raft-ack-before-persist", "raft", "a follower acknowledges only durable entries"},
	{RaftCommitBeyondMatch, "raft-commit-beyond-match", "raft", "a follower's commit index never passes what it verified against the leader (heartbeats carry the commit capped at the follower's match)"},
	{RaftReadBeforeTermCommit, "raft-read-before-term-commit", "raft", "a new leader serves reads only after committing an entry of its term"},
	{RaftSnapshotKeepsConfig, "raft-snapshot-keeps-config", "raft", "installing a snapshot makes its membership the configuration in force"},
	{RaftRemovedNoCampaign, "raft-removed-no-campaign", "raft", "a voter removed or demoted by an uncommitted change still campaigns (dissertation §4.2.2)"},
	{RaftStrangerVotesDropped, "raft-stranger-votes-dropped", "raft", "vote requests are answered without consulting the configuration (dissertation §4.2)"},
	{RaftLeaseTooLong, "raft-lease-too-long", "raft", "the leader's read lease ends before any voter's vote lease can (V(1-d)/(1+d))"},
	{RaftLeaseFromTicks, "raft-lease-from-ticks", "raft", "the vote lease is measured on the clock, so late or bursting ticks cannot end it early"},
	{LoopReadBeforeApply, "loop-read-before-apply", "loop", "a linearizable read runs once the state machine applied its read index"},
	{LoopReplyBeforeApply, "loop-reply-before-apply", "loop", "a write is acknowledged only after it committed and applied"},
	{WALNoFsync, "wal-no-fsync", "wal", "appended entries are synced before they count as durable"},
	{WALNoReadCRC, "wal-no-read-crc", "wal", "an entry read back is checked against its checksum"},
	{WALHardStateNoSync, "wal-hardstate-no-sync", "wal", "term and vote are synced before they count as durable"},
	{WALRecoverKeepsTorn, "wal-recover-keeps-torn", "wal", "recovery cuts the log at the first torn or corrupt batch of the last segment"},
	{FSMDedupIgnored, "fsm-dedup-ignored", "fsm", "a retried request applies once"},
	{FSMRestoreKeepsOld, "fsm-restore-keeps-old", "fsm", "restoring a snapshot replaces the whole database"},
	{FSMRecordBeforeSync, "fsm-record-before-sync", "fsm", "a checkpoint records the index its file reflects only after syncing the file"},
	{VFSCaptureDropsPage, "vfs-capture-drops-page", "vfs", "the capture of a transaction holds every page it wrote"},
	{VFSCaptureNoSize, "vfs-capture-no-size", "vfs", "the capture carries the database size of the commit frame"},
	{WirePeerDropsCommit, "wire-peer-drops-commit", "wire", "the peer codec carries every field of a message"},
}

func init() {
	if len(Catalogue) != int(numBugs)-1 {
		panic(fmt.Sprintf("mutant: catalogue has %d entries, %d bugs declared", len(Catalogue), numBugs-1))
	}
	for i, in := range Catalogue {
		if in.Bug != Bug(i+1) {
			panic(fmt.Sprintf("mutant: catalogue entry %q out of order", in.Name))
		}
	}
}

// String is the bug's catalogue name ("none" for None).
func (b Bug) String() string {
	if b == None || b >= numBugs {
		return "none"
	}
	return Catalogue[b-1].Name
}

// Lookup finds a bug by its catalogue name.
func Lookup(name string) (Bug, bool) {
	for _, in := range Catalogue {
		if in.Name == name {
			return in.Bug, true
		}
	}
	return None, false
}

var (
	active atomic.Uint32 // the active Bug; read on hot paths
	mu     sync.Mutex
	users  int
)

// On reports whether bug b is active. It is one atomic load.
func On(b Bug) bool { return active.Load() == uint32(b) }

// Active returns the active bug (None if none).
func Active() Bug { return Bug(active.Load()) }

// Activate turns bug b on for the whole process until every release
// returned for it was called. Several users may activate the same bug at
// once (the simulator's parallel seeds); activating a different bug while
// one is active is an error. Activate(None) is a no-op.
func Activate(b Bug) (release func(), err error) {
	if b == None {
		return func() {}, nil
	}
	if b >= numBugs {
		return nil, fmt.Errorf("mutant: unknown bug %d", b)
	}
	mu.Lock()
	defer mu.Unlock()
	if cur := Bug(active.Load()); cur != None && cur != b {
		return nil, fmt.Errorf("mutant: %s is active, cannot activate %s", cur, b)
	}
	active.Store(uint32(b))
	users++
	var once sync.Once
	return func() {
		once.Do(func() {
			mu.Lock()
			defer mu.Unlock()
			users--
			if users == 0 {
				active.Store(uint32(None))
			}
		})
	}, nil
}

// T is the part of testing.TB that Use needs.
type T interface {
	Helper()
	Fatal(args ...any)
	Cleanup(func())
}

// Use activates bug b for the rest of test t (released by t's cleanup).
func Use(t T, b Bug) {
	t.Helper()
	release, err := Activate(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
}
