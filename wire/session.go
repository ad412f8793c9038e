package wire

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
)

// A session serves one client connection. Two goroutines share it: the
// reader (started by session.serve) only decodes frames from the socket and
// sends them on in; everything else, the fields below included, belongs to
// the connection's goroutine running loop.
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
	// in carries the reader's frames (buffer of one: the reader waits
	// there, not in a growing queue); stop tells the reader to end.
	in      chan message
	stop    chan struct{}
	stashed *message
}

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
func needsLeader(t uint8) bool {
	switch t {
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
	if needsLeader(req.Type) && !ss.s.Backend.IsLeader() {
		return ss.fail(errNotLeader)
	}
	ctx, cancel := context.WithTimeout(ss.s.ctx, RequestTimeout)
	defer cancel()
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
	go func() { // reader: owned by this session, ends when conn closes
		defer close(done)
		ss.in <- first
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
	ss.s.Backend.EndSession(ss.id)
	close(ss.stop)
	ss.conn.Close()
	<-done
}
