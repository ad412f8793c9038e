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

// pollStreaming moves the requests the reader has ready into pending,
// without waiting, until an INTERRUPT (consumed here: it belongs to the
// streaming query) or until pending is full. A full pending is not read
// from: the reader then blocks, and so does the client once the socket's
// buffers fill (backpressure). An INTERRUPT behind a full pending is
// therefore only seen once the session reads again: after the query ended,
// when it is answered as one with nothing running.
func (ss *session) pollStreaming() pollResult {
	for !ss.pending.full() {
		select {
		case m := <-ss.in:
			if m.err == nil && m.h.Type == ReqInterrupt {
				return pollInterrupted
			}
			ss.pending.push(m) // a read error too: it ends the session in turn
		case <-ss.s.ctx.Done():
			return pollClosing
		default:
			return pollContinue
		}
	}
	return pollContinue
}
