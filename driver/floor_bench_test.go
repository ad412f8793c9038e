package driver_test

import (
	"bufio"
	"context"
	"database/sql"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/dqlite-go/dqlite/driver"
	"github.com/dqlite-go/dqlite/wire"
)

// floorBackend answers every query with one constant row and does nothing
// else: what remains of a point read's cost is the protocol, the socket,
// the server's session goroutine and the client (database/sql and this
// driver).
type floorBackend struct{ addr string }

func (f floorBackend) Leader() (uint64, string)                              { return 1, f.addr }
func (floorBackend) IsLeader() bool                                          { return true }
func (floorBackend) Open(context.Context, string) error                      { return nil }
func (floorBackend) EndSession(uint64)                                       {}
func (floorBackend) Interrupt(uint64)                                        {}
func (f floorBackend) Cluster() []wire.ServerInfo                            { return []wire.ServerInfo{{ID: 1, Address: f.addr}} }
func (floorBackend) Dump(context.Context, string) ([]byte, error)            { return nil, nil }
func (floorBackend) Add(context.Context, uint64, string) error               { return nil }
func (floorBackend) Assign(context.Context, uint64, uint64) error            { return nil }
func (floorBackend) Remove(context.Context, uint64) error                    { return nil }
func (floorBackend) Transfer(context.Context, uint64) error                  { return nil }
func (floorBackend) Describe() (uint64, uint64)                              { return 0, 0 }
func (floorBackend) SetWeight(uint64) error                                  { return nil }
func (floorBackend) ErrorCode(err error) (uint64, string)                    { return wire.CodeLeaderExec, err.Error() }
func (floorBackend) Peer(c net.Conn, _ *bufio.Reader, _ uint64, _ string)    { c.Close() }
func (floorBackend) Exec(context.Context, *wire.Write) (int64, int64, error) { return 0, 1, nil }
func (floorBackend) Query(context.Context, *wire.Write) (wire.Cursor, error) {
	return &floorCursor{}, nil
}
func (floorBackend) Prepare(context.Context, uint64, string, string) (int, int, error) {
	return 1, 0, nil
}

type floorCursor struct{ done bool }

func (c *floorCursor) Columns() []string { return []string{"v"} }
func (c *floorCursor) Next(add func([]wire.Value) bool) (bool, error) {
	if !c.done {
		c.done = true
		add([]wire.Value{{Type: wire.Text, V: "value 1"}})
	}
	return true, nil
}
func (c *floorCursor) Close() {}

// BenchmarkProtocolFloor is a point read through database/sql and this
// driver against a server that does no work: the ceiling any server behind
// the protocol reaches on this machine (client and server in one process,
// sharing its cores, as the benchmark's processes share them). Run with
// -cpu to vary GOMAXPROCS; "clients" is the number of goroutines querying.
//
//	go test ./driver -run '^$' -bench ProtocolFloor -benchtime 3s
func BenchmarkProtocolFloor(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := wire.NewServer(floorBackend{addr: ln.Addr().String()}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			srv.Go(c)
		}
	}()
	defer func() { ln.Close(); srv.Close() }()
	for _, clients := range []int{1, 32} {
		b.Run(map[int]string{1: "clients=1", 32: "clients=32"}[clients], func(b *testing.B) {
			db := sql.OpenDB(driver.NewConnector([]string{ln.Addr().String()}, "bench"))
			defer db.Close()
			db.SetMaxOpenConns(clients)
			db.SetMaxIdleConns(clients)
			ctx := context.Background()
			read := func() error {
				var v string
				return db.QueryRowContext(ctx, "SELECT v FROM t WHERE k = ?", 1).Scan(&v)
			}
			if err := read(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			if clients == 1 {
				for i := 0; i < b.N; i++ {
					if err := read(); err != nil {
						b.Fatal(err)
					}
				}
			} else {
				b.SetParallelism((clients + 1) / 2) // x GOMAXPROCS (2 here) goroutines
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := read(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
