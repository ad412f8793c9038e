package wal_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/dqlite-go/dqlite/raft"
	"github.com/dqlite-go/dqlite/sim"
	"github.com/dqlite-go/dqlite/wal"
)

// TestMatchesMemoryStorage drives the WAL and raft.MemoryStorage with the
// same random operations (appends that may replace a suffix, snapshots,
// received snapshots, hard states, reopens) and requires they answer every
// read the same way.
func TestMatchesMemoryStorage(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		disk := sim.NewDisk(rapid.Uint64().Draw(t, "seed"))
		opts := wal.Options{SegmentSizeMax: int64(rapid.IntRange(100, 2000).Draw(t, "segsize")),
			CacheBytes: int64(rapid.IntRange(1, 5000).Draw(t, "cache")), Logger: quiet}
		w := open(t, disk, opts)
		defer func() { w.Close() }()
		m := raft.NewMemoryStorage()
		term := uint64(1)
		t.Repeat(map[string]func(*rapid.T){
			"append": func(t *rapid.T) {
				last := m.LastIndex()
				from := rapid.Uint64Range(m.FirstIndex(), last+1).Draw(t, "from")
				if rapid.Bool().Draw(t, "newterm") {
					term++
				}
				es := ents(from, from+uint64(rapid.IntRange(0, 8).Draw(t, "n")), term)
				must(t, w.Append(es))
				must(t, m.Append(es))
			},
			"snapshot": func(t *rapid.T) {
				if m.LastIndex() <= m.Snapshot().Index {
					t.Skip("nothing to snapshot")
				}
				idx := rapid.Uint64Range(m.Snapshot().Index+1, m.LastIndex()).Draw(t, "index")
				tt, _ := m.Term(idx)
				meta := raft.SnapshotMeta{Index: idx, Term: tt, Config: members, ConfigIndex: 1}
				must(t, w.CreateSnapshot(meta, []byte(fmt.Sprint(idx))))
				must(t, m.CreateSnapshot(meta, []byte(fmt.Sprint(idx))))
			},
			"install": func(t *rapid.T) {
				term++
				idx := m.LastIndex() + uint64(rapid.IntRange(1, 10).Draw(t, "ahead"))
				s := raft.Snapshot{Meta: raft.SnapshotMeta{Index: idx, Term: term, Config: members}, Data: []byte("r")}
				must(t, w.InstallSnapshot(s))
				must(t, m.ApplySnapshot(s))
			},
			"hard": func(t *rapid.T) {
				hs := raft.HardState{Term: term, Vote: raft.NodeID(rapid.IntRange(0, 3).Draw(t, "vote"))}
				must(t, w.SetHardState(hs))
				m.SetHardState(hs)
			},
			"reopen": func(t *rapid.T) {
				w.Close()
				w = open(t, disk, opts)
			},
			"": func(t *rapid.T) {
				if w.LastIndex() != m.LastIndex() {
					t.Fatalf("last index %d, model %d", w.LastIndex(), m.LastIndex())
				}
				if w.FirstIndex() > m.FirstIndex() {
					t.Fatalf("first index %d beyond model %d", w.FirstIndex(), m.FirstIndex())
				}
				if hs, _ := w.InitialState(); hs != m.HardState() {
					t.Fatalf("hard state %+v, model %+v", hs, m.HardState())
				}
				if w.Snapshot().Index != m.Snapshot().Index {
					t.Fatalf("snapshot %d, model %d", w.Snapshot().Index, m.Snapshot().Index)
				}
				for i := m.FirstIndex() - 1; i <= m.LastIndex(); i++ {
					a, errA := w.Term(i)
					b, errB := m.Term(i)
					if a != b || (errA == nil) != (errB == nil) {
						t.Fatalf("term of %d: %d %v, model %d %v", i, a, errA, b, errB)
					}
				}
				if m.LastIndex() >= m.FirstIndex() {
					got, err := w.Entries(m.FirstIndex(), m.LastIndex()+1, ^uint64(0))
					must(t, err)
					want, _ := m.Entries(m.FirstIndex(), m.LastIndex()+1, ^uint64(0))
					if !sameEntries(got, want) {
						t.Fatalf("entries differ from the model")
					}
				}
			},
		})
	})
}

// BenchmarkAppend measures batched appends with fsync on the real file
// system against the raw limit: write + fdatasync of the same bytes.
func BenchmarkAppend(b *testing.B) {
	const batch = 16
	data := make([]byte, 4096-24)
	b.Run("wal", func(b *testing.B) {
		fs, err := wal.NewOSFS(b.TempDir())
		must(b, err)
		w := open(b, fs, wal.Options{})
		defer w.Close()
		idx := uint64(1)
		b.SetBytes(batch * 4096)
		start := time.Now()
		for i := 0; i < b.N; i++ {
			es := make([]raft.Entry, batch)
			for k := range es {
				es[k] = raft.Entry{Index: idx, Term: 1, Type: raft.EntryNormal, Data: data}
				idx++
			}
			must(b, w.Append(es))
		}
		b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "entries/s")
	})
	b.Run("raw", func(b *testing.B) {
		f, err := os.Create(b.TempDir() + "/raw")
		must(b, err)
		defer f.Close()
		buf := make([]byte, batch*4096)
		b.SetBytes(int64(len(buf)))
		var off int64
		start := time.Now()
		for i := 0; i < b.N; i++ {
			_, err := f.WriteAt(buf, off)
			must(b, err)
			must(b, f.Sync())
			off += int64(len(buf))
		}
		b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "entries/s")
	})
}
