package main

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// gateWriter blocks every Write until gate is closed.
type gateWriter struct {
	gate chan struct{}
	mu   sync.Mutex
	buf  bytes.Buffer
}

func (g *gateWriter) Write(p []byte) (int, error) {
	<-g.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.Write(p)
}

// TestLogWriterNeverBlocks: while the output takes nothing, writes return
// at once; past logQueueBytes lines are dropped, and once the output takes
// lines again they come out in order, followed by the count of the dropped
// ones, all of it written by Close.
func TestLogWriterNeverBlocks(t *testing.T) {
	g := &gateWriter{gate: make(chan struct{})}
	w := newLogWriter(g)
	line := strings.Repeat("x", 1000) + "\n"
	n := 2 * logQueueBytes / len(line)
	for i := 0; i < n; i++ { // would block for good if Write waited
		if _, err := fmt.Fprintf(w, "%06d %s", i, line); err != nil {
			t.Fatal(err)
		}
	}
	close(g.gate)
	w.Close()
	out := g.buf.String()
	if !strings.Contains(out, "log lines dropped") {
		t.Fatalf("no count of dropped lines in %d bytes of output", len(out))
	}
	// The first line is queued whatever the goroutine does (the queue
	// is empty then); the count of dropped lines may come before it.
	if i := strings.Index(out, "x\n"); i < 0 || !strings.HasPrefix(out[strings.LastIndex(out[:i], "\n")+1:], "000000 ") {
		t.Fatalf("the first line written is not line 0: %.40q", out)
	}
	kept := strings.Count(out, "x\n")
	if kept == 0 || kept >= n {
		t.Fatalf("%d of %d lines written: want some dropped, some kept", kept, n)
	}
	prev := -1
	for _, l := range strings.Split(out, "\n") {
		var i int
		if _, err := fmt.Sscanf(l, "%06d ", &i); err == nil {
			if i <= prev {
				t.Fatalf("line %d after line %d", i, prev)
			}
			prev = i
		}
	}
}
