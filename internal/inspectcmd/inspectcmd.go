// Package inspectcmd is the data directory inspection shared by
// dqlite-inspect and dqlited inspect.
package inspectcmd

import (
	"fmt"
	"io"
	"os"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/wal"
)

// Run prints and verifies the data directory dir (repairing its log first
// when repair is set) and returns the exit status: 0 when every checksum
// verifies, 1 on corruption or a failed repair, 2 on bad usage.
func Run(out io.Writer, dir string, repair bool) int {
	if _, err := os.Stat(dir); err != nil {
		fmt.Fprintln(out, "error:", err)
		return 2
	}
	fs := &wal.OSFS{Dir: dir}
	if repair {
		acts, err := wal.Repair(fs)
		for _, a := range acts {
			if a.Offset < 0 {
				fmt.Fprintf(out, "dropped %s (%d bytes, entries %d..%d): %s\n", a.File, a.Bytes, a.First, a.Last, a.Description)
			} else {
				fmt.Fprintf(out, "dropped %d bytes of %s from offset %d: %s\n", a.Bytes, a.File, a.Offset, a.Description)
			}
		}
		if err != nil {
			fmt.Fprintln(out, "repair failed:", err)
			return 1
		}
		if len(acts) == 0 {
			fmt.Fprintln(out, "nothing to repair in the log")
		}
	}
	ins, err := wal.Inspect(fs)
	if err != nil {
		fmt.Fprintln(out, "error:", err)
		return 2
	}
	if ins.HasHard {
		fmt.Fprintf(out, "term %d, vote %d\n", ins.Hard.Term, ins.Hard.Vote)
	} else if ins.HardErr == "" {
		fmt.Fprintln(out, "no term and vote recorded")
	}
	for _, s := range ins.Snapshots {
		if s.Problem != "" {
			fmt.Fprintf(out, "snapshot %s: %s\n", s.Name, s.Problem)
			continue
		}
		fmt.Fprintf(out, "snapshot %s: index %d term %d, %d bytes, members %s\n", s.Name, s.Index, s.Term, s.DataBytes, s.Config)
	}
	for _, s := range ins.Segments {
		status := "ok"
		if s.Problem != "" {
			status = fmt.Sprintf("BAD at offset %d: %s", s.BadOffset, s.Problem)
		}
		fmt.Fprintf(out, "segment %s: id %d, entries %d..%d (%d), terms %d..%d, %d bytes: %s\n",
			s.Name, s.ID, s.First, s.Last, s.Entries, s.FirstTerm, s.LastTerm, s.Bytes, status)
	}
	for _, t := range ins.Temporary {
		fmt.Fprintf(out, "temporary file %s (an interrupted write; removed at start)\n", t)
	}
	corrupt := ins.Corruption
	files, err := fsm.InspectFiles(fs)
	if err != nil {
		fmt.Fprintln(out, "error:", err)
		return 2
	}
	corrupt = append(corrupt, files.Problems...)
	if !files.Recorded {
		fmt.Fprintln(out, "no database record (databases kept in the log's snapshots, or none yet)")
	}
	for _, d := range files.Databases {
		status := "ok"
		if d.Problem != "" {
			status = "BAD: " + d.Problem
			corrupt = append(corrupt, fmt.Sprintf("database %q (%s): %s", d.Name, d.File, d.Problem))
		}
		fmt.Fprintf(out, "database %q: %s, page size %d, %d pages (%d bytes), reflects entries up to %d (may hold pages up to %d; mark %d): %s\n",
			d.Name, d.File, d.PageSize, d.Pages, d.Bytes, d.Index, d.Dirty, d.Mark, status)
	}
	for _, f := range files.Unrecorded {
		fmt.Fprintf(out, "database file %s is not in the record (an interrupted install or creation; removed at start)\n", f)
	}
	if len(ins.Segments) > 0 && files.Recorded {
		low := ^uint64(0)
		for _, d := range files.Databases {
			low = min(low, d.Index)
		}
		images := len(ins.Snapshots) > 0 && ins.Snapshots[len(ins.Snapshots)-1].DataBytes > int64(len(fsm.SnapshotMarker))
		if first := ins.Segments[0].First; len(files.Databases) > 0 && first > low+1 && !images {
			corrupt = append(corrupt, fmt.Sprintf("the log starts at %d but a database file reflects entries only up to %d", first, low))
		}
	}
	if len(corrupt) > 0 {
		for _, c := range corrupt {
			fmt.Fprintln(out, "CORRUPTION:", c)
		}
		return 1
	}
	fmt.Fprintln(out, "all checksums verify")
	return 0
}
