package driver_test

import (
	"context"
	"database/sql"
	"log"

	_ "github.com/dqlite-go/dqlite/driver"
	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/raft"
)

// Example_embedding is the README's embedding example: one node of a
// three-node cluster, used through database/sql. (Compiled, not run: it
// needs the other two machines.)
func Example_embedding() {
	ctx := context.Background()
	n, err := node.New(node.Config{ID: 1, Address: "10.0.0.1:9001", Dir: "/var/lib/app/dqlite",
		Bootstrap: []raft.Server{{ID: 1, Address: "10.0.0.1:9001", Role: raft.Voter},
			{ID: 2, Address: "10.0.0.2:9001", Role: raft.Voter}, {ID: 3, Address: "10.0.0.3:9001", Role: raft.Voter}}})
	if err != nil {
		log.Fatal(err)
	}
	defer n.Close()
	db, err := sql.Open("dqlite", "10.0.0.1:9001,10.0.0.2:9001,10.0.0.3:9001/app")
	if err != nil {
		log.Fatal(err)
	}
	_, err = db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS t (x); INSERT INTO t VALUES (?)", 42)
	if err != nil {
		log.Fatal(err)
	}
	var count int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&count); err != nil { // linearizable, from any node
		log.Fatal(err)
	}
}
