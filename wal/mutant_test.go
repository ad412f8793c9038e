package wal_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/sim"
	"github.com/dqlite-go/dqlite/wal"
)

// corruptReadBack reads back, after a reopen (nothing cached), entries
// whose data comes back from the disk with a flipped bit.
func corruptReadBack(t *testing.T) error {
	disk := sim.NewDisk(21)
	w := open(t, disk, wal.Options{SegmentSizeMax: 4096})
	must(t, w.Append(ents(1, 5, 1)))
	must(t, w.Close())
	w = open(t, disk, wal.Options{SegmentSizeMax: 4096})
	defer w.Close()
	disk.CorruptReadAt(1)
	got, err := w.Entries(1, 6, ^uint64(0))
	if disk.CorruptReads != 1 {
		t.Fatalf("setup: %d corrupt reads", disk.CorruptReads)
	}
	if err == nil && sameEntries(got, ents(1, 5, 1)) {
		t.Fatal("setup: the corrupt read changed no entry data")
	}
	return err
}

// TestCorruptReadIsCorruption checks entry data read back from a segment is
// checked against its checksum: a corrupt read is a CorruptionError, never
// an entry; with mutant.WALNoReadCRC the damaged data is returned.
func TestCorruptReadIsCorruption(t *testing.T) {
	if err := corruptReadBack(t); !wal.IsCorruption(err) {
		t.Fatalf("corrupt read: %v, want a corruption error", err)
	}
	t.Run("mutant", func(t *testing.T) {
		mutant.Use(t, mutant.WALNoReadCRC)
		if err := corruptReadBack(t); err != nil {
			t.Fatalf("%s: corrupt read still refused: %v", mutant.WALNoReadCRC, err)
		}
	})
}

// appendAfterTornTail tears the last batch, reopens the log, appends and
// reopens it again; it returns the second reopen's error.
func appendAfterTornTail(t *testing.T) (*wal.WAL, error) {
	dir := t.TempDir()
	fs, err := wal.NewOSFS(dir)
	must(t, err)
	opts := wal.Options{NoPreallocate: true, Logger: quiet}
	w := open(t, fs, opts)
	must(t, w.Append(ents(1, 5, 1)))
	must(t, w.Append(ents(6, 8, 1)))
	must(t, w.Close())
	name := filepath.Join(dir, "seg-00000000000000000001.log")
	fi, err := os.Stat(name)
	must(t, err)
	must(t, os.Truncate(name, fi.Size()-10))
	w = open(t, fs, opts)
	if w.LastIndex() != 5 {
		t.Fatalf("torn tail recovered to %d, want 5", w.LastIndex())
	}
	must(t, w.Append(ents(6, 7, 2)))
	must(t, w.Close())
	w, _, err = wal.Open(fs, opts)
	return w, err
}

// TestTornTailCutBeforeAppends checks recovery cuts a torn tail off the
// file, so the batches appended next follow the last good one and the log
// reopens with them; with mutant.WALRecoverKeepsTorn they land after the
// torn bytes and the next start finds corruption in the middle of the log.
func TestTornTailCutBeforeAppends(t *testing.T) {
	w, err := appendAfterTornTail(t)
	must(t, err)
	if got := readAll(t, w); !sameEntries(got, append(ents(1, 5, 1), ents(6, 7, 2)...)) {
		t.Fatalf("entries after the second reopen: %v", got)
	}
	must(t, w.Close())
	t.Run("mutant", func(t *testing.T) {
		mutant.Use(t, mutant.WALRecoverKeepsTorn)
		w, err := appendAfterTornTail(t)
		if err == nil {
			w.Close()
		}
		if !wal.IsCorruption(err) {
			t.Fatalf("%s: second reopen: %v, want the kept torn batch reported as corruption", mutant.WALRecoverKeepsTorn, err)
		}
	})
}
