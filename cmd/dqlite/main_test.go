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
