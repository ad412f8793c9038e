package wire

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"time"
)

// The handlers of session.handle, one per request type (EXEC and EXEC_SQL
// share one, as do QUERY and QUERY_SQL). Each sends the request's one
// response and returns false when the connection failed.

func (ss *session) handleLeader() bool {
	id, addr := ss.s.Backend.Leader()
	if ss.legacy {
		var e Encoder
		e.Text(addr)
		return ss.send(AppendMessage(nil, RespServer, 0, e.B))
	}
	return ss.reply(&Response{Type: RespServer, ID: id, Address: addr})
}

func (ss *session) handleClient() bool {
	return ss.reply(&Response{Type: RespWelcome, Heartbeat: HeartbeatTimeoutMs})
}

// handleHeartbeat answers EMPTY, where the original answers FAILURE
// "unrecognized request type".
func (ss *session) handleHeartbeat() bool {
	return ss.reply(&Response{Type: RespEmpty})
}

func (ss *session) handleOpen(req *Request) bool {
	if ss.open {
		return ss.fail(&Error{CodeBusy, "a database for this connection is already open"}) // the C server's text
	}
	if req.Name == "" {
		return ss.fail(&Error{CodeError, "empty database name"})
	}
	ctx, cancel := context.WithTimeout(ss.gone, RequestTimeout)
	defer cancel()
	if err := ss.s.Backend.Open(ctx, req.Name); err != nil {
		return ss.fail(err)
	}
	ss.open, ss.dbName = true, req.Name
	return ss.reply(&Response{Type: RespDB, DB: 0})
}

func (ss *session) handlePrepare(ctx context.Context, req *Request) bool {
	if err := ss.checkDB(req.DB); err != nil {
		return ss.fail(err)
	}
	if len(ss.stmts) >= MaxStatements {
		return ss.fail(&Error{CodeError, fmt.Sprintf("too many prepared statements (limit %d): finalize some", MaxStatements)})
	}
	n, tail, err := ss.s.Backend.Prepare(ctx, ss.id, ss.dbName, req.SQL)
	if err != nil {
		return ss.fail(err)
	}
	if req.Schema == 0 && strings.TrimSpace(req.SQL[tail:]) != "" {
		return ss.fail(&Error{CodeError, "nonempty statement tail"})
	}
	id := ss.next
	ss.next++
	ss.stmts[id] = &stmt{sql: req.SQL[:tail], params: n}
	return ss.reply(&Response{Type: RespStmt, Schema: req.Schema, DB: req.DB, Stmt: id,
		ParamCount: uint64(n), Tail: uint64(tail)})
}

func (ss *session) handleFinalize(req *Request) bool {
	if err := ss.checkDB(req.DB); err != nil {
		return ss.fail(err)
	}
	if _, ok := ss.stmts[req.Stmt]; !ok {
		return ss.fail(errNoStmt)
	}
	delete(ss.stmts, req.Stmt)
	return ss.reply(&Response{Type: RespEmpty})
}

// handleExec serves EXEC (a prepared statement; extra parameters are
// ignored) and EXEC_SQL.
func (ss *session) handleExec(ctx context.Context, req *Request) bool {
	if err := ss.checkDB(req.DB); err != nil {
		return ss.fail(err)
	}
	sql := req.SQL
	if req.Type == ReqExec {
		st, ok := ss.stmts[req.Stmt]
		if !ok {
			return ss.fail(errNoStmt)
		}
		sql = st.sql
	}
	if strings.TrimSpace(sql) == "" {
		// Nothing to run: as the C server does, a RESULT with nothing
		// inserted or changed.
		return ss.reply(&Response{Type: RespResult})
	}
	last, rows, err := ss.s.Backend.Exec(ctx, &Write{Session: ss.id, Database: ss.dbName, Client: req.Client, Seq: req.Seq,
		SQL: sql, Params: req.Params})
	if err != nil {
		return ss.fail(err)
	}
	return ss.reply(&Response{Type: RespResult, LastInsertID: uint64(last), RowsAffected: uint64(rows)})
}

// handleQuery serves QUERY (a prepared statement) and QUERY_SQL by
// streaming the rows (see query). Parameters past the statement's own are
// ignored, as for EXEC and as the C server does.
func (ss *session) handleQuery(ctx context.Context, req *Request) bool {
	if err := ss.checkDB(req.DB); err != nil {
		return ss.fail(err)
	}
	sql := req.SQL
	if req.Type == ReqQuery {
		st, ok := ss.stmts[req.Stmt]
		if !ok {
			return ss.fail(errNoStmt)
		}
		sql = st.sql
	}
	if strings.TrimSpace(sql) == "" {
		return ss.fail(&Error{CodeError, "empty statement"})
	}
	return ss.query(ctx, &Write{Session: ss.id, Database: ss.dbName, Client: req.Client, Seq: req.Seq, SQL: sql, Params: req.Params,
		ReadLevel: uint8(req.ReadLevel), MaxStaleness: time.Duration(req.MaxStalenessUs) * time.Microsecond})
}

// handleInterrupt answers an INTERRUPT read while no query streams: nothing
// runs, so it gets its own EMPTY (a streaming query takes its INTERRUPT
// itself: see query).
func (ss *session) handleInterrupt() bool {
	return ss.reply(&Response{Type: RespEmpty})
}

// handleLateConnect refuses a CONNECT after a connection's first request
// (Server.serve hands a first CONNECT to the backend as a peer link).
func (ss *session) handleLateConnect() bool {
	return ss.fail(&Error{CodeParse, "CONNECT must be a connection's first request"})
}

func (ss *session) handleAssign(ctx context.Context, req *Request) bool {
	if req.Role > RoleSpare {
		return ss.fail(&Error{CodeError, fmt.Sprintf("unknown role %d (voter 0, standby 1, spare 2)", req.Role)})
	}
	return ss.done(ss.s.Backend.Assign(ctx, req.ID, req.Role))
}

// DumpStreamer is a Backend that can send a DUMP's database file as it
// reads it, so that no image of the database is built in memory: body
// yields exactly size bytes (a multiple of 8: a database file is whole
// pages) and is closed after. A nil body with a nil error falls back to
// Dump.
type DumpStreamer interface {
	DumpStream(ctx context.Context, name string) (size int64, body io.ReadCloser, err error)
}

// dumpChunkBytes is what a streamed DUMP reads and writes at a time (each
// write gets its own WriteTimeout).
const dumpChunkBytes = 1 << 20

func (ss *session) handleDump(ctx context.Context, req *Request) bool {
	if ds, ok := ss.s.Backend.(DumpStreamer); ok {
		size, body, err := ds.DumpStream(ctx, req.Name)
		if err != nil {
			return ss.fail(err)
		}
		if body != nil {
			defer body.Close()
			return ss.streamDump(req.Name, size, body)
		}
	}
	img, err := ss.s.Backend.Dump(ctx, req.Name)
	if err != nil {
		return ss.fail(err)
	}
	return ss.reply(&Response{Type: RespFiles, Files: []File{{req.Name, img}, {req.Name + "-wal", nil}}})
}

// streamDump sends the FILES response of a DUMP (the database file, read
// from body, and an empty WAL file), byte for byte what reply would send
// for the image. A body that fails or ends early leaves the response
// broken: the connection is closed.
func (ss *session) streamDump(name string, size int64, body io.Reader) bool {
	if size < 0 || size%8 != 0 || size > maxStreamedDumpBytes {
		return ss.fail(&Error{CodeError, fmt.Sprintf("database file of %d bytes cannot be sent", size)})
	}
	var pre, post Encoder
	pre.U64(2)
	pre.Text(name)
	pre.U64(uint64(size))
	post.Text(name + "-wal")
	post.U64(0)
	words := (int64(len(pre.B)) + size + int64(len(post.B))) / 8
	hdr := binary.LittleEndian.AppendUint32(nil, uint32(words))
	hdr = append(hdr, RespFiles, 0, 0, 0)
	write := func(b []byte) bool {
		ss.conn.SetWriteDeadline(time.Now().Add(WriteTimeout))
		_, err := ss.w.Write(b)
		return err == nil
	}
	if ss.lose {
		ss.lose = false
		ss.conn.Close()
		return false
	}
	if !write(hdr) || !write(pre.B) {
		return false
	}
	buf := make([]byte, dumpChunkBytes)
	for left := size; left > 0; {
		n, err := io.ReadFull(body, buf[:min(left, int64(len(buf)))])
		if err != nil {
			ss.s.Log.Warn("DUMP stopped part way: closing the connection", "database", name, "sent", size-left, "size", size, "err", err)
			ss.conn.Close()
			return false
		}
		if !write(buf[:n]) {
			return false
		}
		left -= int64(n)
	}
	if !write(post.B) {
		return false
	}
	ss.conn.SetWriteDeadline(time.Now().Add(WriteTimeout))
	return ss.w.Flush() == nil
}

// maxStreamedDumpBytes is the most a FILES response's header can announce
// (its length in 8-byte words is a u32), less room for its other fields.
const maxStreamedDumpBytes = (1<<32-1)*8 - 1<<20

func (ss *session) handleCluster(req *Request) bool {
	if req.ID > 1 {
		return ss.fail(&Error{CodeParse, fmt.Sprintf("unknown cluster format %d", req.ID)})
	}
	return ss.reply(&Response{Type: RespServers, Format: req.ID, Servers: ss.s.Backend.Cluster()})
}

func (ss *session) handleDescribe(req *Request) bool {
	if req.ID != 0 {
		return ss.fail(&Error{CodeDescribeFormat, fmt.Sprintf("unknown describe format %d", req.ID)})
	}
	d, w := ss.s.Backend.Describe()
	return ss.reply(&Response{Type: RespMetadata, Domain: d, Weight: w})
}

func (ss *session) checkDB(id uint32) error {
	if !ss.open || id != 0 {
		return &Error{CodeNotFound, "no database opened"} // the C server's text
	}
	return nil
}

var errNoStmt = &Error{CodeNotFound, "no statement with the given id"} // the C server's text
