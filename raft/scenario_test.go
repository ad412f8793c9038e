package raft

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestScenarios replays every script under testdata/*.txt. A script is a list
// of commands, one per line (# starts a comment); `expect` lines fail the
// test when the cluster is not in the stated state. A command that should
// fail ends with `-> substring of the error`. See runCommand for the verbs.
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios found: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			runScenario(t, f)
		})
	}
}

func runScenario(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := newHarness(1, nil)
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if i := strings.Index(text, "#"); i >= 0 {
			text = strings.TrimSpace(text[:i])
		}
		if text == "" {
			continue
		}
		wantErr := ""
		if i := strings.Index(text, "->"); i >= 0 {
			wantErr = strings.TrimSpace(text[i+2:])
			text = strings.TrimSpace(text[:i])
		}
		err := runCommand(h, strings.Fields(text))
		switch {
		case wantErr == "" && err != nil:
			t.Fatalf("%s:%d: %s: %v\n%s", path, line, text, err, h)
		case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
			t.Fatalf("%s:%d: %s: got error %v, want one containing %q\n%s", path, line, text, err, wantErr, h)
		}
		if len(h.errs) > 0 {
			t.Fatalf("%s:%d: %s: safety violated: %v\n%s", path, line, text, h.errs, h)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

func atoi(s string) uint64 {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		panic(fmt.Sprintf("bad number %q", s))
	}
	return n
}

func nodeArg(h *harness, s string) (*hnode, error) {
	n := h.nodes[NodeID(atoi(s))]
	if n == nil {
		return nil, fmt.Errorf("no node %s", s)
	}
	return n, nil
}

// nodeVerbs take a node id as their first argument.
var nodeVerbs = map[string]bool{"campaign": true, "tick": true, "propose": true, "isolate": true,
	"crash": true, "restart": true, "hold": true, "release": true, "conf": true, "transfer": true,
	"read": true, "snapshot": true, "expect": true}

var roles = map[string]Role{"voter": Voter, "standby": Standby, "spare": Spare}

func runCommand(h *harness, args []string) error {
	verb, args := args[0], args[1:]
	var n *hnode
	if nodeVerbs[verb] && !(verb == "expect" && args[0] == "leader") {
		var err error
		if n, err = nodeArg(h, args[0]); err != nil {
			return err
		}
	}
	switch verb {
	case "bootstrap":
		var ids []NodeID
		for _, a := range args {
			ids = append(ids, NodeID(atoi(a)))
		}
		h.bootstrap(ids...)
	case "join":
		h.addNode(NodeID(atoi(args[0])), NewMemoryStorage())
	case "campaign":
		h.campaign(n.id)
	case "tick":
		count := 1
		if len(args) > 1 {
			count = int(atoi(args[1]))
		}
		h.tick(n.id, count)
	case "tick-all":
		h.tickAll(int(atoi(args[0])))
	case "stabilize":
		h.stabilize()
	case "propose":
		_, _, err := n.raft.Propose([]byte(args[1]))
		h.process(n)
		return err
	case "isolate":
		h.isolate(n.id)
	case "cut":
		h.cut[[2]NodeID{NodeID(atoi(args[0])), NodeID(atoi(args[1]))}] = true
	case "heal":
		h.heal()
	case "drop":
		h.queue = nil
	case "crash":
		h.crash(n.id)
	case "restart":
		h.restart(n.id)
	case "hold":
		n.holdWrites = true
	case "release":
		n.holdWrites = false
		h.release(n.id)
	case "conf":
		return h.confChange(n, args[1:])
	case "transfer":
		to := None
		if len(args) > 1 {
			to = NodeID(atoi(args[1]))
		}
		err := n.raft.TransferLeadership(to)
		h.process(n)
		return err
	case "read":
		err := n.raft.ReadIndex(atoi(args[1]))
		h.process(n)
		return err
	case "snapshot":
		return h.snapshot(n)
	case "expect":
		return h.expect(n, args)
	default:
		return fmt.Errorf("unknown verb %q", verb)
	}
	return nil
}

func (h *harness) confChange(n *hnode, args []string) error {
	cc := ConfigChange{ID: NodeID(atoi(args[1]))}
	switch args[0] {
	case "add":
		cc.Type = ConfigAdd
		cc.Address = "n" + args[1]
	case "assign":
		cc.Type = ConfigAssign
		cc.Role = roles[args[2]]
	case "remove":
		cc.Type = ConfigRemove
	default:
		return fmt.Errorf("unknown conf change %q", args[0])
	}
	err := n.raft.ProposeConfigChange(cc)
	h.process(n)
	return err
}

// snapshot takes a snapshot of node n's state machine at its applied index
// and compacts its log.
func (h *harness) snapshot(n *hnode) error {
	idx := n.raft.Status().Applied
	meta, err := n.raft.SnapshotMeta(idx)
	if err != nil {
		return err
	}
	return n.storage.CreateSnapshot(meta, []byte(fmt.Sprintf("state-at-%d", idx)))
}

func (h *harness) expect(n *hnode, args []string) error {
	if args[0] == "leader" {
		if got := h.leader(); got != NodeID(atoi(args[1])) {
			return fmt.Errorf("leader is %d, want %s", got, args[1])
		}
		return nil
	}
	st := n.raft.Status()
	what, want := args[1], strings.Join(args[2:], " ")
	var got string
	switch what {
	case "state":
		got = st.State.String()
	case "term":
		got = fmt.Sprint(st.Term)
	case "lead":
		got = fmt.Sprint(st.Lead)
	case "vote":
		got = fmt.Sprint(st.Vote)
	case "commit":
		got = fmt.Sprint(st.Commit)
	case "applied":
		got = fmt.Sprint(st.Applied)
	case "last":
		got = fmt.Sprint(st.LastIndex)
	case "first":
		got = fmt.Sprint(n.storage.FirstIndex())
	case "config":
		got = st.Config.String()
	case "data":
		var ds []string
		for _, e := range n.applied {
			if e.Type == EntryNormal {
				ds = append(ds, string(e.Data))
			}
		}
		got = strings.Join(ds, " ")
	case "read":
		var rs []string
		for _, r := range n.reads {
			rs = append(rs, fmt.Sprintf("%d@%d", r.Context, r.Index))
		}
		got = strings.Join(rs, " ")
	case "notices":
		var ns []string
		for _, x := range n.notices {
			ns = append(ns, noticeName(x))
		}
		got = strings.Join(ns, " ")
	case "snapshot":
		got = fmt.Sprint(n.storage.Snapshot().Index)
	default:
		return fmt.Errorf("unknown expectation %q", what)
	}
	if got != want {
		return fmt.Errorf("node %d %s = %q, want %q", n.id, what, got, want)
	}
	return nil
}

func noticeName(n Notice) string {
	switch n.Kind {
	case NoticeConfigAppended:
		return fmt.Sprintf("config-appended@%d", n.Index)
	case NoticeConfigFailed:
		return "config-failed"
	case NoticeTransferFailed:
		return "transfer-failed"
	case NoticeReadFailed:
		return fmt.Sprintf("read-failed:%d", n.Context)
	}
	return "?"
}
