package driver_test

import (
	"context"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/internal/testcluster"
)

// BenchmarkDriverVsNode measures point queries and single-row autocommit
// inserts through the wire protocol and database/sql against the same work
// through the leader's in-process API, on one 3-node loopback cluster in
// one run:
//
//	go test ./driver -run XXX -bench DriverVsNode -benchtime 2000x -count 3
func BenchmarkDriverVsNode(b *testing.B) {
	c := testcluster.Start(b, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	leader := c.Nodes[c.Leader(b, ctx)]
	if _, err := leader.Exec(ctx, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)"); err != nil {
		b.Fatal(err)
	}
	if _, err := leader.Exec(ctx, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000) "+
		"INSERT INTO kv SELECT i, printf('value %d', i) FROM n"); err != nil {
		b.Fatal(err)
	}
	db := openDB(b, c.Addrs)
	db.SetMaxOpenConns(1)
	next := int64(1_000_000)
	b.Run("point-query/node", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			rows, err := leader.Query(ctx, "SELECT v FROM kv WHERE k = ?", int64(i%1000+1))
			if err != nil || len(rows) != 1 {
				b.Fatal(err)
			}
		}
	})
	b.Run("point-query/driver", func(b *testing.B) {
		var v string
		for i := 0; i < b.N; i++ {
			if err := db.QueryRowContext(ctx, "SELECT v FROM kv WHERE k = ?", int64(i%1000+1)).Scan(&v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("insert/node", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			next++
			if _, err := leader.Exec(ctx, "INSERT INTO kv VALUES (?, 'x')", next); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("insert/driver", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			next++
			if _, err := db.ExecContext(ctx, "INSERT INTO kv VALUES (?, 'x')", next); err != nil {
				b.Fatal(err)
			}
		}
	})
}
