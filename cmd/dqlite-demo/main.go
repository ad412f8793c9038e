// Command dqlite-demo starts a 3-node dqlite-go cluster on loopback, with
// data in a temporary directory (or -dir), and serves a small HTTP API on
// each node:
//
//	curl -d "CREATE TABLE t (x)" http://127.0.0.1:8001/exec
//	curl -d "INSERT INTO t VALUES (42)" http://127.0.0.1:8002/exec
//	curl -G --data-urlencode "sql=SELECT * FROM t" http://127.0.0.1:8003/query
//
// Writes and reads sent to a follower are forwarded to the leader. It runs
// until interrupted, or for -duration.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/raft"
)

func main() {
	dir := flag.String("dir", "", "data directory (default: a new temporary directory)")
	httpBase := flag.Int("http", 8001, "first HTTP port (one per node)")
	peerBase := flag.Int("peer", 9001, "first Raft port (one per node)")
	duration := flag.Duration("duration", 0, "stop after this long (0: until interrupted)")
	flag.Parse()
	if err := run(context.Background(), *dir, *httpBase, *peerBase, *duration, os.Stdout, nil); err != nil {
		fmt.Fprintln(os.Stderr, "dqlite-demo:", err)
		os.Exit(1)
	}
}

// run starts the cluster and serves until the context ends; ready (if not
// nil) is called once a leader is elected and the HTTP API listens.
func run(parent context.Context, dir string, httpBase, peerBase int, duration time.Duration, out io.Writer, ready func()) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "dqlite-demo-")
		if err != nil {
			return err
		}
		dir = d
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	var servers []raft.Server
	for i := 1; i <= 3; i++ {
		servers = append(servers, raft.Server{ID: raft.NodeID(i), Role: raft.Voter,
			Address: fmt.Sprintf("127.0.0.1:%d", peerBase+i-1)})
	}
	var nodes []*node.Node
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()
	for i := 1; i <= 3; i++ {
		n, err := node.New(node.Config{ID: raft.NodeID(i), Address: servers[i-1].Address,
			Dir: filepath.Join(dir, fmt.Sprint("node", i)), Bootstrap: servers, Logger: logger})
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	var srvs []*http.Server
	for i := range nodes {
		addr := fmt.Sprintf("127.0.0.1:%d", httpBase+i)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: handler(nodes), ReadHeaderTimeout: 5 * time.Second}
		srvs = append(srvs, srv)
		go srv.Serve(ln)
	}
	defer func() {
		for _, s := range srvs {
			s.Close()
		}
	}()
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	lead, err := nodes[0].WaitLeader(waitCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("no leader elected: %w", err)
	}
	fmt.Fprintf(out, "dqlite-go demo: 3 nodes, data in %s, leader is node %d\n", dir, lead)
	fmt.Fprintf(out, "  curl -d \"CREATE TABLE t (x)\" http://127.0.0.1:%d/exec\n", httpBase)
	fmt.Fprintf(out, "  curl -d \"INSERT INTO t VALUES (42)\" http://127.0.0.1:%d/exec\n", httpBase+1)
	fmt.Fprintf(out, "  curl -G --data-urlencode \"sql=SELECT * FROM t\" http://127.0.0.1:%d/query\n", httpBase+2)
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	return nil
}

// handler serves /exec (POST body: SQL) and /query (?sql=) on the leader.
func handler(nodes []*node.Node) http.Handler {
	leader := func(ctx context.Context) (*node.Node, error) {
		id, err := nodes[0].WaitLeader(ctx)
		if err != nil {
			return nil, err
		}
		return nodes[id-1], nil
	}
	reply := func(w http.ResponseWriter, v any, err error) {
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		json.NewEncoder(w).Encode(v)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/exec", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			reply(w, nil, err)
			return
		}
		n, err := leader(ctx)
		if err != nil {
			reply(w, nil, err)
			return
		}
		res, err := n.Exec(ctx, string(body))
		reply(w, map[string]int64{"last_insert_id": res.LastInsertID, "rows_affected": res.RowsAffected}, err)
	})
	mux.HandleFunc("/query", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		n, err := leader(ctx)
		if err != nil {
			reply(w, nil, err)
			return
		}
		rows, err := n.Query(ctx, r.URL.Query().Get("sql"))
		reply(w, map[string]any{"rows": rows}, err)
	})
	return mux
}
