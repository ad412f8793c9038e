package loop

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/dqlite-go/dqlite/raft"
)

// memStorage is a raft.MemoryStorage made safe for an append running
// beside the loop's reads, with an injectable write failure.
type memStorage struct {
	mu sync.Mutex
	*raft.MemoryStorage
	failWrites error
	failReads  error // Term and Entries fail with it
}

func (s *memStorage) Term(i uint64) (uint64, error) {
	if s.failReads != nil {
		return 0, s.failReads
	}
	return s.MemoryStorage.Term(i)
}

func (s *memStorage) Entries(lo, hi, maxBytes uint64) ([]raft.Entry, error) {
	if s.failReads != nil {
		return nil, s.failReads
	}
	return s.MemoryStorage.Entries(lo, hi, maxBytes)
}

func (s *memStorage) SetHardState(hs raft.HardState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.MemoryStorage.SetHardState(hs)
	return nil
}

func (s *memStorage) InstallSnapshot(snap raft.Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ApplySnapshot(snap)
}

func (s *memStorage) CreateSnapshot(meta raft.SnapshotMeta, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.MemoryStorage.CreateSnapshot(meta, data)
}

func (s *memStorage) Append(ents []raft.Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failWrites != nil {
		return s.failWrites
	}
	return s.MemoryStorage.Append(ents)
}

// kv is a tiny state machine: "k=v" sets, the result is the number of keys.
type kv struct{ m map[string]string }

func (k *kv) Apply(e raft.Entry) (any, error) {
	key, val, ok := strings.Cut(string(e.Data), "=")
	if !ok {
		return nil, fmt.Errorf("bad command %q", e.Data)
	}
	k.m[key] = val
	return len(k.m), nil
}

func (k *kv) Snapshot() ([]byte, error) {
	var keys []string
	for key := range k.m {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, key := range keys {
		fmt.Fprintf(&b, "%s=%s\n", key, k.m[key])
	}
	return []byte(b.String()), nil
}

func (k *kv) Restore(data []byte) error {
	k.m = map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if key, val, ok := strings.Cut(line, "="); ok {
			k.m[key] = val
		}
	}
	return nil
}

// cluster wires loops together in one goroutine: messages are delivered
// and writes performed by run, in a deterministic order.
type cluster struct {
	t       *testing.T
	loops   map[raft.NodeID]*Loop
	stores  map[raft.NodeID]*memStorage
	fsms    map[raft.NodeID]*kv
	msgs    []raft.Message
	writes  map[raft.NodeID]*WriteJob
	replies map[uint64]Reply
	down    map[raft.NodeID]bool
	thresh  uint64
}

func newCluster(t *testing.T, n int, thresh uint64) *cluster {
	c := &cluster{t: t, loops: map[raft.NodeID]*Loop{}, stores: map[raft.NodeID]*memStorage{},
		fsms: map[raft.NodeID]*kv{}, writes: map[raft.NodeID]*WriteJob{}, replies: map[uint64]Reply{},
		down: map[raft.NodeID]bool{}, thresh: thresh}
	var m raft.Membership
	for i := 1; i <= n; i++ {
		m.Servers = append(m.Servers, raft.Server{ID: raft.NodeID(i), Role: raft.Voter})
	}
	for i := 1; i <= n; i++ {
		id := raft.NodeID(i)
		s := &memStorage{MemoryStorage: raft.NewMemoryStorage()}
		if err := s.MemoryStorage.Append([]raft.Entry{raft.BootstrapEntry(m)}); err != nil {
			t.Fatal(err)
		}
		s.MemoryStorage.SetHardState(raft.HardState{Term: 1})
		c.stores[id] = s
		c.start(id)
	}
	return c
}

func (c *cluster) start(id raft.NodeID) {
	c.fsms[id] = &kv{m: map[string]string{}}
	l, err := New(Config{Raft: raft.Config{ID: id, ElectionTicks: 10, HeartbeatTicks: 1},
		Storage: c.stores[id], FSM: c.fsms[id], Rand: rand.New(rand.NewPCG(uint64(id), 7)),
		SnapshotThreshold: c.thresh, RequestTimeoutTicks: 50})
	if err != nil {
		c.t.Fatal(err)
	}
	c.loops[id] = l
	c.down[id] = false
}

func (c *cluster) crash(id raft.NodeID) {
	c.down[id] = true
	delete(c.writes, id)
}

func (c *cluster) ids() []raft.NodeID {
	var ids []raft.NodeID
	for id := range c.loops {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func (c *cluster) take(id raft.NodeID, out Output) {
	c.msgs = append(c.msgs, out.Messages...)
	if out.Write != nil {
		if c.writes[id] != nil {
			c.t.Fatalf("node %d: second write while one is in flight", id)
		}
		c.writes[id] = out.Write
	}
	for _, r := range out.Replies {
		c.replies[r.ID] = r
	}
}

// run delivers messages and completes writes until quiet.
func (c *cluster) run() {
	for i := 0; i < 10000; i++ {
		moved := false
		for _, id := range c.ids() {
			if job := c.writes[id]; job != nil && !c.down[id] {
				delete(c.writes, id)
				c.take(id, c.loops[id].WriteDone(job, c.stores[id].Append(job.Entries)))
				moved = true
			}
		}
		msgs := c.msgs
		c.msgs = nil
		for _, m := range msgs {
			if c.down[m.To] || c.down[m.From] {
				continue
			}
			out, err := c.loops[m.To].Step(m)
			if err != nil {
				c.t.Fatal(err)
			}
			c.take(m.To, out)
			moved = true
		}
		if !moved {
			return
		}
	}
	c.t.Fatal("cluster did not settle")
}

func (c *cluster) tick(n int) {
	for i := 0; i < n; i++ {
		for _, id := range c.ids() {
			if !c.down[id] {
				c.take(id, c.loops[id].Tick())
			}
		}
		c.run()
	}
}

func (c *cluster) leader() raft.NodeID {
	for _, id := range c.ids() {
		if !c.down[id] && c.loops[id].Raft().Status().State == raft.StateLeader {
			return id
		}
	}
	return raft.None
}

func (c *cluster) elect() raft.NodeID {
	for i := 0; i < 100 && c.leader() == raft.None; i++ {
		c.tick(1)
	}
	// Let the new leader's no-op commit.
	c.tick(2)
	if c.leader() == raft.None {
		c.t.Fatal("no leader elected")
	}
	return c.leader()
}

// TestWritesAndReads checks proposals return their applied result on the
// leader, reads see every acknowledged write, and all replicas converge.
func TestWritesAndReads(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	for i := 1; i <= 20; i++ {
		c.take(lead, c.loops[lead].Propose(uint64(i), []byte(fmt.Sprintf("k%d=v%d", i%5, i))))
	}
	c.run()
	for i := 1; i <= 20; i++ {
		r, ok := c.replies[uint64(i)]
		if !ok || r.Err != nil {
			t.Fatalf("write %d: %+v %v", i, r, ok)
		}
	}
	c.take(lead, c.loops[lead].Read(100, func() (any, error) { return c.fsms[lead].m["k0"], nil }))
	c.tick(1)
	if r := c.replies[100]; r.Err != nil || r.Result != "v20" {
		t.Fatalf("read: %+v", r)
	}
	c.tick(2)
	for _, id := range c.ids() {
		if got, _ := c.fsms[id].Snapshot(); string(got) != "k0=v20\nk1=v16\nk2=v17\nk3=v18\nk4=v19\n" {
			t.Fatalf("node %d state %q", id, got)
		}
	}
	// A follower refuses writes and reads.
	f := raft.NodeID(1 + lead%3)
	c.take(f, c.loops[f].Propose(200, []byte("a=b")))
	c.take(f, c.loops[f].Read(201, func() (any, error) { return nil, nil }))
	if !errors.Is(c.replies[200].Err, ErrNotLeader) || !errors.Is(c.replies[201].Err, ErrNotLeader) {
		t.Fatalf("follower accepted: %+v %+v", c.replies[200], c.replies[201])
	}
}

// TestGroupCommit checks that writes proposed while a write is in flight
// go to disk together: one write job for many entries.
func TestGroupCommit(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	l := c.loops[lead]
	c.take(lead, l.Propose(1, []byte("a=1")))
	first := c.writes[lead]
	for i := 2; i <= 50; i++ {
		c.take(lead, l.Propose(uint64(i), []byte("a=1")))
	}
	if c.writes[lead] != first || len(first.Entries) != 1 {
		t.Fatalf("a second write started while one was in flight")
	}
	delete(c.writes, lead)
	c.take(lead, l.WriteDone(first, c.stores[lead].Append(first.Entries)))
	if next := c.writes[lead]; next == nil || len(next.Entries) != 49 {
		t.Fatalf("staged entries not written together: %+v", next)
	}
	c.run()
	for i := 1; i <= 50; i++ {
		if r := c.replies[uint64(i)]; r.Err != nil || r.Index == 0 {
			t.Fatalf("write %d: %+v", i, r)
		}
	}
}

// TestLeaderCrashFailsOrResolvesWrites crashes the leader with writes in
// flight: each write's client either got a result, or an error; a write
// acknowledged is present on the new leader.
func TestLeaderCrashFailsOrResolvesWrites(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	c.take(lead, c.loops[lead].Propose(1, []byte("x=1")))
	c.run()
	c.take(lead, c.loops[lead].Propose(2, []byte("y=2")))
	// The leader's proposal never leaves: crash before delivery.
	c.msgs = nil
	c.crash(lead)
	next := c.elect()
	if next == lead {
		t.Fatal("crashed node still leader")
	}
	if c.fsms[next].m["x"] != "1" {
		t.Fatal("acknowledged write lost")
	}
	if _, ok := c.fsms[next].m["y"]; ok {
		t.Fatal("write that never left the old leader was applied")
	}
	// The old leader restarts from its log; its uncommitted entry is
	// overwritten.
	c.start(lead)
	c.tick(5)
	if _, ok := c.fsms[lead].m["y"]; ok {
		t.Fatal("restarted node applied an uncommitted write")
	}
}

// isolateUntilNewLeader drops everything lead sends or receives (its
// queued messages too) and ticks the others until one of them leads.
func (c *cluster) isolateUntilNewLeader(lead raft.NodeID) {
	c.msgs = nil
	c.down[lead] = true
	var others []raft.NodeID
	for _, id := range c.ids() {
		if id != lead {
			others = append(others, id)
		}
	}
	for i := 0; i < 60 && c.leader() == raft.None; i++ {
		for _, id := range others {
			c.take(id, c.loops[id].Tick())
		}
		c.run()
	}
}

// TestLeadershipLossFailsPendingWrites partitions the leader (its
// messages are dropped) until it steps down: its pending write fails with
// ErrLeadershipLost once another leader overwrites the entry.
func TestLeadershipLossFailsPendingWrites(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	c.take(lead, c.loops[lead].Propose(7, []byte("z=1")))
	c.isolateUntilNewLeader(lead)
	newLead := c.leader()
	c.take(newLead, c.loops[newLead].Propose(8, []byte("w=1")))
	c.run()
	c.down[lead] = false
	for i := 0; i < 10; i++ {
		for _, id := range c.ids() {
			c.take(id, c.loops[id].Tick())
		}
		c.run()
	}
	r, ok := c.replies[7]
	if !ok || !errors.Is(r.Err, ErrLeadershipLost) {
		t.Fatalf("pending write on deposed leader: %+v %v", r, ok)
	}
	if _, ok := c.fsms[lead].m["z"]; ok {
		t.Fatal("lost write applied")
	}
}

// TestLeadershipLossSettledByLaterTermCommit: writes of a deposed leader
// beyond what the new leader wrote (a quiet cluster: only its no-op) fail
// with ErrLeadershipLost as soon as an entry of the later term is committed
// below them, not after the request timeout.
func TestLeadershipLossSettledByLaterTermCommit(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	c.take(lead, c.loops[lead].Propose(7, []byte("z=1")))
	c.take(lead, c.loops[lead].Propose(9, []byte("z=2")))
	c.isolateUntilNewLeader(lead)
	c.down[lead] = false
	for i := 0; i < 5; i++ {
		for _, id := range c.ids() {
			c.take(id, c.loops[id].Tick())
		}
		c.run()
	}
	for _, id := range []uint64{7, 9} {
		r, ok := c.replies[id]
		if !ok || !errors.Is(r.Err, ErrLeadershipLost) {
			t.Fatalf("write %d of the deposed leader: %+v (answered %v), want ErrLeadershipLost within 5 ticks", id, r, ok)
		}
	}
}

// TestSnapshotCatchUp takes snapshots every few entries and brings a node
// that was down back through a snapshot.
func TestSnapshotCatchUp(t *testing.T) {
	c := newCluster(t, 3, 5)
	lead := c.elect()
	lag := raft.NodeID(1 + lead%3)
	c.crash(lag)
	for i := 1; i <= 30; i++ {
		c.take(lead, c.loops[lead].Propose(uint64(i), []byte(fmt.Sprintf("k%d=%d", i, i))))
		c.run()
	}
	if c.stores[lead].Snapshot().Index == 0 {
		t.Fatal("no snapshot taken")
	}
	c.start(lag)
	c.tick(5)
	if c.stores[lag].Snapshot().Index == 0 {
		t.Fatal("lagging node did not receive a snapshot")
	}
	a, _ := c.fsms[lead].Snapshot()
	b, _ := c.fsms[lag].Snapshot()
	if string(a) != string(b) {
		t.Fatalf("states differ:\n%s\n%s", a, b)
	}
	// Restart from snapshot + log.
	c.crash(lag)
	c.start(lag)
	c.tick(3)
	b, _ = c.fsms[lag].Snapshot()
	if string(a) != string(b) {
		t.Fatal("restarted node differs")
	}
}

// TestWriteFailureStops checks a failed write is not retried: the node
// stops appending, steps down and fails its waiting requests.
func TestWriteFailureStops(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	c.stores[lead].failWrites = errors.New("EIO")
	c.take(lead, c.loops[lead].Propose(1, []byte("a=1")))
	c.run()
	if r := c.replies[1]; !errors.Is(r.Err, ErrStopped) {
		t.Fatalf("write on failed disk: %+v", r)
	}
	if c.loops[lead].Err() == nil || c.loops[lead].Raft().Status().State == raft.StateLeader {
		t.Fatal("node still leading after a write failure")
	}
	c.take(lead, c.loops[lead].Propose(2, []byte("a=1")))
	if r := c.replies[2]; !errors.Is(r.Err, ErrStopped) || !errors.Is(r.Err, ErrNotLeader) {
		t.Fatalf("new request on stopped node: %+v (want not leader and stopped)", r)
	}
}

// TestBoundsAndTimeouts checks pending requests are bounded and time out.
func TestBoundsAndTimeouts(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	l := c.loops[lead]
	l.cfg.MaxPendingRequests = 2
	for _, id := range c.ids() {
		if id != lead {
			c.crash(id)
		}
	}
	c.take(lead, l.Propose(1, []byte("a=1")))
	c.take(lead, l.Propose(2, []byte("a=2")))
	c.take(lead, l.Propose(3, []byte("a=3")))
	if !errors.Is(c.replies[3].Err, ErrBusy) {
		t.Fatalf("third request: %+v", c.replies[3])
	}
	c.tick(51)
	for _, id := range []uint64{1, 2} {
		if r := c.replies[id]; r.Err == nil {
			t.Fatalf("request %d did not fail: %+v", id, r)
		}
	}
}

// TestWriteJobBytesBounded checks a write job carries at most
// MaxWriteJobBytes of entry data (but always one entry): entries staged
// behind a slow append go out in several jobs, in order, all appended.
func TestWriteJobBytesBounded(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	l := c.loops[lead]
	l.cfg.MaxWriteJobBytes = 2*raft.EntryOverheadBytes + 12 // two small entries
	first := l.Propose(1, []byte("a=1"))
	if first.Write == nil {
		t.Fatal("no write job for the first proposal")
	}
	for i := 2; i <= 7; i++ {
		if out := l.Propose(uint64(i), []byte(fmt.Sprintf("k%d=v", i))); out.Write != nil {
			t.Fatal("a second write job while one is in flight")
		}
	}
	l.Propose(8, []byte("big=0123456789abcdef")) // alone over the limit: still written
	job, jobs := first.Write, 0
	var written []uint64
	for job != nil {
		jobs++
		size := 0
		for _, e := range job.Entries {
			size += len(e.Data) + raft.EntryOverheadBytes
			written = append(written, e.Index)
		}
		if len(job.Entries) > 1 && size > l.cfg.MaxWriteJobBytes {
			t.Fatalf("job of %d entries with %d bytes, limit %d", len(job.Entries), size, l.cfg.MaxWriteJobBytes)
		}
		job = l.WriteDone(job, c.stores[lead].Append(job.Entries)).Write
	}
	for i := 1; i < len(written); i++ {
		if written[i] != written[i-1]+1 {
			t.Fatalf("entries written out of order: %v", written)
		}
	}
	if jobs < 4 || c.stores[lead].LastIndex() != written[len(written)-1] {
		t.Fatalf("%d jobs, written %v, last index %d", jobs, written, c.stores[lead].LastIndex())
	}
}

// TestReadFailureStops checks a failed log read is a storage failure, not a
// panic: the leader whose reads fail stops (Err says why) and steps down,
// and the others elect a new leader that commits.
func TestReadFailureStops(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	var lagging raft.NodeID
	for _, id := range c.ids() {
		if id != lead {
			lagging = id
		}
	}
	c.crash(lagging) // it will need entries read back from the log
	for i := 1; i <= 3; i++ {
		c.take(lead, c.loops[lead].Propose(uint64(i), []byte(fmt.Sprintf("k%d=v", i))))
	}
	c.run()
	c.stores[lead].failReads = errors.New("EIO on read")
	c.down[lagging] = false
	for i := 0; i < 30 && c.loops[lead].Err() == nil; i++ {
		c.tick(1)
	}
	if err := c.loops[lead].Err(); err == nil || !strings.Contains(err.Error(), "EIO on read") {
		t.Fatalf("leader with failing reads: err %v", err)
	}
	if c.loops[lead].Raft().Basic().State == raft.StateLeader {
		t.Fatal("still leading after a read failure")
	}
	c.crash(lead)
	next := c.elect()
	c.take(next, c.loops[next].Propose(10, []byte("after=1")))
	c.run()
	if r := c.replies[10]; r.Err != nil {
		t.Fatalf("write on the new leader: %v", r.Err)
	}
}

// TestRemoveSelfAnswered checks a leader's request to remove itself is
// answered once the removal commits, although the leader steps down then.
func TestRemoveSelfAnswered(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	c.take(lead, c.loops[lead].RequestMembership(77, raft.ConfigChange{Type: raft.ConfigRemove, ID: lead}))
	for i := 0; i < 20 && c.replies[77].ID == 0; i++ {
		c.tick(1)
	}
	if r, ok := c.replies[77]; !ok || r.Err != nil {
		t.Fatalf("removal of the leader itself: replied %v, %+v", ok, r)
	}
}

// TestTransferAnsweredOnceTargetLeads: a transfer's reply comes once the
// old leader knows the target leads a later term (not when it merely
// stepped down), and one to a voter that cannot win fails within the
// transfer's bound.
func TestTransferAnsweredOnceTargetLeads(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	to := raft.NodeID(1 + lead%3)
	term := c.loops[lead].Raft().Basic().Term
	l := c.loops[lead]
	c.take(lead, l.RequestTransfer(88, to))
	// Deliver one message (or write, or tick) at a time, checking after
	// each that no reply came while the old leader did not yet know the
	// target leads a later term.
	for i := 0; i < 10000; i++ {
		if _, ok := c.replies[88]; ok {
			break
		}
		switch {
		case len(c.msgs) > 0:
			m := c.msgs[0]
			c.msgs = c.msgs[1:]
			if !c.down[m.To] && !c.down[m.From] {
				out, err := c.loops[m.To].Step(m)
				if err != nil {
					t.Fatal(err)
				}
				c.take(m.To, out)
			}
		case len(c.writes) > 0:
			for _, id := range c.ids() {
				if job := c.writes[id]; job != nil {
					delete(c.writes, id)
					c.take(id, c.loops[id].WriteDone(job, c.stores[id].Append(job.Entries)))
				}
			}
		default:
			for _, id := range c.ids() {
				c.take(id, c.loops[id].Tick())
			}
		}
		if _, ok := c.replies[88]; ok {
			if b := l.Raft().Basic(); b.Lead != to || b.Term <= term {
				t.Fatalf("transfer answered while the old leader knows leader %d in term %d (started in %d)", b.Lead, b.Term, term)
			}
		}
	}
	if r, ok := c.replies[88]; !ok || r.Err != nil {
		t.Fatalf("transfer to %d: replied %v, %+v", to, ok, r)
	}
	if got := c.leader(); got != to {
		t.Fatalf("leader %d after the transfer to %d", got, to)
	}

	// A transfer to a voter that is down fails (raft's own timeout).
	lead = to
	down := raft.NodeID(1 + lead%3)
	c.crash(down)
	c.take(lead, c.loops[lead].RequestTransfer(89, down))
	for i := 0; i < 100 && c.replies[89].ID == 0; i++ {
		c.tick(1)
	}
	if r := c.replies[89]; r.ID == 0 || r.Err == nil {
		t.Fatalf("transfer to a down voter: %+v", r)
	}
	// A second transfer while one is waited on is refused at once.
	c.take(lead, c.loops[lead].RequestTransfer(90, raft.NodeID(1+(lead+1)%3)))
	c.take(lead, c.loops[lead].RequestTransfer(91, raft.None))
	if r := c.replies[91]; r.ID == 0 || r.Err == nil {
		t.Fatalf("second transfer under way: %+v", r)
	}
}

// TestInterruptDropsWaiting: Interrupt fails a session's queued write and
// waiting read, which never run; its write already proposed, and other
// sessions' requests, go on.
func TestInterruptDropsWaiting(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	l := c.loops[lead]
	ran := map[string]bool{}
	write := func(id, session uint64, data string) WriteRequest {
		return WriteRequest{ID: id, Tx: session,
			Execute:  func() ([]byte, any, error) { ran[data] = true; return []byte(data), data, nil },
			Proposed: func(uint64, uint64) {}, Abort: func() {}}
	}
	// 1 is proposed (it holds the writer slot); 2 and 3 queue behind it.
	c.take(lead, l.SubmitWrite(write(1, 5, "a=1")))
	c.take(lead, l.SubmitWrite(write(2, 5, "b=2")))
	c.take(lead, l.SubmitWrite(write(3, 6, "c=3")))
	c.take(lead, l.ReadIn(4, 5, func() (any, error) { ran["read"] = true; return nil, nil }))
	c.take(lead, l.Interrupt(5))
	c.run()
	c.tick(2)
	if r := c.replies[1]; r.Err != nil || r.Result != "a=1" {
		t.Fatalf("the write already running: %+v", r)
	}
	for _, id := range []uint64{2, 4} {
		if r := c.replies[id]; !errors.Is(r.Err, ErrCanceled) {
			t.Fatalf("request %d of the interrupted session: %+v", id, r)
		}
	}
	if ran["b=2"] || ran["read"] {
		t.Fatalf("an interrupted request ran: %v", ran)
	}
	if r := c.replies[3]; r.Err != nil || r.Result != "c=3" {
		t.Fatalf("another session's write: %+v", r)
	}
}

// TestTransferNoLeaderAfterStepDown: the old leader stepped down for the
// transfer, then the target and the third voter went down: no leader is
// known, and the transfer fails after transferWaitElections election
// timeouts (before the request timeout).
func TestTransferNoLeaderAfterStepDown(t *testing.T) {
	c := newCluster(t, 3, 0)
	lead := c.elect()
	l := c.loops[lead]
	to := raft.NodeID(1 + lead%3)
	c.take(lead, l.RequestTransfer(93, to))
	for i := 0; i < 10000 && l.Raft().Basic().State == raft.StateLeader; i++ {
		if len(c.msgs) == 0 {
			t.Fatal("the old leader never stepped down")
		}
		m := c.msgs[0]
		c.msgs = c.msgs[1:]
		out, err := c.loops[m.To].Step(m)
		if err != nil {
			t.Fatal(err)
		}
		c.take(m.To, out)
	}
	for _, id := range c.ids() {
		if id != lead {
			c.crash(id)
		}
	}
	ticks := 0
	for ; ticks < 40 && c.replies[93].ID == 0; ticks++ {
		c.tick(1)
	}
	r := c.replies[93]
	if r.ID == 0 || r.Err == nil || !strings.Contains(r.Err.Error(), "no leader known") {
		t.Fatalf("transfer after %d ticks alone: %+v", ticks, r)
	}
	if ticks > transferWaitElections*10+2 {
		t.Fatalf("answered after %d ticks, want about %d", ticks, transferWaitElections*10)
	}
}
