package raft

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dqlite-go/dqlite/internal/mutant"
)

// These tests activate deliberate bugs process-wide (internal/mutant): none
// of them, and no test of this package, may run in parallel (no t.Parallel).

// runScenarioWith runs a scenario with bug active (mutant.None: no bug).
// With expectOnly the printed output is not compared: only the commands
// and their expectations can fail.
func runScenarioWith(t *testing.T, path string, bug mutant.Bug, expectOnly bool) error {
	t.Helper()
	release, err := mutant.Activate(bug)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	_, err = runScenario(path, expectOnly)
	return err
}

// scenarioGuards pairs each scenario written for one rule with the bug
// that breaks that rule.
var scenarioGuards = []struct {
	file string
	bug  mutant.Bug
}{
	{"figure8.txt", mutant.RaftFigure8},
	{"vote-uptodate.txt", mutant.RaftVoteIgnoresLog},
	{"prevote-livelock.txt", mutant.RaftPreVoteRejectTerm},
	{"config-rollback.txt", mutant.RaftConfigNoRollback},
	{"removed-voter-campaigns.txt", mutant.RaftRemovedNoCampaign},
	{"stranger-vote.txt", mutant.RaftStrangerVotesDropped},
}

// TestScenariosCatchMutants shows each rule's scenario guards its rule: it
// passes on the correct code and fails (output or an expectation differs)
// with the bug that breaks the rule.
func TestScenariosCatchMutants(t *testing.T) {
	for _, g := range scenarioGuards {
		t.Run(strings.TrimSuffix(g.file, ".txt"), func(t *testing.T) {
			path := filepath.Join("testdata", g.file)
			if err := runScenarioWith(t, path, mutant.None, false); err != nil {
				t.Fatalf("fails without a bug: %v", err)
			}
			err := runScenarioWith(t, path, g.bug, false)
			if err == nil {
				t.Fatalf("passes with %s active", g.bug)
			}
			t.Logf("with %s: %v", g.bug, firstLines(err.Error(), 12))
			// The expectations alone catch it too: the scenario states its
			// rule, it does not only record what happened.
			err = runScenarioWith(t, path, g.bug, true)
			if err == nil {
				t.Fatalf("with %s the output differs but every expectation holds", g.bug)
			}
			t.Logf("expectations alone, with %s: %v", g.bug, firstLines(err.Error(), 1))
		})
	}
}

// scenarioCatches records, for each scenario, the raft bugs of the
// catalogue it fails under (found with TestScenariosMutantTable -v):
// byExpect, those where an expectation, an expected error, the harness's
// safety checks or a panic fail it even when the output is not compared;
// byOutput, the further ones where only the printed output differs (the
// bug changes what is sent, the script's expectations do not notice).
var scenarioCatches = map[string]struct{ byExpect, byOutput []mutant.Bug }{
	"checkquorum.txt": {
		byOutput: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftNoPreVote, mutant.RaftAckBeforePersist},
	},
	"config-rollback.txt": {
		byExpect: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftConfigNoRollback, mutant.RaftQuorumEven},
		byOutput: []mutant.Bug{mutant.RaftNoPreVote, mutant.RaftVoteIgnoresLog, mutant.RaftAckBeforePersist},
	},
	"conflict.txt": {
		byExpect: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftAckBeforePersist},
		byOutput: []mutant.Bug{mutant.RaftNoPreVote},
	},
	"election.txt": {
		byExpect: []mutant.Bug{mutant.RaftCommitWithoutQuorum},
		byOutput: []mutant.Bug{mutant.RaftNoPreVote, mutant.RaftAckBeforePersist},
	},
	"figure8.txt": {
		byExpect: []mutant.Bug{mutant.RaftDoubleVote, mutant.RaftCommitWithoutQuorum, mutant.RaftFigure8,
			mutant.RaftPreVoteRejectTerm, mutant.RaftNoPreVote},
		byOutput: []mutant.Bug{mutant.RaftAckBeforePersist},
	},
	"membership.txt": {
		byExpect: []mutant.Bug{mutant.RaftCommitWithoutQuorum},
		byOutput: []mutant.Bug{mutant.RaftQuorumEven, mutant.RaftNoPreVote, mutant.RaftAckBeforePersist},
	},
	"persist.txt": {
		byExpect: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftAckBeforePersist},
		byOutput: []mutant.Bug{mutant.RaftNoPreVote},
	},
	"prevote-livelock.txt": {
		byExpect: []mutant.Bug{mutant.RaftDoubleVote, mutant.RaftPreVoteRejectTerm, mutant.RaftNoPreVote,
			mutant.RaftVoteIgnoresLog},
		byOutput: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftAckBeforePersist},
	},
	"prevote.txt": {
		byExpect: []mutant.Bug{mutant.RaftNoPreVote},
		byOutput: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftAckBeforePersist},
	},
	"promotion.txt": {
		byExpect: []mutant.Bug{mutant.RaftNoPreVote},
		byOutput: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftAckBeforePersist},
	},
	"readindex.txt": {
		byOutput: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftNoPreVote, mutant.RaftAckBeforePersist},
	},
	"removed-voter-campaigns.txt": {
		byExpect: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftQuorumEven, mutant.RaftNoPreVote,
			mutant.RaftVoteIgnoresLog, mutant.RaftRemovedNoCampaign},
		byOutput: []mutant.Bug{mutant.RaftAckBeforePersist},
	},
	"single.txt": {
		byOutput: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftQuorumEven},
	},
	"snapshot.txt": {
		byOutput: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftNoPreVote, mutant.RaftAckBeforePersist},
	},
	"stranger-vote.txt": {
		byExpect: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftQuorumEven, mutant.RaftNoPreVote,
			mutant.RaftVoteIgnoresLog, mutant.RaftStrangerVotesDropped},
		byOutput: []mutant.Bug{mutant.RaftAckBeforePersist},
	},
	"transfer.txt": {
		byOutput: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftNoPreVote, mutant.RaftAckBeforePersist},
	},
	"vote-uptodate.txt": {
		byExpect: []mutant.Bug{mutant.RaftCommitWithoutQuorum, mutant.RaftNoPreVote, mutant.RaftVoteIgnoresLog,
			mutant.RaftAppendIgnoresPrev},
		byOutput: []mutant.Bug{mutant.RaftAckBeforePersist},
	},
}

// TestScenariosMutantTable runs every scenario under every raft bug of the
// catalogue, with and without comparing the output, and checks each bug
// listed in scenarioCatches is caught the way it says. A scenario caught
// by more than listed is only logged (the table can grow). With -v it logs
// the whole table: E caught by the expectations, o only by the output, .
// not caught.
func TestScenariosMutantTable(t *testing.T) {
	var bugs []mutant.Bug
	for _, in := range mutant.Catalogue {
		if in.Pkg == "raft" {
			bugs = append(bugs, in.Bug)
		}
	}
	var table strings.Builder
	for _, f := range scenarioFiles(t) {
		name := filepath.Base(f)
		listed, ok := scenarioCatches[name]
		if !ok {
			t.Errorf("%s is not in scenarioCatches", name)
		}
		byExpect, byOutput := map[mutant.Bug]bool{}, map[mutant.Bug]bool{}
		for _, b := range listed.byExpect {
			byExpect[b] = true
		}
		for _, b := range listed.byOutput {
			byOutput[b] = true
		}
		fmt.Fprintf(&table, "%-22s", name)
		for _, b := range bugs {
			expErr := runScenarioWith(t, f, b, true)
			outErr := expErr
			if outErr == nil {
				outErr = runScenarioWith(t, f, b, false)
			}
			mark := "."
			switch {
			case expErr != nil:
				mark = "E"
			case outErr != nil:
				mark = "o"
			}
			fmt.Fprintf(&table, " %s", mark)
			switch {
			case byExpect[b] && expErr == nil:
				t.Errorf("%s: the expectations hold with %s active, but are listed as catching it", name, b)
			case byOutput[b] && outErr == nil:
				t.Errorf("%s passes with %s active, but is listed as catching it", name, b)
			case expErr != nil && !byExpect[b]:
				t.Logf("%s: the expectations also catch %s: %v", name, b, firstLines(expErr.Error(), 1))
			case outErr != nil && !byExpect[b] && !byOutput[b]:
				t.Logf("%s: the output also catches %s: %v", name, b, firstLines(outErr.Error(), 1))
			}
		}
		table.WriteByte('\n')
	}
	for i, b := range bugs {
		fmt.Fprintf(&table, "column %d: %s\n", i+1, b)
	}
	t.Logf("scenarios (rows) vs raft bugs (columns):\n%s", table.String())
}

// firstLines returns at most n lines of s.
func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n")
}
