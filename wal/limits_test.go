package wal_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/wal"
)

// TestMaxBatchBytes checks Append's batch limit (lowered to 1024 bytes of
// payload): a batch of exactly the limit is written; one byte more, as one
// entry or several, appended after the log or replacing its suffix, fails
// with an error and leaves the log as it was, in memory and after a reopen,
// and the log still takes appends.
func TestMaxBatchBytes(t *testing.T) {
	const limit = 1024
	const entryHeaderBytes = 24 // index, term, type, data length
	defer wal.SetMaxBatchBytes(limit)()
	entry := func(index, term uint64, dataBytes int) raft.Entry {
		return raft.Entry{Index: index, Term: term, Type: raft.EntryNormal, Data: bytes.Repeat([]byte{'e'}, dataBytes)}
	}
	fs, err := wal.NewOSFS(t.TempDir())
	must(t, err)
	w := open(t, fs, wal.Options{})
	must(t, w.Append(ents(1, 3, 1)))
	if err := w.Append([]raft.Entry{entry(4, 1, limit-entryHeaderBytes)}); err != nil {
		t.Fatalf("a batch of exactly %d bytes: %v", limit, err)
	}
	want := readAll(t, w)
	over := map[string][]raft.Entry{
		"one entry":          {entry(5, 1, limit-entryHeaderBytes+1)},
		"two entries":        {entry(5, 1, limit/2-entryHeaderBytes), entry(6, 1, limit/2-entryHeaderBytes+1)},
		"replacing a suffix": {entry(3, 2, limit-entryHeaderBytes+1)},
	}
	for name, batch := range over {
		err := w.Append(batch)
		if err == nil || !strings.Contains(err.Error(), "exceeds") {
			t.Fatalf("%s, one byte over the limit: %v", name, err)
		}
		if got := readAll(t, w); !sameEntries(got, want) {
			t.Fatalf("%s: the refused batch changed the log: %d entries, last %d", name, len(got), w.LastIndex())
		}
	}
	must(t, w.Append(ents(5, 6, 1)))
	want = append(want, ents(5, 6, 1)...)
	must(t, w.Close())
	w = open(t, fs, wal.Options{})
	defer w.Close()
	if got := readAll(t, w); !sameEntries(got, want) {
		t.Fatalf("after reopen: %d entries, want %d", len(got), len(want))
	}
}
