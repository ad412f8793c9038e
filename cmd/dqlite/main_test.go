package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dqlite-go/dqlite/internal/testcluster"
)

// TestShellTransactionNeverRetriedElsewhere: statements typed after BEGIN
// run in the transaction; when the connection holding it breaks, the next
// statement fails (the server rolled the transaction back) instead of
// running on a new connection as an autocommit write.
func TestShellTransactionNeverRetriedElsewhere(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.Leader(t, ctx)
	var out bytes.Buffer
	sh := &shell{servers: c.Addrs, db: "test", format: "table", timeout: 10 * time.Second, out: &out}
	defer sh.close()
	for _, q := range []string{"CREATE TABLE t (x)", "BEGIN", "INSERT INTO t VALUES (1)"} {
		if err := sh.do(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	out.Reset()
	if err := sh.do("SELECT count(*) AS n FROM t"); err != nil || !strings.Contains(out.String(), "1") {
		t.Fatalf("count inside the transaction: %q %v", out.String(), err)
	}
	sh.conn.Close() // the connection breaks
	if err := sh.do("INSERT INTO t VALUES (2)"); !errors.Is(err, errTxLost) {
		t.Fatalf("statement after the connection broke: %v", err)
	}
	out.Reset()
	if err := sh.do("SELECT count(*) AS n FROM t"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(out.String()); len(got) == 0 || got[len(got)-1] != "0" {
		t.Fatalf("rows after the lost transaction: %q", out.String())
	}
	// COMMIT on a connection that broke: never sent, so rolled back.
	for _, q := range []string{"BEGIN", "INSERT INTO t VALUES (9)"} {
		if err := sh.do(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	sh.conn.Close()
	if err := sh.do("COMMIT"); !errors.Is(err, errTxLost) {
		t.Fatalf("COMMIT after the connection broke: %v", err)
	}
	// A new transaction works and commits.
	for _, q := range []string{"BEGIN", "INSERT INTO t VALUES (3)", "COMMIT"} {
		if err := sh.do(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	out.Reset()
	if err := sh.do("SELECT sum(x) AS s FROM t"); err != nil || !strings.Contains(out.String(), "3") {
		t.Fatalf("after commit: %q %v", out.String(), err)
	}
}

// TestShellDatabases: .open switches databases (each has its own tables),
// .databases names the open one, and INSERT ... RETURNING shows its rows.
func TestShellDatabases(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.Leader(t, ctx)
	var out bytes.Buffer
	sh := &shell{servers: c.Addrs, db: "a.db", format: "table", timeout: 10 * time.Second, out: &out}
	defer sh.close()
	for _, q := range []string{"CREATE TABLE ta (id INTEGER PRIMARY KEY, v TEXT)", ".open b.db", "CREATE TABLE tb (y)"} {
		if err := sh.do(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	out.Reset()
	if err := sh.do(".databases"); err != nil || strings.TrimSpace(out.String()) != "main: b.db" {
		t.Fatalf(".databases: %q %v", out.String(), err)
	}
	if err := sh.do("SELECT * FROM ta"); err == nil || !strings.Contains(err.Error(), "no such table") {
		t.Fatalf("a.db's table seen from b.db: %v", err)
	}
	if err := sh.do(".open a.db"); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := sh.do("INSERT INTO ta (v) VALUES ('x') RETURNING id, v"); err != nil || !strings.Contains(out.String(), "x") {
		t.Fatalf("INSERT ... RETURNING: %q %v", out.String(), err)
	}
	if err := sh.do(".open bad/name"); err == nil {
		t.Fatal(".open of an invalid name succeeded")
	}
	out.Reset()
	if err := sh.do(".databases"); err != nil || strings.TrimSpace(out.String()) != "main: a.db" {
		t.Fatalf(".databases after a refused .open: %q %v", out.String(), err)
	}
}

// TestShellReadLevel: after .read any, a query is served by the node -s
// names even when it does not lead (a follower here, counted by its read
// metrics); .read stale DURATION likewise; .read leader sends queries
// back to the leader; inside a transaction queries stay on the leader;
// bad arguments are refused.
func TestShellReadLevel(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leader := c.Leader(t, ctx)
	f := (leader + 1) % len(c.Nodes)
	follower := c.Nodes[f]
	served := func() uint64 { r := follower.Metrics().Reads; return r.Forwarded + r.Stale }
	var out bytes.Buffer
	sh := &shell{servers: []string{c.Addrs[f]}, db: "test", format: "table", timeout: 10 * time.Second, out: &out}
	defer sh.close()
	for _, q := range []string{"CREATE TABLE t (x)", "INSERT INTO t VALUES (41)", ".read any"} {
		if err := sh.do(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	before := served()
	out.Reset()
	if err := sh.do("SELECT x + 1 AS y FROM t"); err != nil || !strings.Contains(out.String(), "42") {
		t.Fatalf(".read any: query: %q %v", out.String(), err)
	}
	if served() == before {
		t.Fatal(".read any: the follower named by -s served no read")
	}
	out.Reset()
	if err := sh.do(".read"); err != nil || strings.TrimSpace(out.String()) != "any" {
		t.Fatalf(".read: %q %v", out.String(), err)
	}
	// Inside a transaction, a query sees the transaction's writes: it went
	// to the leader.
	for _, q := range []string{"BEGIN", "INSERT INTO t VALUES (1)"} {
		if err := sh.do(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	out.Reset()
	if err := sh.do("SELECT count(*) AS n FROM t"); err != nil || !strings.Contains(out.String(), "2") {
		t.Fatalf("query in a transaction at .read any: %q %v", out.String(), err)
	}
	if err := sh.do("ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if err := sh.do(".read stale 1s"); err != nil {
		t.Fatal(err)
	}
	before = served()
	out.Reset()
	if err := sh.do("SELECT count(*) AS n FROM t"); err != nil || !strings.Contains(out.String(), "1") {
		t.Fatalf(".read stale: query: %q %v", out.String(), err)
	}
	if served() == before {
		t.Fatal(".read stale: the follower named by -s served no read")
	}
	if err := sh.do(".read leader"); err != nil {
		t.Fatal(err)
	}
	before = served()
	out.Reset()
	if err := sh.do("SELECT x FROM t"); err != nil || !strings.Contains(out.String(), "41") {
		t.Fatalf(".read leader: query: %q %v", out.String(), err)
	}
	if served() != before {
		t.Fatal(".read leader: the follower served the read")
	}
	for _, bad := range []string{".read sometimes", ".read stale", ".read stale 0s", ".read stale 2h", ".read stale soon", ".read any 1s"} {
		if err := sh.do(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	out.Reset()
	if err := sh.do(".help"); err != nil || !strings.Contains(out.String(), ".read") {
		t.Fatalf(".help does not list .read: %q %v", out.String(), err)
	}
}

// TestShellWaitsForLeader: while no node names a leader (here the only
// node listed has lost its quorum), a command keeps looking for one until
// its timeout, as the driver does, instead of failing at the first probe.
func TestShellWaitsForLeader(t *testing.T) {
	c := testcluster.Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leader := c.Leader(t, ctx)
	f := (leader + 1) % len(c.Nodes)
	for i := range c.Nodes {
		if i != f {
			c.Stop(i)
		}
	}
	const timeout = 500 * time.Millisecond
	var out bytes.Buffer
	sh := &shell{servers: []string{c.Addrs[f]}, db: "test", format: "table", timeout: timeout, out: &out}
	defer sh.close()
	start := time.Now()
	err := sh.do("SELECT 1")
	if err == nil || !strings.Contains(err.Error(), "no leader reachable") {
		t.Fatalf("a query without a quorum: %v", err)
	}
	if took := time.Since(start); took < timeout {
		t.Fatalf("the shell gave up after %v, before its %v timeout", took, timeout)
	}
}
