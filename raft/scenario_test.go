package raft

// Scenario scripts (testdata/*.txt) in the style of etcd's datadriven tests.
//
// A script is a list of commands, one per line; a line starting with # is a
// comment and blank lines separate paragraphs. A command runs one step on the
// in-memory cluster of harness_test.go (see runCommand for the verbs) and
// prints what that step produced. The expected output is stored in the
// script right after the command:
//
//	tick 1 12
//	----
//	1: state=precandidate
//	1->2 MsgPreVote term=2 index=3 logterm=1
//	1->3 MsgPreVote term=2 index=3 logterm=1
//
// The block starts with a line "----" and ends at the next blank line, comment
// line or end of file. The rule for silent steps: a command whose step prints
// nothing has no block (an empty block is accepted and dropped by -rewrite).
// Every `expect` line prints nothing when it holds.
//
// Output lines, in the order things happened:
//
//	F->T Type term=N ...          a message sent by F to T (see describeMessage):
//	                              MsgApp index/logterm (of the entry before the
//	                              entries), commit, entries=[index/term ...];
//	                              MsgAppResp index and "reject hint= logterm=";
//	                              votes index/logterm of the candidate's last
//	                              entry; vote answers "reject" (lead= the leader
//	                              the refuser follows); heartbeats commit, ctx
//	dropped F->T Type ...         a queued message lost: its link is cut, the
//	                              receiver is down, or the script dropped it
//	N: field=value ...            node N's visible state changed: the fields of
//	                              state term vote lead commit config that differ
//	                              from when N was last seen (a node seen for the
//	                              first time shows its non-zero fields)
//	N: read CTX@INDEX             a ReadIndex answer
//	N: notice NAME                a Notice (see noticeName)
//	... the K lines above, R times in all
//	                              the K lines before this one happened R times
//	                              in a row (steady heartbeats; see compressRuns)
//
// A node's messages are printed when it hands them out (in its Update), its
// state when it is processed and at the end of each command; a message is
// printed once when sent and once more only if it is lost.
//
// `expect` lines are assertions on top of the output: they fail the scenario
// when the cluster is not in the stated state. A command that must fail ends
// with `-> substring of the error`.
//
// go test ./raft -run TestScenarios -rewrite rewrites every script with the
// output its commands produce now; comments, blank lines and the commands
// stay as written. Read the diff before committing it: the output is the
// expectation.

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite testdata/*.txt scenarios with the output they produce")

// TestScenarios replays every script under testdata/*.txt and compares what
// each command prints with the block stored after it.
func TestScenarios(t *testing.T) {
	for _, f := range scenarioFiles(t) {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			got, err := runScenario(f, *rewrite)
			if err != nil {
				t.Fatal(err)
			}
			if !*rewrite {
				return
			}
			old, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if string(old) != got {
				if err := os.WriteFile(f, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				t.Logf("rewrote %s", f)
			}
		})
	}
}

func scenarioFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios found: %v", err)
	}
	return files
}

// scriptItem is one element of a script: a command with its expected output,
// or (cmd == "") a comment or blank line kept verbatim.
type scriptItem struct {
	raw  string
	line int    // the command's line number
	cmd  string // the command line as written
	want []string
	got  []string
	// endBlank: the block read ended with a blank line (part of it).
	endBlank bool
}

// parseScript splits a script into its items (see the format above).
func parseScript(path, data string) ([]scriptItem, error) {
	lines := strings.Split(strings.TrimSuffix(data, "\n"), "\n")
	if data == "" {
		lines = nil
	}
	var items []scriptItem
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		t := strings.TrimSpace(l)
		switch {
		case t == "" || strings.HasPrefix(t, "#"):
			items = append(items, scriptItem{raw: l})
			continue
		case t == "----":
			return nil, fmt.Errorf("%s:%d: output block without a command", path, i+1)
		}
		it := scriptItem{line: i + 1, cmd: l}
		if i+1 < len(lines) && strings.TrimSpace(lines[i+1]) == "----" {
			for i += 2; i < len(lines); i++ {
				t := strings.TrimSpace(lines[i])
				if t == "" {
					it.endBlank = true // the blank line ending the block belongs to it
					break
				}
				if strings.HasPrefix(t, "#") {
					i--
					break
				}
				it.want = append(it.want, strings.TrimRight(lines[i], " \t"))
			}
		}
		items = append(items, it)
	}
	return items, nil
}

// formatScript writes items back, each command followed by its actual
// output.
func formatScript(items []scriptItem) string {
	var b strings.Builder
	for i, it := range items {
		if it.cmd == "" {
			b.WriteString(it.raw + "\n")
			continue
		}
		b.WriteString(it.cmd + "\n")
		if len(it.got) == 0 {
			continue
		}
		b.WriteString("----\n")
		for _, l := range it.got {
			b.WriteString(l + "\n")
		}
		// A blank line ends the block: the one read with it, or a new one
		// unless the file ends or a blank line follows anyway.
		if it.endBlank || i+1 < len(items) && !(items[i+1].cmd == "" && strings.TrimSpace(items[i+1].raw) == "") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// TestScriptRewriteKeepsText checks that formatting a parsed script with
// its expected output as the actual output gives back the script (up to the
// blank line that ends each block), comments and commands unchanged, and
// that a second rewrite changes nothing.
func TestScriptRewriteKeepsText(t *testing.T) {
	in := "# top\ncmd a\n----\nx\ny\n# right after a block\ncmd b\n\ncmd c # inline\n----\nz\n\n\n# end\ncmd d\n----\nw\n"
	want := "# top\ncmd a\n----\nx\ny\n\n# right after a block\ncmd b\n\ncmd c # inline\n----\nz\n\n\n# end\ncmd d\n----\nw\n"
	rewriteOnce := func(text string) string {
		items, err := parseScript("test", text)
		if err != nil {
			t.Fatal(err)
		}
		for i := range items {
			items[i].got = items[i].want
		}
		return formatScript(items)
	}
	if got := rewriteOnce(in); got != want {
		t.Fatalf("rewrite:\n%s\nwant:\n%s", got, want)
	}
	if got := rewriteOnce(want); got != want {
		t.Fatalf("second rewrite:\n%s\nwant:\n%s", got, want)
	}
	if _, err := parseScript("test", "# c\n----\n"); err == nil {
		t.Fatal("a block without a command was accepted")
	}
}

// scenario is one run of a script.
type scenario struct {
	h *harness
	// maxMsgBytes, when set, is the Config.MaxMsgBytes of nodes created or
	// restarted from then on ("set max-msg-bytes N").
	maxMsgBytes uint64
}

// runScenario runs the script at path and returns it rewritten with the
// output each command produced. It returns an error at the first command
// that fails: an error (or none) other than the one the script asks for,
// a failed expectation, a panic, a safety violation seen by the harness, or,
// unless rewriting, output that differs from the script's.
func runScenario(path string, rewriting bool) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	items, err := parseScript(path, string(data))
	if err != nil {
		return "", err
	}
	s := &scenario{}
	s.h = newHarness(1, func(c *Config) {
		if s.maxMsgBytes > 0 {
			c.MaxMsgBytes = s.maxMsgBytes
		}
	})
	h := s.h
	for i := range items {
		it := &items[i]
		if it.cmd == "" {
			continue
		}
		text := strings.TrimSpace(it.cmd)
		if j := strings.Index(text, "#"); j >= 0 {
			text = strings.TrimSpace(text[:j])
		}
		wantErr := ""
		if j := strings.Index(text, "->"); j >= 0 {
			wantErr = strings.TrimSpace(text[j+2:])
			text = strings.TrimSpace(text[:j])
		}
		h.trace = &strings.Builder{}
		err, panicked := s.run(strings.Fields(text))
		if !panicked {
			h.observeAll()
		}
		if out := strings.TrimSuffix(h.trace.String(), "\n"); out != "" {
			it.got = compressRuns(strings.Split(out, "\n"))
		}
		h.trace = nil
		where := fmt.Sprintf("%s:%d: %s", path, it.line, text)
		switch {
		case panicked:
			return "", fmt.Errorf("%s: %v\n%s", where, err, h)
		case wantErr == "" && err != nil:
			return "", fmt.Errorf("%s: %v\n%s", where, err, h)
		case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
			return "", fmt.Errorf("%s: got error %v, want one containing %q\n%s", where, err, wantErr, h)
		case len(h.errs) > 0:
			return "", fmt.Errorf("%s: safety violated: %v\n%s", where, h.errs, h)
		case !rewriting && !slicesEqual(it.want, it.got):
			return "", fmt.Errorf("%s: output differs (-want +got):\n%s", where, lineDiff(it.want, it.got))
		}
	}
	return formatScript(items), nil
}

// run runs one command, turning a panic (a raft assertion, or the harness
// refusing a message) into an error.
func (s *scenario) run(args []string) (err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			err, panicked = fmt.Errorf("panic: %v", r), true
		}
	}()
	return s.runCommand(args), false
}

// maxRunLines bounds the group of lines compressRuns looks for repeats of.
const maxRunLines = 16

// compressRuns replaces a group of lines repeated back to back (steady
// heartbeats: ticks repeat a round of messages) by one copy of the group
// and a line "... the N lines above, R times in all". At each line it takes
// the group, of at most maxRunLines lines, whose repeats cover the most
// lines (the shortest on ties).
func compressRuns(lines []string) []string {
	var out []string
	for i := 0; i < len(lines); {
		bestK, bestR := 0, 1
		for k := 1; k <= maxRunLines && i+2*k <= len(lines); k++ {
			r := 1
			for i+(r+1)*k <= len(lines) && slicesEqual(lines[i:i+k], lines[i+r*k:i+(r+1)*k]) {
				r++
			}
			if r > 1 && k*r > bestK*bestR {
				bestK, bestR = k, r
			}
		}
		if bestK == 0 {
			out = append(out, lines[i])
			i++
			continue
		}
		out = append(out, lines[i:i+bestK]...)
		if bestK == 1 {
			out = append(out, fmt.Sprintf("... the line above, %d times in all", bestR))
		} else {
			out = append(out, fmt.Sprintf("... the %d lines above, %d times in all", bestK, bestR))
		}
		i += bestK * bestR
	}
	return out
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// diffContext is how many unchanged lines lineDiff shows around a change.
const diffContext = 3

// lineDiff is a line diff of want and got (longest common subsequence):
// "- " lines only in want, "+ " lines only in got, "  " lines in both (at
// most diffContext of them around each change; "  ..." for the others).
func lineDiff(want, got []string) string {
	n, m := len(want), len(got)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if want[i] == got[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var lines []string
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && want[i] == got[j]:
			lines = append(lines, "  "+want[i])
			i++
			j++
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			lines = append(lines, "+ "+got[j])
			j++
		default:
			lines = append(lines, "- "+want[i])
			i++
		}
	}
	near := make([]bool, len(lines))
	for k, l := range lines {
		if !strings.HasPrefix(l, "  ") {
			for d := max(0, k-diffContext); d <= min(len(lines)-1, k+diffContext); d++ {
				near[d] = true
			}
		}
	}
	var b strings.Builder
	for k, l := range lines {
		switch {
		case near[k]:
			b.WriteString(l + "\n")
		case k == 0 || near[k-1]:
			b.WriteString("  ...\n")
		}
	}
	return b.String()
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
var nodeVerbs = map[string]bool{"campaign": true, "timeout": true, "tick": true, "propose": true,
	"isolate": true, "crash": true, "restart": true, "hold": true, "release": true, "conf": true,
	"transfer": true, "read": true, "snapshot": true, "expect": true}

var roles = map[string]Role{"voter": Voter, "standby": Standby, "spare": Spare}

// runCommand runs one command. The verbs:
//
//	bootstrap ID...          create voters knowing each other (term 1, one entry)
//	join ID                  create a node with empty storage
//	set max-msg-bytes N      Config.MaxMsgBytes of nodes created or restarted later
//	campaign ID              tick ID until it starts a (pre-)election, then stabilize
//	timeout ID               tick ID until it starts a (pre-)election (nothing delivered)
//	tick ID [N]              tick ID N times (default 1), processing it after each
//	tick-all N               N rounds of: tick every live node, stabilize
//	stabilize                process and deliver until nothing moves
//	deliver [FROM TO [TYPE]] deliver the queued messages (only those on link
//	                         FROM->TO, of TYPE; * for any node), then process
//	                         every node until idle: their answers stay queued
//	drop [FROM TO [TYPE]]    drop queued messages (all, or those matching)
//	isolate ID / cut FROM TO / heal   cut links (checked on delivery) / restore all
//	crash ID / restart ID    lose volatile state (and messages to it) / restart from storage
//	hold ID / release ID     keep ID's entry writes pending / write them
//	propose ID DATA, conf ID add|assign|remove ..., transfer ID [TO], read ID CTX
//	snapshot ID              snapshot ID's state machine at its applied index
//	expect ...               see (*harness).expect
func (s *scenario) runCommand(args []string) error {
	h := s.h
	if len(args) == 0 {
		return fmt.Errorf("empty command")
	}
	verb, args := args[0], args[1:]
	if nodeVerbs[verb] && len(args) == 0 {
		return fmt.Errorf("%s needs a node id", verb)
	}
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
	case "set":
		if len(args) != 2 || args[0] != "max-msg-bytes" {
			return fmt.Errorf("usage: set max-msg-bytes N")
		}
		s.maxMsgBytes = atoi(args[1])
	case "campaign":
		h.campaign(n.id)
	case "timeout":
		for i := 0; i < 100 && n.raft.state == StateFollower; i++ {
			h.tick(n.id, 1)
		}
		if n.raft.state == StateFollower {
			return fmt.Errorf("node %d did not start an election in 100 ticks", n.id)
		}
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
	case "deliver":
		match, err := messageFilter(args)
		if err != nil {
			return err
		}
		h.deliver(match)
	case "drop":
		match, err := messageFilter(args)
		if err != nil {
			return err
		}
		h.dropQueued(match)
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

// messageFilter matches messages by [FROM TO [TYPE]] (* for any node).
func messageFilter(args []string) (func(Message) bool, error) {
	if len(args) != 0 && len(args) != 2 && len(args) != 3 {
		return nil, fmt.Errorf("want [FROM TO [TYPE]], got %q", args)
	}
	node := func(i int) NodeID {
		if i >= len(args) || args[i] == "*" {
			return None
		}
		return NodeID(atoi(args[i]))
	}
	from, to := node(0), node(1)
	var typ MessageType
	if len(args) == 3 {
		for t := MsgApp; t <= MsgTimeoutNow; t++ {
			if t.String() == args[2] {
				typ = t
			}
		}
		if typ == 0 {
			return nil, fmt.Errorf("unknown message type %q", args[2])
		}
	}
	return func(m Message) bool {
		return (from == None || m.From == from) && (to == None || m.To == to) && (typ == 0 || m.Type == typ)
	}, nil
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

// expect checks "expect leader ID" (the live leader of the highest term) or
// "expect ID WHAT VALUE...", WHAT one of state term lead vote commit applied
// last first config data read notices snapshot progress.
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
	case "progress":
		// The leader's match index of each replica: "2:5 3:4".
		var ids []NodeID
		for id := range st.Progress {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		var ps []string
		for _, id := range ids {
			ps = append(ps, fmt.Sprintf("%d:%d", id, st.Progress[id]))
		}
		got = strings.Join(ps, " ")
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
