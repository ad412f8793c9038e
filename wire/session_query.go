package wire

import "context"

// query streams a result in ROWS messages of about RowsBatchBytes, reading
// the connection between messages so an INTERRUPT stops it at once.
func (ss *session) query(ctx context.Context, sql string, params []Value) bool {
	// ctx bounds the start of the query; streaming is bounded by the
	// client reading it (WriteTimeout per message).
	cur, err := ss.s.Backend.Query(ctx, ss.id, sql, params)
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
		select {
		case m := <-ss.in:
			if m.err == nil && m.h.Type == ReqInterrupt {
				// The query ends with EMPTY; the INTERRUPT gets no reply
				// of its own (one EMPTY in all, as clients expect).
				return ss.reply(&Response{Type: RespEmpty})
			}
			ss.stashed = &m // a pipelined request: served after the query
		case <-ss.s.ctx.Done():
			return false
		default:
		}
	}
}
