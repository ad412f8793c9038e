package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// freePort returns the first of three consecutive free ports (the demo's
// nodes use base, base+1 and base+2).
func freePort(t *testing.T) int {
	for try := 0; try < 100; try++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		base := ln.Addr().(*net.TCPAddr).Port
		ok := true
		var more []net.Listener
		for i := 1; i < 3 && ok; i++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				ok = false
				break
			}
			more = append(more, l)
		}
		ln.Close()
		for _, l := range more {
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no three consecutive free ports")
	return 0
}

// TestDemoServesSQL runs the demo and uses its HTTP API through different
// nodes: a table created and written through one node is read through another.
func TestDemoServesSQL(t *testing.T) {
	httpBase, peerBase := freePort(t), freePort(t)
	done := make(chan error, 1)
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	go func() {
		done <- run(ctx, options{dir: dir, httpBase: httpBase, peerBase: peerBase, duration: time.Minute}, io.Discard, func() { close(ready) })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("demo exited: %v", err)
	}
	base := func(i int) string { return "http://127.0.0.1:" + strconv.Itoa(httpBase+i) }
	post := func(i int, sql string) map[string]any {
		resp, err := http.Post(base(i)+"/exec", "text/plain", strings.NewReader(sql))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return m
	}
	if m := post(0, "CREATE TABLE t (x)"); m["error"] != nil {
		t.Fatalf("create: %v", m)
	}
	if m := post(1, "INSERT INTO t VALUES (42)"); m["rows_affected"] != float64(1) {
		t.Fatalf("insert: %v", m)
	}
	if m := post(1, "INSERT INTO nosuch VALUES (1)"); m["error"] == nil {
		t.Fatalf("bad SQL accepted: %v", m)
	}
	resp, err := http.Get(base(2) + "/query?sql=" + url.QueryEscape("SELECT x FROM t"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string][][]any
	json.NewDecoder(resp.Body).Decode(&m)
	if len(m["rows"]) != 1 || m["rows"][0][0] != float64(42) {
		t.Fatalf("query: %v", m)
	}
	// The key-value API: written through one node, read through another.
	req, _ := http.NewRequest(http.MethodPut, base(0)+"/kv/greeting", strings.NewReader("hello"))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("PUT: %v %v", resp, err)
	}
	resp, err = http.Get(base(2) + "/kv/greeting")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var kv map[string]string
	json.NewDecoder(resp.Body).Decode(&kv)
	if kv["value"] != "hello" {
		t.Fatalf("GET: %v", kv)
	}
	if resp, err := http.Get(base(1) + "/kv/nosuch"); err != nil || resp.StatusCode != 404 {
		t.Fatalf("GET of a missing key: %v %v", resp, err)
	}
}

// TestDemoFailover runs -failover: the leader is killed under load, the
// report gives the time until writes succeeded again, and none failed.
func TestDemoFailover(t *testing.T) {
	var out strings.Builder
	for attempt := 1; ; attempt++ {
		out.Reset()
		o := options{dir: t.TempDir(), httpBase: freePort(t), peerBase: freePort(t), failover: true, duration: time.Minute}
		err := run(context.Background(), o, &out, nil)
		if err != nil && strings.Contains(err.Error(), "address already in use") && attempt < 3 {
			// Another test process took a port between our check and
			// the demo's listen: try other ports.
			t.Logf("attempt %d: %v", attempt, err)
			continue
		}
		if err != nil {
			t.Fatalf("failover: %v\n%s", err, out.String())
		}
		break
	}
	if !strings.Contains(out.String(), "writes succeeded again") || !strings.Contains(out.String(), " 0 failed") {
		t.Fatalf("report: %s", out.String())
	}
	t.Log(out.String())
}
