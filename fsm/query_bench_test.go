package fsm_test

import (
	"testing"

	"github.com/dqlite-go/dqlite/fsm"
)

// BenchmarkPointQuery: one point read on a read connection (open, step,
// close), the work of a leader's QUERY_SQL of `SELECT v FROM t WHERE k =
// ?` inside the loop.
func BenchmarkPointQuery(b *testing.B) {
	s := newSolo(b, fsm.ModeFrames)
	s.exec("", "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
	s.exec("", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000) INSERT INTO t SELECT i, printf('value %d', i) FROM n")
	i := int64(0)
	for b.Loop() {
		i++
		cur, err := s.db.OpenCursor("", "SELECT v FROM t WHERE k = ?", i%1000+1)
		if err != nil {
			b.Fatal(err)
		}
		if more, err := cur.Step(); err != nil || !more {
			b.Fatal(more, err)
		}
		_ = cur.Column(0)
		s.db.CloseCursor(cur)
	}
}
