package wal

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkConcurrentSync measures what the disk does when several nodes
// share it, as the 3-node benchmarks on one machine do: 1, 2 or 3 files
// each get a 4 KiB write and an fdatasync at the same moment, in rounds.
// It reports the mean time of a round (all syncs done) and of the second
// completion (a 3-node quorum's two copies). On a disk that serializes
// cache flushes, the second completion of three costs about two flushes:
// the floor under a 3-node sequential commit on one machine, against one
// flush for single-node SQLite.
func BenchmarkConcurrentSync(b *testing.B) {
	for _, par := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("files-%d", par), func(b *testing.B) {
			fs := &OSFS{Dir: b.TempDir()}
			var files []File
			for i := 0; i < par; i++ {
				f, err := fs.Create(fmt.Sprintf("f%d", i))
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				// Preallocated like a segment: overwrites need no metadata.
				if _, err := f.WriteAt(make([]byte, 16<<20), 0); err != nil {
					b.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				files = append(files, f)
			}
			buf := make([]byte, 4096)
			var second time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				off := int64(i%4000) * 4096
				start := time.Now()
				done := make(chan time.Duration, par)
				var wg sync.WaitGroup
				for _, f := range files {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if _, err := f.WriteAt(buf, off); err != nil {
							b.Error(err)
						}
						if err := f.Sync(); err != nil {
							b.Error(err)
						}
						done <- time.Since(start)
					}()
				}
				wg.Wait()
				close(done)
				k := 0
				for d := range done {
					k++
					if k == min(2, par) {
						second += d
					}
				}
			}
			b.ReportMetric(float64(second.Microseconds())/float64(b.N), "us/quorum")
		})
	}
}
