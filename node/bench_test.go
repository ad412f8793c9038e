package node

import (
	"context"
	"database/sql"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
)

// BenchmarkInsert compares, in one run, autocommit single-row inserts on a
// single-node SQLite (mattn/go-sqlite3, WAL, synchronous=FULL, same disk)
// with a 3-node replicated cluster on loopback, sequentially and with 32
// concurrent clients. Each reports inserts/s.
func BenchmarkInsert(b *testing.B) {
	b.Run("sqlite-single-node-sequential", func(b *testing.B) {
		db, err := sql.Open("sqlite3", "file:"+filepath.Join(b.TempDir(), "db")+"?_journal_mode=WAL&_synchronous=FULL")
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		db.SetMaxOpenConns(1)
		if _, err := db.Exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if _, err := db.Exec("INSERT INTO t (v) VALUES (?)", "value"); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "inserts/s")
	})
	for _, clients := range []int{1, 32} {
		name := map[int]string{1: "replicated-3-nodes-sequential", 32: "replicated-3-nodes-32-clients"}[clients]
		b.Run(name, func(b *testing.B) {
			nodes := startCluster(b, 3)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			l := leaderOfB(b, ctx, nodes)
			if _, err := l.Exec(ctx, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for c := 0; c < clients; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if _, err := l.Exec(ctx, "INSERT INTO t (v) VALUES (?)", "value"); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "inserts/s")
		})
	}
}

func leaderOfB(b *testing.B, ctx context.Context, nodes []*Node) *Node {
	for {
		id, err := nodes[0].WaitLeader(ctx)
		if err != nil {
			b.Fatal(err)
		}
		l := nodes[id-1]
		if l.IsLeader() {
			return l
		}
		if err := l.WaitFor(ctx, func() bool { return l.IsLeaderLocked() }); err == nil {
			return l
		}
	}
}
