package fsm_test

import (
	"crypto/rand"
	"strings"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/faultfs"
	"github.com/dqlite-go/dqlite/raft"
)

// BenchmarkExecute10MB: the leader executing the large workload's load
// request (one INSERT of 10,000 blobs of 1,000 bytes as parameters); the
// entry is applied and the WAL checkpointed between iterations (not
// timed).
func BenchmarkExecute10MB(b *testing.B) {
	n := &fileNode{t: b, disk: faultfs.NewDisk(7)}
	n.open()
	defer n.db.Close()
	n.write("CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB)")
	var sql strings.Builder
	sql.WriteString("INSERT INTO big (b) VALUES (?)")
	for i := 1; i < 10_000; i++ {
		sql.WriteString(",(?)")
	}
	params := make([]fsm.Value, 10_000)
	for i := range params {
		params[i] = fsm.Value{Type: fsm.TypeBlob, Blob: make([]byte, 1000)}
		rand.Read(params[i].Blob)
	}
	item := &fsm.BatchItem{SQL: sql.String(), Params: params}
	b.SetBytes(10_000_000)
	for b.Loop() {
		cmd, _, errs := n.db.ExecuteBatch([]any{item})
		if errs[0] != nil {
			b.Fatal(errs[0])
		}
		b.StopTimer()
		e := raft.Entry{Index: uint64(len(n.log) + 1), Term: 1, Data: cmd}
		n.log = append(n.log, e)
		n.db.Proposed(e.Index, e.Term)
		if _, err := n.db.Apply(e); err != nil {
			b.Fatal(err)
		}
		n.db.AppliedTo(e.Index)
		if err := n.db.CheckpointAll(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
