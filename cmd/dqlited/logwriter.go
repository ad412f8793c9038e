package main

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// logWriter hands the log's lines to a goroutine of its own, so that the
// node's loop, which logs, never waits for the log's file or pipe: a
// write() into a file on a disk busy with writeback can be throttled by
// the kernel for hundreds of milliseconds (the suspected cause, not
// proven, of five loop events of 129-278 ms on three nodes at once as a
// node joined in one 2 GiB large run).
// At most logQueueBytes wait; past that, lines are dropped and counted,
// and the next line written says how many. Close writes out what waits,
// for at most logCloseWait.
type logWriter struct {
	out io.Writer

	mu      sync.Mutex
	cond    *sync.Cond
	queue   [][]byte
	queued  int
	dropped int
	closing bool
	done    chan struct{}
}

const (
	logQueueBytes = 1 << 20
	logCloseWait  = 5 * time.Second
)

// newLogWriter starts the writer goroutine (Close stops it).
func newLogWriter(out io.Writer) *logWriter {
	w := &logWriter{out: out, done: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	go w.run()
	return w
}

// Write queues a copy of p (one log line: slog's handlers write a record
// at once) and never blocks on the output.
func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closing || w.queued+len(p) > logQueueBytes {
		w.dropped++
		return len(p), nil
	}
	w.queue = append(w.queue, append([]byte(nil), p...))
	w.queued += len(p)
	w.cond.Signal()
	return len(p), nil
}

func (w *logWriter) run() {
	defer close(w.done)
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		for len(w.queue) == 0 && w.dropped == 0 && !w.closing {
			w.cond.Wait()
		}
		if len(w.queue) == 0 && w.dropped == 0 {
			return // closing, all written
		}
		lines, dropped := w.queue, w.dropped
		w.queue, w.queued, w.dropped = nil, 0, 0
		w.mu.Unlock()
		if dropped > 0 {
			fmt.Fprintf(w.out, "dqlited: %d log lines dropped: the log's output did not keep up\n", dropped)
		}
		for _, l := range lines {
			_, _ = w.out.Write(l)
		}
		w.mu.Lock()
	}
}

// Close writes out the lines waiting (for at most logCloseWait: an output
// that does not take them loses them) and stops the goroutine.
func (w *logWriter) Close() {
	w.mu.Lock()
	w.closing = true
	w.cond.Signal()
	w.mu.Unlock()
	select {
	case <-w.done:
	case <-time.After(logCloseWait):
	}
}
