package wire

import "context"

// query streams a result in ROWS messages of about RowsBatchBytes. Between
// messages it reads, without waiting, what the client sent meanwhile
// (pollStreaming): an INTERRUPT stops the query at once; other requests
// wait in pending and are served after the query, in order.
func (ss *session) query(ctx context.Context, q *Write) bool {
	// ctx bounds the start of the query; streaming is bounded by the
	// client reading it (WriteTimeout per message).
	cur, err := ss.s.Backend.Query(ctx, q)
	if err != nil {
		return ss.fail(err)
	}
	defer cur.Close()
	enc := &RowsEncoder{Columns: cur.Columns()}
	var addErr error
	add := func(row []Value) bool {
		if err := enc.Add(row); err != nil {
			addErr = err
			return false
		}
		return enc.Size() < RowsBatchBytes
	}
	for {
		done, err := cur.Next(add)
		if err == nil {
			err = addErr
		}
		if err != nil {
			return ss.fail(err)
		}
		if done {
			return ss.send(enc.Finish(RowsDone))
		}
		if enc.Size() < RowsBatchBytes {
			continue // Next yielded to the loop: keep filling
		}
		if !ss.send(enc.Finish(RowsPart)) {
			return false
		}
		switch ss.pollStreaming() {
		case pollInterrupted:
			// The query ends with EMPTY; the INTERRUPT gets no reply
			// of its own (one EMPTY in all, as clients expect).
			return ss.reply(&Response{Type: RespEmpty})
		case pollClosing:
			return false
		}
	}
}

// pollResult is what pollStreaming found.
type pollResult int

const (
	pollContinue    pollResult = iota // keep streaming
	pollInterrupted                   // an INTERRUPT came: stop the query
	pollClosing                       // the server is closing
)

// pollStreaming looks, without waiting, for an INTERRUPT the reader read
// while the query streamed (taken out of pending: it belongs to the
// streaming query, whatever requests the client sent before it); the other
// requests stay in pending, served after the query in order. A full pending
// is not read into: the reader then blocks, and so does the client once the
// socket's buffers fill (backpressure). An INTERRUPT behind a full pending
// is therefore only seen once the session took requests out of it: after
// the query ended, when it is answered as one with nothing running.
func (ss *session) pollStreaming() pollResult {
	select {
	case <-ss.s.ctx.Done():
		return pollClosing
	default:
	}
	ss.qmu.Lock()
	found := ss.pending.takeInterrupt()
	ss.qmu.Unlock()
	if found {
		signal(ss.room)
		return pollInterrupted
	}
	return pollContinue
}
