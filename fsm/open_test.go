package fsm_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/faultfs"
	"github.com/dqlite-go/dqlite/vfs"
)

// openMode opens a node's databases in mode as a node would: frames mode
// in files (here on an in-memory faulty disk), statement mode in memory.
// The DB owns its VFS (Close closes both).
func openMode(name string, seed uint64, mode fsm.Mode) (*fsm.DB, error) {
	if mode == fsm.ModeFrames {
		return fsm.OpenFiles(faultfs.NewDisk(seed), name, seed, "db", 4096, mode)
	}
	v, err := vfs.New(name, seed, false)
	if err != nil {
		return nil, err
	}
	db, err := fsm.Open(v, "db", 4096, mode)
	if err != nil {
		v.Close()
		return nil, err
	}
	db.OwnVFS()
	return db, nil
}

// TestOpenRefusesFramesInMemory: frames mode has one path, the files;
// only statement mode opens its databases in memory.
func TestOpenRefusesFramesInMemory(t *testing.T) {
	v, err := vfs.New(fmt.Sprintf("open-%d", vfsSeq.Add(1)), 1, false)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if db, err := fsm.Open(v, "db", 4096, fsm.ModeFrames); !errors.Is(err, fsm.ErrFramesNeedFiles) {
		if db != nil {
			db.Close()
		}
		t.Fatalf("opening frames mode in memory: %v, want ErrFramesNeedFiles", err)
	}
	db, err := fsm.Open(v, "db", 4096, fsm.ModeStatements)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
}
