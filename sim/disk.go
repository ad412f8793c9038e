package sim

import "github.com/dqlite-go/dqlite/internal/faultfs"

// Disk is a node's simulated data directory (see faultfs.Disk): the log
// and the database files live on it.
type Disk = faultfs.Disk

// NewDisk returns an empty disk whose random choices come from seed.
func NewDisk(seed uint64) *Disk { return faultfs.NewDisk(seed) }

// ErrCrashed is returned by every operation of a Disk past its crash point.
var ErrCrashed = faultfs.ErrCrashed
