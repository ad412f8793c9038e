package fsm

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/dqlite-go/dqlite/wal"
)

// A DUMP streamed from a database's file: the file holds every committed
// frame (a passive checkpoint on a free read connection), its checkpoints
// are paused while the dump is read (by the wire connection's goroutine,
// not the loop), and a dump that holds them back while the WAL passes
// MaxHeldWALBytes is aborted before they resume.

// ErrDumpLater: the database's file cannot be brought up to date now (a
// query reading an older state holds the WAL, no read connection is
// free): the client may try again.
var ErrDumpLater = errors.New("fsm: the database is busy, try the DUMP again")

// MaxDumps bounds the DUMPs reading one database's file at once (each
// holds its checkpoints back).
const MaxDumps = 4

// ErrDumpAborted: the dump held the database's checkpoints back while its
// WAL passed MaxHeldWALBytes (the client read it too slowly).
var ErrDumpAborted = errors.New("fsm: DUMP aborted: it held the database's checkpoints back too long")

// Dump is a database's file opened for a DUMP (see OpenDump). Read it
// from any goroutine; Close it, then call Release on the loop.
type Dump struct {
	f       wal.File
	size    int64
	off     int64
	aborted *atomic.Bool
	x       *database
}

// Size is the dump's length: the database file's.
func (u *Dump) Size() int64 { return u.size }

// Read reads the file in order; it fails with ErrDumpAborted once the loop
// aborted the dump.
func (u *Dump) Read(p []byte) (int, error) {
	if u.aborted.Load() {
		return 0, ErrDumpAborted
	}
	if u.off >= u.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), u.size-u.off)]
	n, err := u.f.ReadAt(p, u.off)
	u.off += int64(n)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err == nil && n < len(p) {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Close closes the file.
func (u *Dump) Close() error { return u.f.Close() }

// Release resumes the database's checkpoints (on the loop, after Close).
func (d *DB) Release(u *Dump) {
	if u.x.dumps > 0 {
		u.x.dumps--
	}
}

// OpenDump opens database name's file for a DUMP. It returns nil, nil for
// a database without a file of its own (in memory, or never written): its
// DUMP is the image (Image).
func (d *DB) OpenDump(name string) (*Dump, error) {
	defer d.end(d.begin(WorkSnapshot))
	if err := CheckDatabaseName(name); err != nil {
		return nil, err
	}
	x := d.dbs[name]
	if x == nil {
		return nil, fmt.Errorf("%w: %q", ErrNoDatabase, name)
	}
	if d.files == nil || !x.written {
		return nil, nil
	}
	id, ok := d.files.open[name]
	if !ok {
		return nil, nil
	}
	// No new dump while the ones open are many, aborted, or have let the
	// WAL grow long: the checkpoints must get their turn (a client sending
	// DUMP after DUMP would otherwise hold them back for good).
	if x.dumps >= MaxDumps || x.dumps > 0 && x.dumpAborted.Load() || d.vfs.WALSize(name) > MaxHeldWALBytes/2 {
		return nil, ErrDumpLater
	}
	if d.vfs.WALSize(name) != 0 {
		r, err := d.freeReader(x)
		if err != nil {
			return nil, ErrDumpLater
		}
		if err := d.markDirty(x); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrDumpLater, d.checkpointError(x, err))
		}
		if err := d.journal(x); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrDumpLater, d.checkpointError(x, err))
		}
		frames, copied, err := r.conn.CheckpointPassive()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrDumpLater, d.checkpointError(x, err))
		}
		if frames != copied {
			return nil, ErrDumpLater
		}
		if err := d.syncPassive(x); err != nil {
			return nil, err
		}
	}
	if err := d.vfs.FlushFile(name); err != nil {
		return nil, err
	}
	f, err := d.files.fs.Open(fileName(id))
	if err != nil {
		return nil, fmt.Errorf("fsm: opening %q for a DUMP: %w", name, err)
	}
	size, err := f.Size()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fsm: size of %q for a DUMP: %w", name, err)
	}
	if x.dumpAborted == nil || x.dumps == 0 {
		x.dumpAborted = &atomic.Bool{} // a new flag for the dumps from now on
	}
	x.dumps++
	return &Dump{f: f, size: size, aborted: x.dumpAborted, x: x}, nil
}

// abortLongDumps aborts the dumps of a database whose WAL they held past
// MaxHeldWALBytes; its checkpoints resume once they are released.
func (d *DB) abortLongDumps() {
	for _, x := range d.dbs {
		if x.dumps > 0 && x.dumpAborted != nil && d.vfs.WALSize(x.name) > MaxHeldWALBytes {
			x.dumpAborted.Store(true)
		}
	}
}
