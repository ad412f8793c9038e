package wire

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// Backend is what the server serves: one node. Calls may block (they wait
// for the node's loop); ctx ends when the request's time runs out or the
// connection closes.
type Backend interface {
	// Leader is the leader's id and the address clients dial, or 0 and ""
	// when unknown or when this node is not a voter.
	Leader() (id uint64, address string)
	// IsLeader reports whether this node leads and can serve writes.
	IsLeader() bool
	// Exec runs every statement of sql as one write. A request that is a
	// lone BEGIN opens a transaction spanning the session's requests
	// (w.Session): it holds the writer slot until COMMIT or ROLLBACK.
	Exec(ctx context.Context, w *Write) (lastInsertID, rowsAffected int64, err error)
	// Prepare checks the first statement of sql and returns SQLite's bind
	// parameter count and the byte offset of the unparsed tail.
	Prepare(ctx context.Context, session uint64, sql string) (params, tail int, err error)
	// Query starts a linearizable read of one statement (inside the
	// session's transaction, if one is open).
	Query(ctx context.Context, session uint64, sql string, params []Value) (Cursor, error)
	// EndSession rolls back the session's open transaction, if any: its
	// connection closed.
	EndSession(session uint64)
	Cluster() []ServerInfo
	// Dump returns the database image.
	Dump(ctx context.Context, name string) ([]byte, error)
	Add(ctx context.Context, id uint64, address string) error
	Assign(ctx context.Context, id, role uint64) error
	Remove(ctx context.Context, id uint64) error
	Transfer(ctx context.Context, id uint64) error
	Describe() (domain, weight uint64)
	SetWeight(weight uint64) error
	// ErrorCode is the FAILURE code and message for err.
	ErrorCode(err error) (uint64, string)
	// Peer takes over a connection that sent CONNECT: from now on it
	// carries Raft messages (see PeerReader). It returns when the link ends
	// and must close conn.
	Peer(conn net.Conn, r *bufio.Reader, id uint64, address string)
}

// Write is a write request.
type Write struct {
	// Session identifies the client connection (never 0), for
	// transactions spanning requests.
	Session     uint64
	Client, Seq uint64 // deduplication (0: none)
	SQL         string
	Params      []Value
}

// Cursor is a running query.
type Cursor interface {
	Columns() []string
	// Next calls add with rows in order, for a short while, until add
	// returns false or the result ends (done).
	Next(add func(row []Value) bool) (done bool, err error)
	Close()
}

// Server limits and timings.
const (
	// RowsBatchBytes is the size at which a ROWS message is sent.
	RowsBatchBytes = 4096
	// MaxStatements bounds the prepared statements of one connection.
	MaxStatements = 1024
	// MaxConnections bounds concurrent connections (clients and peers).
	MaxConnections = 4096
	// HandshakeTimeout bounds the wait for the protocol version.
	HandshakeTimeout = 10 * time.Second
	// WriteTimeout bounds sending one response.
	WriteTimeout = 10 * time.Second
	// RequestTimeout bounds one request's wait for the node.
	RequestTimeout = 30 * time.Second
	// HeartbeatTimeoutMs is the WELCOME value (as the original's default).
	HeartbeatTimeoutMs = 15000
	// MaxRequestBytes bounds a request message.
	MaxRequestBytes = MaxMessageBytes
)

// Server serves the dqlite protocol on accepted connections.
type Server struct {
	Backend Backend
	Log     *slog.Logger

	mu       sync.Mutex
	sessions uint64 // last session id given
	conns    map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
	ctx      context.Context
	cancel   context.CancelFunc
}

// NewServer returns a server for b.
func NewServer(b Backend, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{Backend: b, Log: log, conns: map[net.Conn]struct{}{}, ctx: ctx, cancel: cancel}
}

// Go serves conn on a new goroutine owned by the server (Close waits for
// it). A connection past MaxConnections is closed at once.
func (s *Server) Go(conn net.Conn) {
	s.mu.Lock()
	if s.closed || len(s.conns) >= MaxConnections {
		full := !s.closed
		s.mu.Unlock()
		if full {
			s.Log.Warn("connection refused: too many connections", "remote", conn.RemoteAddr(), "limit", MaxConnections)
		}
		conn.Close()
		return
	}
	s.conns[conn] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			delete(s.conns, conn)
			s.mu.Unlock()
		}()
		s.serve(conn)
	}()
}

// Close closes every connection and waits for their goroutines.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

type message struct {
	h    Header
	body []byte
	err  error
}

type session struct {
	id      uint64
	s       *Server
	conn    net.Conn
	w       *bufio.Writer
	log     *slog.Logger
	legacy  bool
	open    bool
	dbName  string
	stmts   map[uint32]*stmt
	next    uint32
	in      chan message
	stop    chan struct{}
	stashed *message
}

type stmt struct {
	sql    string
	params int
}

func (s *Server) serve(conn net.Conn) {
	log := s.Log.With("remote", conn.RemoteAddr().String())
	conn.SetReadDeadline(time.Now().Add(HandshakeTimeout))
	br := bufio.NewReaderSize(conn, 64<<10)
	version, err := ReadProtocol(br)
	if err != nil {
		conn.Close()
		return
	}
	if version != ProtocolVersion && version != ProtocolLegacy {
		log.Info("closing a connection with an unknown protocol version", "version", fmt.Sprintf("%#x", version))
		conn.Close()
		return
	}
	conn.SetReadDeadline(time.Time{})
	s.mu.Lock()
	s.sessions++
	id := s.sessions
	s.mu.Unlock()
	ss := &session{id: id, s: s, conn: conn, w: bufio.NewWriterSize(conn, 64<<10), log: log,
		legacy: version == ProtocolLegacy, stmts: map[uint32]*stmt{}, in: make(chan message, 1),
		stop: make(chan struct{})}
	// The first request may be CONNECT: then the connection is a peer link
	// and its reader is handed over with whatever it buffered.
	h, body, err := ReadMessage(br, MaxRequestBytes)
	if err != nil {
		ss.frameError(err)
		conn.Close()
		return
	}
	if h.Type == ReqConnect {
		req, err := DecodeRequest(h, body)
		if err != nil {
			ss.reply(failureOf(err))
			conn.Close()
			return
		}
		s.Backend.Peer(conn, br, req.ID, req.Address)
		return
	}
	done := make(chan struct{})
	go func() { // reader: owned by this session, ends when conn closes
		defer close(done)
		ss.in <- message{h: h, body: body}
		for {
			h, body, err := ReadMessage(br, MaxRequestBytes)
			select {
			case ss.in <- message{h, body, err}:
			case <-ss.stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	ss.loop()
	s.Backend.EndSession(ss.id)
	close(ss.stop)
	conn.Close()
	<-done
}

// frameError answers a message whose framing is lost, then the caller
// closes the connection.
func (ss *session) frameError(err error) {
	if errors.Is(err, ErrTooLarge) {
		ss.log.Warn("closing a connection: request too large", "err", err)
		ss.reply(Failure(CodeParse, err.Error()))
	}
}

func (ss *session) nextMessage() (message, bool) {
	if ss.stashed != nil {
		m := *ss.stashed
		ss.stashed = nil
		return m, true
	}
	select {
	case m := <-ss.in:
		return m, true
	case <-ss.s.ctx.Done():
		return message{}, false
	}
}

func (ss *session) loop() {
	for {
		m, ok := ss.nextMessage()
		if !ok {
			return
		}
		if m.err != nil {
			if m.err != io.EOF && !errors.Is(m.err, net.ErrClosed) {
				ss.frameError(m.err)
			}
			return
		}
		if !ss.handle(m) {
			return
		}
	}
}

// reply sends r; false if the connection failed.
func (ss *session) reply(r *Response) bool {
	return ss.send(EncodeResponse(r))
}

func (ss *session) send(msg []byte) bool {
	ss.conn.SetWriteDeadline(time.Now().Add(WriteTimeout))
	if _, err := ss.w.Write(msg); err != nil {
		return false
	}
	return ss.w.Flush() == nil
}

func failureOf(err error) *Response {
	var e *Error
	if errors.As(err, &e) {
		return Failure(e.Code, e.Message)
	}
	return Failure(CodeParse, err.Error())
}

func (ss *session) fail(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return ss.reply(Failure(e.Code, e.Message))
	}
	code, msg := ss.s.Backend.ErrorCode(err)
	return ss.reply(Failure(code, msg))
}

var errNotLeader = &Error{CodeNotLeader, "not leader"}

// needsLeader lists the requests a non-leader refuses.
func needsLeader(t uint8) bool {
	switch t {
	case ReqOpen, ReqPrepare, ReqExec, ReqQuery, ReqExecSQL, ReqQuerySQL, ReqAdd, ReqAssign, ReqRemove, ReqTransfer:
		return true
	}
	return false
}

// handle serves one request; false closes the connection.
func (ss *session) handle(m message) bool {
	req, err := DecodeRequest(m.h, m.body)
	if err != nil {
		return ss.fail(err)
	}
	b := ss.s.Backend
	if needsLeader(req.Type) && !b.IsLeader() {
		return ss.fail(errNotLeader)
	}
	ctx, cancel := context.WithTimeout(ss.s.ctx, RequestTimeout)
	defer cancel()
	switch req.Type {
	case ReqLeader:
		id, addr := b.Leader()
		if ss.legacy {
			var e Encoder
			e.Text(addr)
			return ss.send(AppendMessage(nil, RespServer, 0, e.B))
		}
		return ss.reply(&Response{Type: RespServer, ID: id, Address: addr})
	case ReqClient:
		return ss.reply(&Response{Type: RespWelcome, Heartbeat: HeartbeatTimeoutMs})
	case ReqHeartbeat:
		// The original answers FAILURE "unrecognized request type"; we
		// answer EMPTY.
		return ss.reply(&Response{Type: RespEmpty})
	case ReqOpen:
		if ss.open {
			return ss.fail(&Error{CodeBusy, "a database is already open on this connection"})
		}
		if req.Name == "" {
			return ss.fail(&Error{CodeError, "empty database name"})
		}
		ss.open, ss.dbName = true, req.Name
		return ss.reply(&Response{Type: RespDB, DB: 0})
	case ReqPrepare:
		if err := ss.checkDB(req.DB); err != nil {
			return ss.fail(err)
		}
		if len(ss.stmts) >= MaxStatements {
			return ss.fail(&Error{CodeError, fmt.Sprintf("too many prepared statements (limit %d): finalize some", MaxStatements)})
		}
		n, tail, err := b.Prepare(ctx, ss.id, req.SQL)
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
	case ReqFinalize:
		if err := ss.checkDB(req.DB); err != nil {
			return ss.fail(err)
		}
		if _, ok := ss.stmts[req.Stmt]; !ok {
			return ss.fail(&Error{CodeNotFound, fmt.Sprintf("no statement with id %d", req.Stmt)})
		}
		delete(ss.stmts, req.Stmt)
		return ss.reply(&Response{Type: RespEmpty})
	case ReqExec, ReqExecSQL:
		if err := ss.checkDB(req.DB); err != nil {
			return ss.fail(err)
		}
		sql := req.SQL
		if req.Type == ReqExec {
			st, ok := ss.stmts[req.Stmt]
			if !ok {
				return ss.fail(&Error{CodeNotFound, fmt.Sprintf("no statement with id %d", req.Stmt)})
			}
			sql = st.sql
		}
		if strings.TrimSpace(sql) == "" {
			return ss.fail(&Error{CodeError, "empty statement"})
		}
		last, rows, err := b.Exec(ctx, &Write{Session: ss.id, Client: req.Client, Seq: req.Seq, SQL: sql, Params: req.Params})
		if err != nil {
			return ss.fail(err)
		}
		return ss.reply(&Response{Type: RespResult, LastInsertID: uint64(last), RowsAffected: uint64(rows)})
	case ReqQuery, ReqQuerySQL:
		if err := ss.checkDB(req.DB); err != nil {
			return ss.fail(err)
		}
		sql := req.SQL
		if req.Type == ReqQuery {
			st, ok := ss.stmts[req.Stmt]
			if !ok {
				return ss.fail(&Error{CodeNotFound, fmt.Sprintf("no statement with id %d", req.Stmt)})
			}
			if len(req.Params) > st.params {
				return ss.fail(&Error{CodeError, fmt.Sprintf("bind parameters: %d given, the statement has %d", len(req.Params), st.params)})
			}
			sql = st.sql
		}
		if strings.TrimSpace(sql) == "" {
			return ss.fail(&Error{CodeError, "empty statement"})
		}
		return ss.query(ctx, sql, req.Params)
	case ReqInterrupt:
		// Nothing is running (a running query takes its INTERRUPT itself).
		return ss.reply(&Response{Type: RespEmpty})
	case ReqConnect:
		return ss.fail(&Error{CodeParse, "CONNECT must be a connection's first request"})
	case ReqAdd:
		return ss.done(b.Add(ctx, req.ID, req.Address))
	case ReqAssign:
		if req.Role > RoleSpare {
			return ss.fail(&Error{CodeError, fmt.Sprintf("unknown role %d (voter 0, standby 1, spare 2)", req.Role)})
		}
		return ss.done(b.Assign(ctx, req.ID, req.Role))
	case ReqRemove:
		return ss.done(b.Remove(ctx, req.ID))
	case ReqTransfer:
		return ss.done(b.Transfer(ctx, req.ID))
	case ReqDump:
		img, err := b.Dump(ctx, req.Name)
		if err != nil {
			return ss.fail(err)
		}
		return ss.reply(&Response{Type: RespFiles, Files: []File{{req.Name, img}, {req.Name + "-wal", nil}}})
	case ReqCluster:
		if req.ID > 1 {
			return ss.fail(&Error{CodeParse, fmt.Sprintf("unknown cluster format %d", req.ID)})
		}
		return ss.reply(&Response{Type: RespServers, Format: req.ID, Servers: b.Cluster()})
	case ReqDescribe:
		if req.ID != 0 {
			return ss.fail(&Error{CodeDescribeFormat, fmt.Sprintf("unknown describe format %d", req.ID)})
		}
		d, w := b.Describe()
		return ss.reply(&Response{Type: RespMetadata, Domain: d, Weight: w})
	case ReqWeight:
		return ss.done(b.SetWeight(req.ID))
	}
	return ss.fail(&Error{CodeParse, fmt.Sprintf("unrecognized request type %d", req.Type)})
}

func (ss *session) done(err error) bool {
	if err != nil {
		return ss.fail(err)
	}
	return ss.reply(&Response{Type: RespEmpty})
}

func (ss *session) checkDB(id uint32) error {
	if !ss.open || id != 0 {
		return &Error{CodeNotFound, fmt.Sprintf("no database with id %d open on this connection", id)}
	}
	return nil
}

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
