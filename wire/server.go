package wire

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
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
	// Open opens database name for a connection's OPEN, creating it if
	// need be.
	Open(ctx context.Context, name string) error
	// Prepare checks the first statement of sql on database db and
	// returns SQLite's bind parameter count and the byte offset of the
	// unparsed tail.
	Prepare(ctx context.Context, session uint64, db, sql string) (params, tail int, err error)
	// Query starts a linearizable read of one statement (inside the
	// session's transaction, if one is open); a statement that writes runs
	// as a write (deduplicated by q.Client and q.Seq) and its rows come
	// once it committed.
	Query(ctx context.Context, q *Write) (Cursor, error)
	// EndSession rolls back the session's open transaction, if any: its
	// connection closed.
	EndSession(session uint64)
	// Interrupt drops the session's requests that have not run yet (an
	// INTERRUPT arrived): they fail and never run.
	Interrupt(session uint64)
	Cluster() []ServerInfo
	// Dump returns the database image (see also DumpStreamer).
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
	Database    string // the connection's OPEN
	Client, Seq uint64 // deduplication (0: none)
	SQL         string
	Params      []Value
	// ReadLevel and MaxStaleness: a query's read level (SchemaRead;
	// ReadLeader unless the client asked otherwise).
	ReadLevel    uint8
	MaxStaleness time.Duration
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
	// MaxPipelinedRequests bounds the requests a connection holds that
	// arrived while one of its queries streamed (a client may pipeline:
	// send requests without waiting for responses). At the limit the
	// connection is not read until the query ends: backpressure, nothing
	// is dropped.
	MaxPipelinedRequests = 16
	// MaxPipelinedBytes bounds the same requests' bodies: a request is
	// held only while those held total less, so they stay under
	// MaxPipelinedBytes + MaxRequestBytes and a single large request still
	// gets through.
	MaxPipelinedBytes = 1 << 20
)

// Server serves the dqlite protocol on accepted connections.
//
// Each connection gets a goroutine (see Go). After the handshake, a
// connection whose first request is CONNECT is handed to Backend.Peer; any
// other is a client session: a reader goroutine decodes frames while the
// connection's goroutine serves them. Requests are served one at a time,
// and every request gets exactly one response, in the order the requests
// were received, whether the client waits for each response or pipelines
// several. A query's response is one or more ROWS messages, sent without
// waiting for the client; meanwhile the session goes on reading: an
// INTERRUPT stops the query (which then ends with EMPTY, the INTERRUPT's
// only answer), and other requests wait, up to MaxPipelinedRequests and
// MaxPipelinedBytes, to be served after the query. Past those limits the
// session stops reading the connection until the query ends.
type Server struct {
	Backend Backend
	Log     *slog.Logger
	// MaxConnections bounds this server's concurrent connections; 0 means
	// the package's MaxConnections. Set it before the first Go (tests set
	// a small one).
	MaxConnections int

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
	limit := s.MaxConnections
	if limit <= 0 {
		limit = MaxConnections
	}
	s.mu.Lock()
	if s.closed || len(s.conns) >= limit {
		full := !s.closed
		s.mu.Unlock()
		if full {
			s.Log.Warn("connection refused: too many connections", "remote", conn.RemoteAddr(), "limit", limit)
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

// serve runs conn: the handshake, then a peer link (servePeer) or a client
// session (session.serve). It returns once the connection is closed.
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
		legacy: version == ProtocolLegacy, stmts: map[uint32]*stmt{}, queued: make(chan struct{}, 1),
		room: make(chan struct{}, 1), stop: make(chan struct{})}
	// The first request may be CONNECT: then the connection is a peer link
	// and its reader is handed over with whatever it buffered.
	h, body, err := ReadMessage(br, MaxRequestBytes)
	if err != nil {
		ss.frameError(err)
		conn.Close()
		return
	}
	if h.Type == ReqConnect {
		s.servePeer(ss, conn, br, h, body)
		return
	}
	ss.serve(br, message{h: h, body: body})
}

// servePeer hands a connection whose first request is CONNECT to the
// backend as a peer link, with the reader and whatever it buffered; a
// malformed CONNECT is answered FAILURE and the connection closed.
func (s *Server) servePeer(ss *session, conn net.Conn, br *bufio.Reader, h Header, body []byte) {
	req, err := DecodeRequest(h, body)
	if err != nil {
		ss.reply(failureOf(err))
		conn.Close()
		return
	}
	s.Backend.Peer(conn, br, req.ID, req.Address)
}
