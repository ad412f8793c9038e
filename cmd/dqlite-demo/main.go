// Command dqlite-demo starts a 3-node dqlite-go cluster on loopback, with
// data in a temporary directory (or -dir), and serves a small HTTP API on
// each node:
//
//	curl -d "CREATE TABLE t (x)" http://127.0.0.1:8001/exec
//	curl -d "INSERT INTO t VALUES (42)" http://127.0.0.1:8002/exec
//	curl -G --data-urlencode "sql=SELECT * FROM t" http://127.0.0.1:8003/query
//
// and a key-value API:
//
//	curl -X PUT -d hello http://127.0.0.1:8001/kv/greeting
//	curl http://127.0.0.1:8003/kv/greeting
//
// Every node's API goes through the database/sql driver, which finds the
// leader wherever the request arrives. It runs until interrupted, or for
// -duration. With -failover it kills the leader under a write load and
// reports how long writes took to succeed again, then exits.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dqlite-go/dqlite/driver"
	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/raft"
)

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", "", "data directory (default: a new temporary directory)")
	flag.IntVar(&o.httpBase, "http", 8001, "first HTTP port (one per node)")
	flag.IntVar(&o.peerBase, "peer", 9001, "first node port (clients and peers; one per node)")
	flag.DurationVar(&o.duration, "duration", 0, "stop after this long (0: until interrupted)")
	flag.BoolVar(&o.failover, "failover", false, "kill the leader under write load, report the failover time, exit")
	flag.Parse()
	if err := run(context.Background(), o, os.Stdout, nil); err != nil {
		fmt.Fprintln(os.Stderr, "dqlite-demo:", err)
		os.Exit(1)
	}
}

type options struct {
	dir                string
	httpBase, peerBase int
	duration           time.Duration
	failover           bool
}

// run starts the cluster and serves until the context ends; ready (if not
// nil) is called once a leader is elected and the HTTP API listens.
func run(parent context.Context, o options, out io.Writer, ready func()) error {
	if o.dir == "" {
		d, err := os.MkdirTemp("", "dqlite-demo-")
		if err != nil {
			return err
		}
		o.dir = d
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	var servers []raft.Server
	var addrs []string
	for i := 1; i <= 3; i++ {
		a := fmt.Sprintf("127.0.0.1:%d", o.peerBase+i-1)
		servers = append(servers, raft.Server{ID: raft.NodeID(i), Role: raft.Voter, Address: a})
		addrs = append(addrs, a)
	}
	nodes := make([]*node.Node, 3)
	var nodesMu sync.Mutex
	defer func() {
		nodesMu.Lock()
		defer nodesMu.Unlock()
		for _, n := range nodes {
			if n != nil {
				n.Close()
			}
		}
	}()
	for i := 1; i <= 3; i++ {
		n, err := node.New(node.Config{ID: raft.NodeID(i), Address: servers[i-1].Address,
			Dir: filepath.Join(o.dir, fmt.Sprint("node", i)), Bootstrap: servers, Logger: logger})
		if err != nil {
			return err
		}
		nodes[i-1] = n
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt)
	defer stop()
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	db := sql.OpenDB(driver.NewConnector(addrs, "demo"))
	defer db.Close()
	var srvs []*http.Server
	defer func() {
		for _, s := range srvs {
			s.Close()
		}
	}()
	for i := range nodes {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", o.httpBase+i))
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: handler(db), ReadHeaderTimeout: 5 * time.Second}
		srvs = append(srvs, srv)
		go srv.Serve(ln)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	lead, err := nodes[0].WaitLeader(waitCtx)
	if err == nil {
		_, err = db.ExecContext(waitCtx, "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)")
	}
	cancel()
	if err != nil {
		return fmt.Errorf("cluster not ready: %w", err)
	}
	fmt.Fprintf(out, "dqlite-go demo: 3 nodes on %s, data in %s, leader is node %d\n", strings.Join(addrs, ","), o.dir, lead)
	fmt.Fprintf(out, "  curl -X PUT -d hello http://127.0.0.1:%d/kv/greeting\n", o.httpBase)
	fmt.Fprintf(out, "  curl http://127.0.0.1:%d/kv/greeting\n", o.httpBase+2)
	fmt.Fprintf(out, "  curl -d \"CREATE TABLE t (x)\" http://127.0.0.1:%d/exec\n", o.httpBase)
	fmt.Fprintf(out, "  curl -G --data-urlencode \"sql=SELECT * FROM kv\" http://127.0.0.1:%d/query\n", o.httpBase+1)
	fmt.Fprintf(out, "  go run ./cmd/dqlite -s %s demo      (the SQL shell)\n", strings.Join(addrs, ","))
	if ready != nil {
		ready()
	}
	if o.failover {
		return failover(ctx, db, nodes, &nodesMu, out)
	}
	<-ctx.Done()
	return nil
}

// failover writes through the driver from 4 clients, kills the leader,
// and reports the time from the kill until a write issued after it
// succeeded.
func failover(ctx context.Context, db *sql.DB, nodes []*node.Node, mu *sync.Mutex, out io.Writer) error {
	var ok, failed atomic.Int64
	var killedAt atomic.Int64 // unix nanos; 0 before the kill
	resumed := make(chan time.Duration, 1)
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; wctx.Err() == nil; i++ {
				start := time.Now().UnixNano()
				_, err := db.ExecContext(wctx, "INSERT OR REPLACE INTO kv VALUES (?, ?)", fmt.Sprintf("w%d-%d", w, i%100), fmt.Sprint(i))
				if err != nil {
					if wctx.Err() == nil {
						failed.Add(1)
					}
					continue
				}
				ok.Add(1)
				if k := killedAt.Load(); k != 0 && start > k {
					select {
					case resumed <- time.Duration(time.Now().UnixNano() - k):
					default:
					}
				}
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()
	// Let the load run, then kill the leader.
	for ok.Load() < 200 {
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
	id, err := nodes[0].WaitLeader(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "failover: %d writes done; killing the leader, node %d\n", ok.Load(), id)
	mu.Lock()
	killedAt.Store(time.Now().UnixNano())
	nodes[id-1].Close()
	nodes[id-1] = nil
	mu.Unlock()
	select {
	case d := <-resumed:
		fmt.Fprintf(out, "failover: writes succeeded again %v after the kill (election timeout 0.5-1 s); %d writes ok, %d failed\n",
			d.Round(time.Millisecond), ok.Load(), failed.Load())
		if failed.Load() > 0 {
			return errors.New("some writes failed during the failover")
		}
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("failover: writes did not resume within 30 s")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// handler serves /exec (POST body: SQL), /query (?sql=) and /kv/{key}
// (GET, PUT, DELETE) through the driver.
func handler(db *sql.DB) http.Handler {
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
		res, err := db.ExecContext(ctx, string(body))
		if err != nil {
			reply(w, nil, err)
			return
		}
		last, _ := res.LastInsertId()
		n, _ := res.RowsAffected()
		reply(w, map[string]int64{"last_insert_id": last, "rows_affected": n}, nil)
	})
	mux.HandleFunc("/query", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		rows, err := db.QueryContext(ctx, r.URL.Query().Get("sql"))
		if err != nil {
			reply(w, nil, err)
			return
		}
		defer rows.Close()
		cols, _ := rows.Columns()
		var out [][]any
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				reply(w, nil, err)
				return
			}
			for i, v := range vals {
				if b, ok := v.([]byte); ok {
					vals[i] = fmt.Sprintf("x'%x'", b)
				}
			}
			out = append(out, vals)
		}
		reply(w, map[string]any{"columns": cols, "rows": out}, rows.Err())
	})
	mux.HandleFunc("/kv/{key}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		key := r.PathValue("key")
		switch r.Method {
		case http.MethodGet:
			var v string
			err := db.QueryRowContext(ctx, "SELECT v FROM kv WHERE k = ?", key).Scan(&v)
			if errors.Is(err, sql.ErrNoRows) {
				w.WriteHeader(http.StatusNotFound)
				reply(w, map[string]string{"error": "no such key"}, nil)
				return
			}
			reply(w, map[string]string{"key": key, "value": v}, err)
		case http.MethodPut, http.MethodPost:
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err == nil {
				_, err = db.ExecContext(ctx, "INSERT OR REPLACE INTO kv VALUES (?, ?)", key, string(body))
			}
			reply(w, map[string]string{"key": key, "value": string(body)}, err)
		case http.MethodDelete:
			_, err := db.ExecContext(ctx, "DELETE FROM kv WHERE k = ?", key)
			reply(w, map[string]string{"deleted": key}, err)
		default:
			http.Error(w, "GET, PUT or DELETE", http.StatusMethodNotAllowed)
		}
	})
	return mux
}
