package wire

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"time"
)

// Client timings and limits.
const (
	// DialTimeout bounds connecting and the handshake.
	DialTimeout = 5 * time.Second
	// CallTimeout bounds one call when its context has no deadline.
	CallTimeout = 30 * time.Second
	// MaxResponseBytes bounds a response message (a DUMP is the largest).
	MaxResponseBytes = 1 << 30
	// ProbeParallel bounds the nodes probed at once for the leader.
	ProbeParallel = 10
)

// ErrBroken is returned by calls on a connection that failed before.
var ErrBroken = errors.New("wire: connection broken by an earlier failure")

// ErrNotSent wraps the error of a request that did not reach the server
// whole (the connection was broken, or writing it failed): the server
// cannot have run it.
var ErrNotSent = errors.New("wire: request not sent")

// Conn is a client connection to one node. One call at a time.
type Conn struct {
	Address string
	c       net.Conn
	br      *bufio.Reader
	broken  error
	buf     []byte
}

// Dial connects to address (host:port, or @name for an abstract Unix
// socket) and sends the protocol version.
func Dial(ctx context.Context, address string, tlsCfg *tls.Config) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	network := "tcp"
	if strings.HasPrefix(address, "@") {
		network = "unix"
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil {
		if tlsCfg.ServerName == "" {
			tlsCfg = tlsCfg.Clone()
			tlsCfg.ServerName, _, _ = net.SplitHostPort(address)
		}
		tc := tls.Client(nc, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, err
		}
		nc = tc
	}
	dl, _ := ctx.Deadline()
	nc.SetWriteDeadline(dl)
	var v [8]byte
	binary.LittleEndian.PutUint64(v[:], ProtocolVersion)
	if _, err := nc.Write(v[:]); err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetWriteDeadline(time.Time{})
	return &Conn{Address: address, c: nc, br: bufio.NewReaderSize(nc, 64<<10)}, nil
}

// NetConn is the underlying connection (peer links take it over).
func (c *Conn) NetConn() net.Conn { return c.c }

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Broken is the error that broke the connection, or nil.
func (c *Conn) Broken() error { return c.broken }

// guard sets the connection's deadline from ctx (or CallTimeout) and
// interrupts a blocked read or write when ctx is cancelled. The returned
// function ends the guard.
func (c *Conn) guard(ctx context.Context) func() {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(CallTimeout)
	}
	c.c.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { c.c.SetDeadline(time.Unix(1, 0)) })
	return func() { stop() }
}

func (c *Conn) breakWith(err error) error {
	if c.broken == nil {
		c.broken = err
		c.c.Close()
	}
	return err
}

// Send writes a request.
func (c *Conn) Send(ctx context.Context, r *Request) error {
	if c.broken != nil {
		return fmt.Errorf("%w: %w: %v", ErrNotSent, ErrBroken, c.broken)
	}
	msg, err := EncodeRequest(r)
	if err != nil {
		return err
	}
	end := c.guard(ctx)
	defer end()
	if _, err := c.c.Write(msg); err != nil {
		// Part of the message at most reached the server, which runs only
		// whole messages.
		return fmt.Errorf("%w: %w", ErrNotSent, c.breakWith(err))
	}
	return nil
}

// Receive reads one message.
func (c *Conn) Receive(ctx context.Context) (Header, []byte, error) {
	if c.broken != nil {
		return Header{}, nil, fmt.Errorf("%w: %v", ErrBroken, c.broken)
	}
	end := c.guard(ctx)
	defer end()
	h, body, err := ReadMessage(c.br, MaxResponseBytes)
	if err != nil {
		return h, nil, c.breakWith(err)
	}
	return h, body, nil
}

// Call sends r and reads its response, which must be of type want (a
// FAILURE is returned as *Error). format is the CLUSTER format asked.
func (c *Conn) Call(ctx context.Context, r *Request, want uint8) (*Response, error) {
	if err := c.Send(ctx, r); err != nil {
		return nil, err
	}
	return c.receiveAs(ctx, want, r.ID)
}

// ReceiveAs reads the response to a request sent earlier with Send, which
// must be of type want (a FAILURE is returned as *Error).
func (c *Conn) ReceiveAs(ctx context.Context, want uint8) (*Response, error) {
	return c.receiveAs(ctx, want, 0)
}

func (c *Conn) receiveAs(ctx context.Context, want uint8, format uint64) (*Response, error) {
	h, body, err := c.Receive(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := DecodeResponse(h, body, format)
	if err != nil {
		return nil, c.breakWith(err)
	}
	if resp.Type == RespFailure {
		return nil, &Error{resp.Code, resp.Message}
	}
	if resp.Type != want {
		return nil, c.breakWith(fmt.Errorf("%w: response type %d, expected %d", ErrMalformed, resp.Type, want))
	}
	return resp, nil
}

// Leader asks who leads.
func (c *Conn) Leader(ctx context.Context) (uint64, string, error) {
	r, err := c.Call(ctx, &Request{Type: ReqLeader}, RespServer)
	if err != nil {
		return 0, "", err
	}
	return r.ID, r.Address, nil
}

// Open opens a database and returns its id. Only the leader accepts it.
func (c *Conn) Open(ctx context.Context, name string) (uint32, error) {
	return c.open(ctx, name, 0)
}

// OpenAny opens a database on any node, leading or not (OPEN with schema
// 1), for queries sent with SchemaRead at a level other than ReadLeader;
// anything else sent on it is refused by a node that does not lead.
func (c *Conn) OpenAny(ctx context.Context, name string) (uint32, error) {
	return c.open(ctx, name, 1)
}

func (c *Conn) open(ctx context.Context, name string, schema uint8) (uint32, error) {
	r, err := c.Call(ctx, &Request{Type: ReqOpen, Schema: schema, Name: name, VFS: "volatile"}, RespDB)
	if err != nil {
		return 0, err
	}
	return r.DB, nil
}

// Result is a RESULT response.
type Result struct {
	LastInsertID, RowsAffected uint64
}

// Exec sends an EXEC or EXEC_SQL request and reads its RESULT.
func (c *Conn) Exec(ctx context.Context, r *Request) (Result, error) {
	resp, err := c.Call(ctx, r, RespResult)
	if err != nil {
		return Result{}, err
	}
	return Result{resp.LastInsertID, resp.RowsAffected}, nil
}

// Query sends a QUERY or QUERY_SQL request and returns a reader over its
// rows. The reader must be closed before the next call.
func (c *Conn) Query(ctx context.Context, r *Request) (*RowsReader, error) {
	if err := c.Send(ctx, r); err != nil {
		return nil, err
	}
	rr := &RowsReader{c: c, ctx: ctx, db: r.DB}
	if err := rr.fetch(); err != nil {
		return nil, err
	}
	return rr, nil
}

// RowsReader reads a query's ROWS messages.
type RowsReader struct {
	c       *Conn
	ctx     context.Context
	db      uint32
	Columns []string
	rows    [][]Value
	more    bool // more ROWS messages follow
	done    bool // the response ended (RowsDone, FAILURE or EMPTY)
	started bool
	// err ends the rows once those read are consumed (Buffer's failure);
	// size is the body size of the last message read.
	err  error
	size int
}

// ErrBufferLimit ends rows that Buffer stopped reading at its limit.
var ErrBufferLimit = errors.New("wire: the rest of the result was not read: it exceeds the buffer limit " +
	"(read a query's rows before the next request on its connection)")

func (rr *RowsReader) fetch() error {
	h, body, err := rr.c.Receive(rr.ctx)
	if err != nil {
		rr.done = true
		return err
	}
	rr.size = len(body)
	switch h.Type {
	case RespRows:
		m, err := DecodeRows(body)
		if err != nil {
			rr.done = true
			return rr.c.breakWith(err)
		}
		rr.Columns, rr.rows, rr.more = m.Columns, m.Rows, m.More
		rr.done = !m.More
		return nil
	case RespFailure:
		rr.done = true
		resp, err := DecodeResponse(h, body, 0)
		if err != nil {
			return rr.c.breakWith(err)
		}
		return &Error{resp.Code, resp.Message}
	}
	rr.done = true
	return rr.c.breakWith(fmt.Errorf("%w: response type %d to a query", ErrMalformed, h.Type))
}

// Buffer reads the rest of the result into memory, up to maxBytes of
// messages: the connection is then free for the next request while the
// rows are still being read. The query's own failure, or the limit
// (ErrBufferLimit: the rest is interrupted), ends the rows after those
// read; Buffer returns an error only when the connection failed.
func (rr *RowsReader) Buffer(maxBytes int) error {
	total := 0
	for rr.more {
		read := rr.rows
		err := rr.fetch()
		if err != nil {
			rr.rows, rr.more, rr.err = read, false, err
			var qe *Error
			if errors.As(err, &qe) {
				return nil // the query failed; the connection is fine
			}
			return err
		}
		rr.rows = append(read, rr.rows...)
		if total += rr.size; total > maxBytes && rr.more {
			rr.err = ErrBufferLimit
			return rr.Close()
		}
	}
	return nil
}

// Next returns the next row, or io.EOF at the end.
func (rr *RowsReader) Next() ([]Value, error) {
	for len(rr.rows) == 0 {
		if rr.err != nil {
			return nil, rr.err
		}
		if !rr.more {
			return nil, io.EOF
		}
		if err := rr.fetch(); err != nil {
			rr.more = false
			return nil, err
		}
	}
	row := rr.rows[0]
	rr.rows = rr.rows[1:]
	return row, nil
}

// Close ends the result: if more ROWS were to come, it sends INTERRUPT
// and discards messages until the EMPTY that ends the query.
func (rr *RowsReader) Close() error {
	if !rr.more {
		return nil
	}
	rr.more = false
	ctx := context.WithoutCancel(rr.ctx)
	if err := rr.c.Send(ctx, &Request{Type: ReqInterrupt, DB: rr.db}); err != nil {
		return err
	}
	for {
		h, _, err := rr.c.Receive(ctx)
		if err != nil {
			return err
		}
		if h.Type == RespEmpty {
			return nil
		}
	}
}

// Cluster returns the members the node knows (format 1: with roles).
func (c *Conn) Cluster(ctx context.Context, format uint64) ([]ServerInfo, error) {
	r, err := c.Call(ctx, &Request{Type: ReqCluster, ID: format}, RespServers)
	if err != nil {
		return nil, err
	}
	return r.Servers, nil
}

// Dump returns the database files (the image and an empty WAL).
func (c *Conn) Dump(ctx context.Context, name string) ([]File, error) {
	r, err := c.Call(ctx, &Request{Type: ReqDump, Name: name}, RespFiles)
	if err != nil {
		return nil, err
	}
	return r.Files, nil
}

// Empty sends a request answered by EMPTY (ADD, ASSIGN, REMOVE, TRANSFER,
// WEIGHT, HEARTBEAT, FINALIZE, INTERRUPT).
func (c *Conn) Empty(ctx context.Context, r *Request) error {
	_, err := c.Call(ctx, r, RespEmpty)
	return err
}

// Describe returns the node's failure domain and weight.
func (c *Conn) Describe(ctx context.Context) (domain, weight uint64, err error) {
	r, err := c.Call(ctx, &Request{Type: ReqDescribe}, RespMetadata)
	if err != nil {
		return 0, 0, err
	}
	return r.Domain, r.Weight, nil
}

// ProbeError lists, per node, why no leader was found.
type ProbeError struct {
	Tried map[string]string // address: what it said
}

func (e *ProbeError) Error() string {
	addrs := make([]string, 0, len(e.Tried))
	for a := range e.Tried {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	var b strings.Builder
	b.WriteString("dqlite: no leader reachable")
	for _, a := range addrs {
		fmt.Fprintf(&b, "; %s: %s", a, e.Tried[a])
	}
	return b.String()
}

// FindLeader probes addresses (up to ProbeParallel at once) and returns a
// connection to the leader: a node whose LEADER reply names the address
// it was dialed at. A node naming another leader is followed once.
func FindLeader(ctx context.Context, addresses []string, tlsCfg *tls.Config) (*Conn, error) {
	if len(addresses) == 0 {
		return nil, errors.New("dqlite: no node addresses")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		addr string
		conn *Conn
		err  error
	}
	results := make(chan result, len(addresses))
	sem := make(chan struct{}, ProbeParallel)
	var wg sync.WaitGroup
	for _, a := range addresses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				results <- result{a, nil, ctx.Err()}
				return
			}
			defer func() { <-sem }()
			c, err := probe(ctx, a, tlsCfg)
			results <- result{a, c, err}
		}()
	}
	go func() { wg.Wait(); close(results) }()
	tried := map[string]string{}
	var found *Conn
	for r := range results {
		switch {
		case r.conn != nil && found == nil:
			found = r.conn
			cancel()
		case r.conn != nil:
			r.conn.Close()
		default:
			tried[r.addr] = r.err.Error()
		}
	}
	if found != nil {
		return found, nil
	}
	return nil, &ProbeError{Tried: tried}
}

func probe(ctx context.Context, addr string, tlsCfg *tls.Config) (*Conn, error) {
	for hop := 0; hop < 2; hop++ {
		c, err := Dial(ctx, addr, tlsCfg)
		if err != nil {
			return nil, err
		}
		pctx, cancel := context.WithTimeout(ctx, DialTimeout)
		_, leader, err := c.Leader(pctx)
		cancel()
		switch {
		case err != nil:
			c.Close()
			return nil, err
		case leader == addr:
			return c, nil
		case leader == "":
			c.Close()
			return nil, errors.New("no leader known")
		}
		c.Close()
		addr = leader
	}
	return nil, fmt.Errorf("points to %s, which points elsewhere", addr)
}
