package fsm_test

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/faultfs"
	"github.com/dqlite-go/dqlite/raft"
)

// TestReviewHostileInputs: random record bytes (with a valid checksum) and
// random stream headers must be refused, never panic.
func TestReviewHostileInputs(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tab := crc32.MakeTable(crc32.Castagnoli)
	for i := 0; i < 300; i++ {
		disk := faultfs.NewDisk(uint64(i))
		b := []byte("DQDBSv02")
		b = binary.LittleEndian.AppendUint64(b, uint64(rng.IntN(4)))
		b = binary.LittleEndian.AppendUint32(b, uint32(rng.IntN(3)))
		junk := make([]byte, rng.IntN(80))
		for j := range junk {
			junk[j] = byte(rng.IntN(256))
		}
		if rng.IntN(2) == 0 && len(junk) > 2 {
			binary.LittleEndian.PutUint16(junk, uint16(rng.IntN(8)))
		}
		b = append(b, junk...)
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, tab))
		f, _ := disk.Create("fsm-databases")
		f.WriteAt(b, 0)
		f.Sync()
		disk.SyncDir()
		db, err := fsm.OpenFiles(disk, fmt.Sprintf("fuzz-%d", vfsSeq.Add(1)), 1, "db", 4096, fsm.ModeFrames)
		if err == nil {
			db.Close()
		}
	}
	disk := faultfs.NewDisk(99)
	db, err := fsm.OpenFiles(disk, fmt.Sprintf("fuzz-%d", vfsSeq.Add(1)), 1, "db", 4096, fsm.ModeFrames)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for i := 0; i < 2000; i++ {
		h := []byte("DQSQLv03")
		h = binary.LittleEndian.AppendUint32(h, uint32(rng.IntN(4)))
		junk := make([]byte, rng.IntN(300))
		for j := range junk {
			junk[j] = byte(rng.IntN(256))
		}
		if rng.IntN(2) == 0 && len(junk) > 2 {
			binary.LittleEndian.PutUint16(junk, uint16(rng.IntN(6)))
		}
		h = append(h, junk...)
		meta := raft.SnapshotMeta{Index: uint64(i + 1), Term: 1}
		off := 0
		for off < len(h) {
			k := 1 + rng.IntN(len(h)-off)
			done := off+k == len(h)
			if err := db.WriteSnapshotChunk(meta, uint64(off), h[off:off+k], done); err != nil {
				break
			}
			off += k
		}
		_ = db.InstallReceived(meta.Index)
		db.AbortSnapshot()
	}
	names, _ := disk.List()
	t.Logf("files left: %v", names)
}
