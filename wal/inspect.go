package wal

import (
	"fmt"
	"sort"
	"strings"

	"github.com/dqlite-go/dqlite/raft"
)

// SegmentInfo describes one segment file as found on disk.
type SegmentInfo struct {
	Name                string
	ID, First, Last     uint64 // Last < First when empty
	FirstTerm, LastTerm uint64
	Entries             int
	Bytes               int64
	// BadOffset is where verification failed (-1 if the file verifies);
	// Problem says why.
	BadOffset int64
	Problem   string
}

// SnapshotInfo describes one snapshot file.
type SnapshotInfo struct {
	Name        string
	Index, Term uint64
	Config      string
	DataBytes   int64
	Problem     string
}

// Inspection is a read-only report of a data directory.
type Inspection struct {
	Hard       raft.HardState
	HasHard    bool
	HardErr    string
	Segments   []SegmentInfo
	Snapshots  []SnapshotInfo
	Temporary  []string
	Corruption []string // every problem found, in file order
}

// Inspect verifies every checksum of a data directory without changing it.
func Inspect(fs FS) (*Inspection, error) {
	names, err := fs.List()
	if err != nil {
		return nil, err
	}
	ins := &Inspection{}
	for _, n := range names {
		switch {
		case n == metaName:
			ins.inspectMeta(fs)
		case strings.HasSuffix(n, ".tmp"):
			ins.Temporary = append(ins.Temporary, n)
		case strings.HasPrefix(n, "snap-"):
			ins.inspectSnapshot(fs, n)
		case strings.HasPrefix(n, "seg-"):
			ins.Segments = append(ins.Segments, inspectSegment(fs, n))
		}
	}
	sort.Slice(ins.Segments, func(i, j int) bool { return ins.Segments[i].Name < ins.Segments[j].Name })
	for i, s := range ins.Segments {
		if s.Problem != "" {
			ins.Corruption = append(ins.Corruption, fmt.Sprintf("%s at offset %d (after entry %d): %s",
				s.Name, s.BadOffset, s.Last, s.Problem))
		}
		if i > 0 && s.First != ins.Segments[i-1].Last+1 && ins.Segments[i-1].Problem == "" {
			ins.Corruption = append(ins.Corruption, fmt.Sprintf("%s starts at %d but %s ends at %d",
				s.Name, s.First, ins.Segments[i-1].Name, ins.Segments[i-1].Last))
		}
	}
	return ins, nil
}

func (ins *Inspection) inspectMeta(fs FS) {
	b, err := readAll(fs, metaName)
	if err != nil {
		ins.HardErr = err.Error()
	} else if m, ok := decodeMeta(b); ok && len(b) == metaBytes {
		ins.Hard, ins.HasHard = m.hard, true
	} else {
		ins.HardErr = "term and vote record fails its checksum"
	}
	if ins.HardErr != "" {
		ins.Corruption = append(ins.Corruption, metaName+": "+ins.HardErr)
	}
}

func (ins *Inspection) inspectSnapshot(fs FS, name string) {
	info := SnapshotInfo{Name: name}
	b, err := readAll(fs, name)
	if err == nil {
		var s snapInfo
		if s, err = parseSnapshot(name, b); err == nil {
			info.Index, info.Term, info.Config, info.DataBytes = s.meta.Index, s.meta.Term, s.meta.Config.String(), s.dataLen
		}
	}
	if err != nil {
		info.Problem = err.Error()
		ins.Corruption = append(ins.Corruption, name+": "+info.Problem)
	}
	ins.Snapshots = append(ins.Snapshots, info)
}

func inspectSegment(fs FS, name string) SegmentInfo {
	info := SegmentInfo{Name: name, BadOffset: -1}
	f, err := fs.Open(name)
	if err != nil {
		info.Problem, info.BadOffset = err.Error(), 0
		return info
	}
	defer f.Close()
	size, _ := f.Size()
	info.Bytes = size
	hb := make([]byte, segmentHeaderBytes)
	_, herr := f.ReadAt(hb, 0)
	hdr, err := decodeSegmentHeader(hb)
	if herr != nil || err != nil {
		info.Problem, info.BadOffset = fmt.Sprintf("header: %v %v", herr, err), 0
		return info
	}
	info.ID, info.First, info.Last, info.FirstTerm = hdr.id, hdr.firstIndex, hdr.firstIndex-1, hdr.firstTerm
	off := int64(segmentHeaderBytes)
	for off < size {
		locs, n, err := readBatch(f, off, size, info.Last+1)
		if err != nil {
			info.Problem, info.BadOffset = err.Error(), off
			return info
		}
		if n == 0 {
			break
		}
		info.Entries += len(locs)
		info.Last += uint64(len(locs))
		info.LastTerm = locs[len(locs)-1].term
		off += n
	}
	return info
}

// RepairAction is one change Repair made.
type RepairAction struct {
	File        string
	Offset      int64  // where the file was cut (-1: file removed)
	Bytes       int64  // bytes dropped
	First, Last uint64 // entries dropped (Last < First when unknown)
	Description string
}

// Repair cuts the log after the last entry that verifies: the first bad
// segment is truncated at its first bad batch (removed if its header is bad)
// and every later segment is removed. Snapshots and metadata are not
// touched: a bad one is reported by Inspect and must be dealt with by hand.
// It returns exactly what was dropped.
func Repair(fs FS) ([]RepairAction, error) {
	ins, err := Inspect(fs)
	if err != nil {
		return nil, err
	}
	var acts []RepairAction
	cut := false
	for i, s := range ins.Segments {
		gap := i > 0 && s.First != ins.Segments[i-1].Last+1
		switch {
		case cut || gap || s.BadOffset == 0:
			if err := fs.Remove(s.Name); err != nil {
				return acts, err
			}
			acts = append(acts, RepairAction{File: s.Name, Offset: -1, Bytes: s.Bytes, First: s.First,
				Last: s.Last, Description: "removed segment"})
			cut = true
		case s.BadOffset > 0:
			f, err := fs.Open(s.Name)
			if err != nil {
				return acts, err
			}
			err = f.Truncate(s.BadOffset)
			if err == nil {
				err = f.Sync()
			}
			f.Close()
			if err != nil {
				return acts, err
			}
			acts = append(acts, RepairAction{File: s.Name, Offset: s.BadOffset, Bytes: s.Bytes - s.BadOffset,
				First: s.Last + 1, Last: s.Last, Description: "truncated after entry " + fmt.Sprint(s.Last) + ": " + s.Problem})
			cut = true
		}
	}
	if len(acts) > 0 {
		return acts, fs.SyncDir()
	}
	return acts, nil
}
