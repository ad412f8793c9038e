package driver_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/driver"
	"github.com/dqlite-go/dqlite/internal/testcluster"
	"github.com/dqlite-go/dqlite/internal/tlstest"
	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/wire"
)

// TestMutualTLS runs a cluster whose peer links and client connections use
// mutual TLS: a client with a certificate of the cluster's CA works; a
// plain-TCP client and a client with a certificate of another CA are
// refused.
func TestMutualTLS(t *testing.T) {
	cfg, other := tlstest.Config(t)
	c := testcluster.Start(t, 3, func(nc *node.Config) { nc.TLS = cfg })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.Leader(t, ctx) // elections need the TLS peer links

	cn := driver.NewConnector(c.Addrs, "test")
	cn.TLS = cfg
	db := sql.OpenDB(cn)
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (x); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 1 {
		t.Fatalf("query over TLS: %d %v", n, err)
	}

	short, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if conn, err := wire.FindLeader(short, c.Addrs, nil); err == nil {
		conn.Close()
		t.Fatal("a plain-TCP client reached the leader of a TLS cluster")
	}
	if conn, err := wire.FindLeader(short, c.Addrs, other); err == nil {
		conn.Close()
		t.Fatal("a client with a certificate of another CA was accepted")
	}
}
