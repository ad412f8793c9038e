package wire

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dqlite-go/dqlite/internal/assert"
)

// A session serves one client connection. Two goroutines share it: the
// reader (started by session.serve) decodes frames from the socket into
// pending, a bounded FIFO (under qmu), ahead of the requests being served;
// everything else, the fields below included, belongs to the connection's
// goroutine running loop.
//
// Requests are answered one at a time, in the order received, each with
// exactly one response (a query's response is its ROWS messages). Reading
// ahead, the reader sees at once that the client closed the connection (a
// request still waiting for the node is then dropped: see gone) or sent an
// INTERRUPT (what the session waits for and has not run is dropped; a
// streaming query stops, see pollStreaming). When pending is full the
// reader stops reading and the socket's buffers fill: the client is slowed
// down (backpressure), never answered out of order, and no request is
// dropped.
type session struct {
	id     uint64
	s      *Server
	conn   net.Conn
	w      *bufio.Writer
	log    *slog.Logger
	legacy bool
	open   bool
	dbName string
	stmts  map[uint32]*stmt
	next   uint32
	// pending holds the frames the reader read and the session has not
	// taken yet; queued and room signal (one token each) that it got a
	// message or lost one. stop tells the reader to end.
	qmu     sync.Mutex
	pending requestQueue
	queued  chan struct{}
	room    chan struct{}
	stop    chan struct{}
	// gone ends when the reader saw the connection end (the client closed
	// it or it broke): a request still waiting for the node is dropped
	// then, not run for nobody (see handle).
	gone     context.Context
	goneOnce context.CancelFunc
	// lose: the reply being sent is lost with the connection (tests only:
	// see loseReply).
	lose bool
	// waiting: an EXEC or QUERY (either kind) is being served, so an
	// INTERRUPT the reader reads may drop it; taken by the first INTERRUPT,
	// so a flood of them costs the node one interrupt per request.
	waiting atomic.Bool
}

// loseReply, set only by tests (export_test.go), picks requests whose
// reply is lost: the server handles the request, then closes the
// connection instead of answering, as when a connection breaks between
// the two (an unknown outcome for the client).
var loseReply atomic.Pointer[func(*Request) bool]

// message is one frame from the reader, or the read error that ended it
// (the last message).
type message struct {
	h    Header
	body []byte
	err  error
}

type stmt struct {
	sql    string
	params int
}

// requestQueue is a FIFO of the messages read while a query streamed,
// bounded by MaxPipelinedRequests and MaxPipelinedBytes: a ring of fixed
// size, so it never allocates.
type requestQueue struct {
	ring      [MaxPipelinedRequests]message
	head      int // index in ring of the oldest message
	count     int
	bodyBytes int // the queued bodies' total size
}

// full reports whether the queue takes no more messages. The byte limit is
// checked before a message is added, so a single request larger than
// MaxPipelinedBytes (up to MaxRequestBytes) still fits an empty queue.
func (q *requestQueue) full() bool {
	return q.count == MaxPipelinedRequests || q.bodyBytes >= MaxPipelinedBytes
}

func (q *requestQueue) push(m message) {
	assert.That(!q.full(), "wire: push on a full request queue (%d messages, %d bytes)", q.count, q.bodyBytes)
	q.ring[(q.head+q.count)%MaxPipelinedRequests] = m
	q.count++
	q.bodyBytes += len(m.body)
}

// takeInterrupt removes the oldest INTERRUPT in the queue, if any.
func (q *requestQueue) takeInterrupt() bool {
	for i := 0; i < q.count; i++ {
		at := (q.head + i) % MaxPipelinedRequests
		m := q.ring[at]
		if m.err != nil || m.h.Type != ReqInterrupt {
			continue
		}
		// Close the gap: the later messages move up one place.
		for j := i; j < q.count-1; j++ {
			q.ring[(q.head+j)%MaxPipelinedRequests] = q.ring[(q.head+j+1)%MaxPipelinedRequests]
		}
		q.count--
		q.bodyBytes -= len(m.body)
		q.ring[(q.head+q.count)%MaxPipelinedRequests] = message{}
		return true
	}
	return false
}

// pop removes the oldest message; false when the queue is empty.
func (q *requestQueue) pop() (message, bool) {
	if q.count == 0 {
		return message{}, false
	}
	m := q.ring[q.head]
	q.ring[q.head] = message{} // let the body be collected once served
	q.head = (q.head + 1) % MaxPipelinedRequests
	q.count--
	q.bodyBytes -= len(m.body)
	return m, true
}

// frameError answers a message whose framing is lost, then the caller
// closes the connection.
func (ss *session) frameError(err error) {
	if errors.Is(err, ErrTooLarge) {
		ss.log.Warn("closing a connection: request too large", "err", err)
		ss.reply(Failure(CodeParse, err.Error()))
	}
}

// signal leaves a token on c (one is enough: the other side re-checks).
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// nextMessage is the oldest request not yet served, waiting for the reader
// if need be. False when the server closes.
func (ss *session) nextMessage() (message, bool) {
	for {
		ss.qmu.Lock()
		m, ok := ss.pending.pop()
		ss.qmu.Unlock()
		if ok {
			signal(ss.room)
			return m, true
		}
		select {
		case <-ss.queued:
		case <-ss.s.ctx.Done():
			return message{}, false
		}
	}
}

// enqueue adds a frame the reader read, waiting while pending is full;
// false once the session ended. Called by the reader.
func (ss *session) enqueue(m message) bool {
	for {
		ss.qmu.Lock()
		if !ss.pending.full() {
			ss.pending.push(m)
			ss.qmu.Unlock()
			signal(ss.queued)
			return true
		}
		ss.qmu.Unlock()
		select {
		case <-ss.room:
		case <-ss.stop:
			return false
		}
	}
}

// loop serves requests until the connection fails or the server closes.
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
	if ss.lose {
		ss.lose = false
		ss.conn.Close()
		return false
	}
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

// done answers EMPTY, or the FAILURE for err.
func (ss *session) done(err error) bool {
	if err != nil {
		return ss.fail(err)
	}
	return ss.reply(&Response{Type: RespEmpty})
}

var errNotLeader = &Error{CodeNotLeader, "not leader"}

// needsLeader lists the requests a non-leader refuses.
func needsLeader(req *Request) bool {
	switch {
	case req.Type == ReqOpen && req.Schema == 1:
		return false // for reads served by any node (SchemaRead)
	case (req.Type == ReqQuery || req.Type == ReqQuerySQL) && req.Schema == SchemaRead && req.ReadLevel != ReadLeader:
		return false // the node decides (it may still refuse)
	}
	switch req.Type {
	case ReqOpen, ReqPrepare, ReqExec, ReqQuery, ReqExecSQL, ReqQuerySQL, ReqAdd, ReqAssign, ReqRemove, ReqTransfer:
		return true
	}
	return false
}

// handle serves one request; false closes the connection. Each request
// type has its handler below; ctx bounds its wait for the node.
func (ss *session) handle(m message) bool {
	req, err := DecodeRequest(m.h, m.body)
	if err != nil {
		return ss.fail(err)
	}
	if f := loseReply.Load(); f != nil {
		ss.lose = (*f)(req)
	}
	if needsLeader(req) && !ss.s.Backend.IsLeader() {
		return ss.fail(errNotLeader)
	}
	ctx, cancel := context.WithTimeout(ss.gone, RequestTimeout)
	defer cancel()
	switch req.Type {
	case ReqExec, ReqExecSQL, ReqQuery, ReqQuerySQL:
		ss.waiting.Store(true)
		defer ss.waiting.Store(false)
	}
	switch req.Type {
	case ReqLeader:
		return ss.handleLeader()
	case ReqClient:
		return ss.handleClient()
	case ReqHeartbeat:
		return ss.handleHeartbeat()
	case ReqOpen:
		return ss.handleOpen(req)
	case ReqPrepare:
		return ss.handlePrepare(ctx, req)
	case ReqFinalize:
		return ss.handleFinalize(req)
	case ReqExec, ReqExecSQL:
		return ss.handleExec(ctx, req)
	case ReqQuery, ReqQuerySQL:
		return ss.handleQuery(ctx, req)
	case ReqInterrupt:
		return ss.handleInterrupt()
	case ReqConnect:
		return ss.handleLateConnect()
	case ReqAdd:
		return ss.done(ss.s.Backend.Add(ctx, req.ID, req.Address))
	case ReqAssign:
		return ss.handleAssign(ctx, req)
	case ReqRemove:
		return ss.done(ss.s.Backend.Remove(ctx, req.ID))
	case ReqTransfer:
		return ss.done(ss.s.Backend.Transfer(ctx, req.ID))
	case ReqDump:
		return ss.handleDump(ctx, req)
	case ReqCluster:
		return ss.handleCluster(req)
	case ReqDescribe:
		return ss.handleDescribe(req)
	case ReqWeight:
		return ss.done(ss.s.Backend.SetWeight(req.ID))
	}
	return ss.fail(&Error{CodeParse, fmt.Sprintf("unrecognized request type %d", req.Type)})
}

// serve runs the session on conn, whose first request, first, was read
// from br already: a reader goroutine feeds in while loop serves; when loop
// ends the session's transaction is rolled back, the connection closed and
// the reader waited for.
func (ss *session) serve(br *bufio.Reader, first message) {
	done := make(chan struct{})
	ss.gone, ss.goneOnce = context.WithCancel(ss.s.ctx)
	defer ss.goneOnce()
	go func() { // reader: owned by this session, ends when conn closes
		defer close(done)
		if !ss.enqueue(first) {
			return
		}
		for {
			h, body, err := ReadMessage(br, MaxRequestBytes)
			switch {
			case err != nil:
				// The client is gone: what it still waits for is dropped
				// (the session answers the error in turn).
				ss.goneOnce()
			case h.Type == ReqInterrupt && ss.waiting.CompareAndSwap(true, false):
				// What the session waits for and has not run yet is
				// dropped; the INTERRUPT is answered in turn (or taken by
				// the query streaming).
				ss.s.Backend.Interrupt(ss.id)
			}
			if !ss.enqueue(message{h, body, err}) || err != nil {
				return
			}
		}
	}()
	ss.loop()
	ss.s.Backend.EndSession(ss.id)
	close(ss.stop)
	ss.conn.Close()
	<-done
}
