// Package driver is a pure-Go database/sql driver for dqlite-go (and other
// dqlite servers speaking protocol v1), registered as "dqlite".
//
//	db, err := sql.Open("dqlite", "127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003/app")
//
// The data source name is a comma-separated list of node addresses, a
// slash and the database name. The driver finds the leader by itself
// (bounded parallel probes, capped backoff), follows it when it moves, and
// keeps the list of nodes fresh from the cluster's membership.
//
// # Retries and unknown outcomes
//
// Reads, and writes that were never sent, are retried on the new leader
// transparently. A write that was sent but whose outcome is unknown (the
// leader lost leadership or the connection broke before the reply) is
// retried with the same client session id and sequence number: the
// cluster records the last sequence number applied per session in the
// replicated database, so the retry is applied at most once and returns
// the first result (a statement that writes sent through Query, such as
// INSERT ... RETURNING, too: the retry returns the first attempt's rows).
// When the retry window (Connector.RetryTimeout) ends
// first, the error wraps ErrUnknownOutcome: the write may or may not have
// happened, and nothing retries it again.
//
// # Transactions
//
// A request is atomic, and may be a multi-statement "BEGIN; ...; COMMIT"
// text. BeginTx opens a transaction spanning requests (serializable, like
// every SQLite transaction): it holds the cluster's writer slot until
// Commit or Rollback, so other writers wait (and get a busy error past the
// server's request timeout); keep transactions short. Requests inside a
// transaction are never retried: when the leader changes or the connection
// breaks, the server rolls the transaction back and the statement fails
// with an error wrapping ErrTxAborted (Rollback then succeeds). A Commit
// whose reply is lost fails with an error wrapping ErrUnknownOutcome. A
// statement sent while the transaction's earlier rows are still open reads
// them into memory first (at most TxRowsBufferBytes; past it the rows end
// with wire.ErrBufferLimit). BEGIN, COMMIT or ROLLBACK sent alone through
// Exec are refused (ErrUseBeginTx).
//
// # Read levels
//
// Queries are served by the leader by default (read=leader: linearizable).
// With read=any (Connector.Read ReadAny) they stay linearizable but may be
// served by any node: each connection keeps, besides its connection to
// the leader, a connection to one follower chosen round-robin over the
// known nodes other than the leader (the leader only when no follower
// accepts; read_nodes=all, Connector.ReadNodes ReadAllNodes, rotates over
// every node), and a follower serving a query first asks the leader for a
// read index. With read=stale&max_staleness=100ms (ReadStale and
// Connector.MaxStaleness) a node serves the query from its own state when
// that includes every write committed more than the bound ago, and
// otherwise as read=any. WithRead chooses the level of one query through
// its context:
//
//	db, err := sql.Open("dqlite", "127.0.0.1:9001,127.0.0.1:9002/app?read=any")
//	rows, err := db.QueryContext(driver.WithRead(ctx, driver.ReadStale, time.Second), "SELECT ...")
//
// Only queries that surely read (internal/sqltext's ReadOnly: SELECT,
// VALUES, EXPLAIN, WITH without INSERT, UPDATE, DELETE, REPLACE or
// RETURNING) outside a transaction go to the read connection; writes,
// statements that may write and everything inside a transaction go to the
// leader as at read=leader. When the read connection's node fails or
// cannot serve the query, the query moves to the next node, within the
// retry window; when no node accepts a read connection, the query goes to
// the leader, at its level.
package driver

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dqlite-go/dqlite/internal/sqltext"
	"github.com/dqlite-go/dqlite/wire"
)

func init() { sql.Register("dqlite", &Driver{}) }

// Errors.
var (
	// ErrUnknownOutcome wraps the error of a write whose outcome is unknown
	// after the retry window ended.
	ErrUnknownOutcome = errors.New("dqlite: the outcome of the write is unknown")
	// ErrUseBeginTx is returned for BEGIN, COMMIT, END or ROLLBACK sent
	// alone through Exec: the transaction would live on one pooled
	// connection database/sql knows nothing about.
	ErrUseBeginTx = errors.New("dqlite: use BeginTx, Commit and Rollback for transactions " +
		"(or send BEGIN; ...; COMMIT as one Exec)")
	// ErrTxAborted wraps the error of a request inside a transaction that
	// the server rolled back (leadership lost, connection broken, idle
	// past the server's limit): nothing of the transaction committed.
	ErrTxAborted = errors.New("dqlite: the transaction was rolled back")
)

// Defaults.
const (
	// TxRowsBufferBytes bounds the rows of a transaction's query read into
	// memory when the transaction sends its next request before they were
	// read (the rest is cut, and the rows end with wire.ErrBufferLimit).
	TxRowsBufferBytes = 64 << 20
	// DefaultRetryTimeout bounds how long a request keeps looking for a
	// leader and retrying.
	DefaultRetryTimeout = 30 * time.Second
	backoffMin          = 10 * time.Millisecond
	backoffMax          = time.Second
)

// Driver is the database/sql driver.
type Driver struct{}

// Open opens a connection for a data source name (see the package doc).
func (d *Driver) Open(dsn string) (driver.Conn, error) {
	c, err := d.OpenConnector(dsn)
	if err != nil {
		return nil, err
	}
	return c.Connect(context.Background())
}

// OpenConnector parses dsn: host:port[,host:port...]/database, with
// optional parameters ?read=leader|any|stale&max_staleness=DURATION (a Go
// duration such as 100ms; required with read=stale) and
// read_nodes=followers|all (Connector.ReadNodes).
func (d *Driver) OpenConnector(dsn string) (driver.Connector, error) {
	dsn, query, _ := strings.Cut(dsn, "?")
	addrs, name, ok := strings.Cut(dsn, "/")
	if !ok || name == "" || addrs == "" {
		return nil, fmt.Errorf("dqlite: data source name %q: want host:port[,host:port...]/database[?read=...]", dsn)
	}
	c := NewConnector(strings.Split(addrs, ","), name)
	vals, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("dqlite: data source name parameters %q: %w", query, err)
	}
	for k, v := range vals {
		switch k {
		case "read":
			if c.Read, err = ParseReadLevel(v[len(v)-1]); err != nil {
				return nil, err
			}
		case "read_nodes":
			if c.ReadNodes, err = ParseReadNodes(v[len(v)-1]); err != nil {
				return nil, err
			}
		case "max_staleness":
			if c.MaxStaleness, err = time.ParseDuration(v[len(v)-1]); err != nil || c.MaxStaleness <= 0 ||
				c.MaxStaleness > wire.MaxStalenessUs*time.Microsecond {
				return nil, fmt.Errorf("dqlite: max_staleness %q: want a positive duration up to 1h, such as 100ms", v[len(v)-1])
			}
		default:
			return nil, fmt.Errorf("dqlite: unknown data source name parameter %q (read, max_staleness, read_nodes)", k)
		}
	}
	if c.Read == ReadStale && c.MaxStaleness == 0 {
		return nil, errors.New("dqlite: read=stale needs max_staleness")
	}
	return c, nil
}

// NodeStore is the list of known node addresses, shared by a connector's
// connections and refreshed from the cluster's membership.
type NodeStore struct {
	mu    sync.Mutex
	addrs []string
}

// Get returns the known addresses.
func (s *NodeStore) Get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.addrs...)
}

// Set replaces the known addresses.
func (s *NodeStore) Set(addrs []string) {
	s.mu.Lock()
	s.addrs = append([]string(nil), addrs...)
	s.mu.Unlock()
}

// Connector connects to a cluster. Use it with sql.OpenDB.
type Connector struct {
	Store *NodeStore
	Name  string
	// TLS, when set, secures connections (mutual TLS with a client
	// certificate in it).
	TLS *tls.Config
	// RetryTimeout bounds how long one request keeps trying.
	RetryTimeout time.Duration
	// NotIdempotent turns off the session id and sequence number on writes
	// (for benchmarks comparing with servers that cannot record them): a
	// write whose outcome is unknown then fails with ErrUnknownOutcome
	// instead of being retried.
	NotIdempotent bool
	// Read is the read level of the connector's queries (ReadLeader by
	// default; a query's context may choose another, see WithRead), and
	// MaxStaleness the bound of ReadStale.
	Read         ReadLevel
	MaxStaleness time.Duration
	// ReadNodes is where the read connection of ReadAny and ReadStale
	// queries goes: ReadFollowers (the default) or ReadAllNodes.
	ReadNodes ReadNodes

	reconnects, writeRetries atomic.Uint64
	// readNext picks each connection's read node round-robin.
	readNext atomic.Uint64
}

// ReadLevel is where a query may be served and what it promises (see
// docs/CONSISTENCY.md).
type ReadLevel uint8

const (
	// ReadLeader: linearizable, served by the leader (the default, and
	// what clients of the original protocol get).
	ReadLeader ReadLevel = iota
	// ReadAny: linearizable, served by any node; queries go to one node
	// per connection, chosen round-robin (see ReadNodes), and writes to
	// the leader.
	ReadAny
	// ReadStale: served by any node from its own state, which includes
	// every write committed more than MaxStaleness before the query (on
	// the serving node's clock).
	ReadStale
)

// ReadNodes chooses the nodes a connection's read connection (of ReadAny
// and ReadStale queries) goes to, one per connection, round-robin.
type ReadNodes uint8

const (
	// ReadFollowers: the nodes other than the leader the connection
	// found, and the leader only when none of them accepts. The leader
	// already runs every write and answers every follower's read index
	// request (one small message for a batch of reads), so a read it
	// serves itself costs it a whole query where one a follower serves
	// costs it a fraction of a message.
	ReadFollowers ReadNodes = iota
	// ReadAllNodes: every known node, the leader too.
	ReadAllNodes
)

// ParseReadNodes parses "followers" or "all".
func ParseReadNodes(s string) (ReadNodes, error) {
	switch s {
	case "followers", "":
		return ReadFollowers, nil
	case "all":
		return ReadAllNodes, nil
	}
	return 0, fmt.Errorf("dqlite: unknown read_nodes %q (followers or all)", s)
}

func (r ReadNodes) String() string {
	if r == ReadAllNodes {
		return "all"
	}
	return "followers"
}

// ParseReadLevel parses "leader", "any" or "stale".
func ParseReadLevel(s string) (ReadLevel, error) {
	switch s {
	case "leader", "":
		return ReadLeader, nil
	case "any":
		return ReadAny, nil
	case "stale":
		return ReadStale, nil
	}
	return 0, fmt.Errorf("dqlite: unknown read level %q (leader, any or stale)", s)
}

func (l ReadLevel) String() string {
	switch l {
	case ReadAny:
		return "any"
	case ReadStale:
		return "stale"
	}
	return "leader"
}

type readKey struct{}

type readChoice struct {
	level ReadLevel
	max   time.Duration
}

// WithRead returns a context whose queries use the read level (and, for
// ReadStale, the staleness bound maxStaleness) instead of the connector's.
func WithRead(ctx context.Context, level ReadLevel, maxStaleness time.Duration) context.Context {
	return context.WithValue(ctx, readKey{}, readChoice{level, maxStaleness})
}

// readOf is the read level and bound a query uses.
func (c *Connector) readOf(ctx context.Context) (ReadLevel, time.Duration) {
	if rc, ok := ctx.Value(readKey{}).(readChoice); ok {
		return rc.level, rc.max
	}
	return c.Read, c.MaxStaleness
}

// Stats counts the connector's recoveries.
type Stats struct {
	// Reconnects counts connections dropped and re-established to the
	// (new) leader.
	Reconnects uint64
	// WriteRetries counts writes sent again after an attempt whose outcome
	// was unknown (deduplicated by the cluster).
	WriteRetries uint64
}

// Stats returns the connector's counters.
func (c *Connector) Stats() Stats {
	return Stats{Reconnects: c.reconnects.Load(), WriteRetries: c.writeRetries.Load()}
}

// NewConnector returns a connector to the database name on the cluster
// with the given node addresses.
func NewConnector(addresses []string, name string) *Connector {
	return &Connector{Store: &NodeStore{addrs: addresses}, Name: name, RetryTimeout: DefaultRetryTimeout}
}

// Connect returns a connection (it reaches the leader lazily, on first use).
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	client := binary.LittleEndian.Uint64(b[:]) | 1 // never 0 (0: no deduplication)
	cn := &conn{c: c, client: client}
	if err := cn.connect(ctx); err != nil {
		return nil, err
	}
	return cn, nil
}

// Driver returns the driver.
func (c *Connector) Driver() driver.Driver { return &Driver{} }

type conn struct {
	c      *Connector
	w      *wire.Conn // nil: not connected
	db     uint32
	client uint64
	seq    uint64
	// inTx: a transaction spanning requests is open on this connection;
	// txLost: its server session is gone (the transaction rolled back).
	inTx, txLost bool
	// open is the last query's rows, which may still be streaming when
	// the transaction sends its next request.
	open *rows
	// r is the read connection (nil: not connected) of queries at
	// ReadAny and ReadStale, to the node of index rnode in the store's
	// addresses (picked round-robin when rpicked turns true), opened with
	// OpenAny as database rdb. Until readHold, no node accepted one: such
	// queries go to the leader.
	r        *wire.Conn
	rdb      uint32
	rnode    uint64
	rpicked  bool
	readHold time.Time
}

var (
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
)

// connect finds the leader and opens the database, with capped backoff,
// within the retry window.
func (cn *conn) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, cn.c.RetryTimeout)
	defer cancel()
	backoff := backoffMin
	for {
		err := cn.tryConnect(ctx)
		if err == nil {
			return nil
		}
		if !retryable(err) && !isProbe(err) {
			return err
		}
		if serr := sleep(ctx, backoff); serr != nil {
			return fmt.Errorf("dqlite: connecting: %w (%v)", err, serr)
		}
		backoff = min(2*backoff, backoffMax)
	}
}

func isProbe(err error) bool {
	var pe *wire.ProbeError
	return errors.As(err, &pe)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (cn *conn) tryConnect(ctx context.Context) error {
	w, err := wire.FindLeader(ctx, cn.c.Store.Get(), cn.c.TLS)
	if err != nil {
		return err
	}
	db, err := w.Open(ctx, cn.c.Name)
	if err != nil {
		w.Close()
		return err
	}
	if servers, err := w.Cluster(ctx, 1); err == nil && len(servers) > 0 {
		// Voters first: they are the ones that can lead.
		var voters, others []string
		for _, s := range servers {
			if s.Role == wire.RoleVoter {
				voters = append(voters, s.Address)
			} else {
				others = append(others, s.Address)
			}
		}
		cn.c.Store.Set(append(voters, others...))
	}
	cn.w, cn.db = w, db
	if cn.r != nil && cn.c.ReadNodes == ReadFollowers && cn.r.Address == w.Address {
		// The read node became the leader: move the reads to a follower.
		cn.dropRead()
	}
	return nil
}

func (cn *conn) drop() {
	if cn.w != nil {
		cn.c.reconnects.Add(1)
		cn.w.Close()
		cn.w = nil
	}
}

// retryable reports errors after which a request may be tried again on
// the (new) leader: not-leader and leadership-lost answers, a missing
// database (the server dropped it), and broken connections.
func retryable(err error) bool {
	var we *wire.Error
	if errors.As(err, &we) {
		switch we.Code {
		case wire.CodeNotLeader, wire.CodeNotLeaderLegacy, wire.CodeLeadershipLost,
			wire.CodeLeadershipLostLegacy, wire.CodeNotFound:
			return true
		}
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, wire.ErrBroken) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNREFUSED)
}

// sentUnknown reports errors after which a sent write may have happened.
func sentUnknown(err error) bool {
	var we *wire.Error
	if errors.As(err, &we) {
		return we.Code == wire.CodeLeadershipLost || we.Code == wire.CodeLeadershipLostLegacy
	}
	return true // a broken connection after sending
}

func (cn *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	params, err := toParams(args)
	if err != nil {
		return nil, err
	}
	if !cn.inTx && sqltext.LoneTxControl(query) != "" {
		return nil, ErrUseBeginTx
	}
	if cn.inTx {
		res, err := cn.txExec(ctx, query, params)
		if err != nil {
			return nil, err
		}
		return result{int64(res.LastInsertID), int64(res.RowsAffected)}, nil
	}
	cn.seq++
	req := &wire.Request{Type: wire.ReqExecSQL, Schema: wire.SchemaDedup, SQL: query, Params: params,
		Client: cn.client, Seq: cn.seq}
	if cn.c.NotIdempotent {
		req.Schema, req.Client, req.Seq = 1, 0, 0
	}
	var res wire.Result
	err = cn.send(ctx, true, func(rctx context.Context) error {
		req.DB = cn.db
		var err error
		res, err = cn.w.Exec(rctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return result{int64(res.LastInsertID), int64(res.RowsAffected)}, nil
}

func (cn *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	params, err := toParams(args)
	if err != nil {
		return nil, err
	}
	if !cn.inTx && sqltext.LoneTxControl(query) != "" {
		// As in ExecContext: a transaction the driver does not know of
		// would be split across connections.
		return nil, ErrUseBeginTx
	}
	req := &wire.Request{Type: wire.ReqQuerySQL, SQL: query, Params: params}
	if len(params) > 255 {
		req.Schema = 1
	}
	if cn.inTx {
		if err := cn.txUsable(); err != nil {
			return nil, err
		}
		req.DB = cn.db
		rr, err := cn.w.Query(ctx, req)
		if err != nil {
			return nil, cn.txFailed(err)
		}
		cn.open = &rows{rr: rr}
		return cn.open, nil
	}
	// A statement sent as a query may write (INSERT ... RETURNING): it is
	// deduplicated as an Exec is, so a retry after an unknown outcome
	// returns the first attempt's rows instead of writing again. The
	// server ignores the sequence number of a read. Without
	// deduplication, one that may write is not sent again once its
	// outcome is unknown.
	mayWrite := !sqltext.ReadOnly(query)
	if level, maxStale := cn.c.readOf(ctx); level != ReadLeader && !mayWrite {
		return cn.queryRead(ctx, req, level, maxStale)
	}
	if !cn.c.NotIdempotent {
		cn.seq++
		req.Schema, req.Client, req.Seq = wire.SchemaDedup, cn.client, cn.seq
	}
	var rr *wire.RowsReader
	err = cn.send(ctx, mayWrite, func(context.Context) error {
		req.DB = cn.db
		var err error
		rr, err = cn.w.Query(ctx, req) // the rows outlive the call: the caller's ctx
		return err
	})
	if err != nil {
		return nil, err
	}
	return &rows{rr: rr}, nil
}

// queryRead sends a query that surely reads at level ReadAny or ReadStale
// (QUERY_SQL with wire.SchemaRead) on the read connection (see sendRead).
func (cn *conn) queryRead(ctx context.Context, req *wire.Request, level ReadLevel, maxStale time.Duration) (driver.Rows, error) {
	req.Schema = wire.SchemaRead
	switch level {
	case ReadAny:
		req.ReadLevel = wire.ReadAny
	case ReadStale:
		if maxStale <= 0 || maxStale > wire.MaxStalenessUs*time.Microsecond {
			return nil, fmt.Errorf("dqlite: read level stale needs a staleness bound (max_staleness) above 0 and at most %v, not %v",
				time.Duration(wire.MaxStalenessUs)*time.Microsecond, maxStale)
		}
		req.ReadLevel = wire.ReadStale
		req.MaxStalenessUs = uint64((maxStale + time.Microsecond - 1) / time.Microsecond)
	default:
		return nil, fmt.Errorf("dqlite: unknown read level %d", level)
	}
	if !cn.c.NotIdempotent {
		cn.seq++
		req.Client, req.Seq = cn.client, cn.seq
	}
	var rr *wire.RowsReader
	err := cn.sendRead(ctx, func(w *wire.Conn, db uint32) error {
		r := req
		if w == cn.w {
			// The leader serves it at level leader, which keeps every
			// level's promise, without the extension: a server without
			// it (another version) answers too.
			r = &wire.Request{Type: req.Type, Schema: wire.SchemaDedup, SQL: req.SQL, Params: req.Params, Client: req.Client, Seq: req.Seq}
			if cn.c.NotIdempotent {
				r.Schema, r.Client, r.Seq = 1, 0, 0
			}
		}
		r.DB = db
		var err error
		rr, err = w.Query(ctx, r) // the rows outlive the call: the caller's ctx
		return err
	})
	if err != nil {
		return nil, err
	}
	return &rows{rr: rr}, nil
}

// sendRead sends a read (safe to send again) on the read connection until
// it succeeds, fails for good or the retry window ends: after a retryable
// failure it drops the connection and moves to the next node. When no
// node accepts a read connection, the read goes to the leader (send), in
// what is left of the window, and so do those of the next backoffMax.
func (cn *conn) sendRead(ctx context.Context, call func(w *wire.Conn, db uint32) error) error {
	rctx, cancel := context.WithTimeout(ctx, cn.c.RetryTimeout)
	defer cancel()
	toLeader := func() error {
		return cn.send(rctx, false, func(context.Context) error { return call(cn.w, cn.db) })
	}
	backoff := backoffMin
	for {
		if cn.r == nil {
			if time.Now().Before(cn.readHold) {
				return toLeader()
			}
			if err := cn.connectRead(rctx); err != nil {
				if rctx.Err() != nil {
					return err
				}
				cn.readHold = time.Now().Add(backoffMax)
				return toLeader()
			}
		}
		err := call(cn.r, cn.rdb)
		if err == nil || !retryable(err) {
			return err
		}
		cn.dropRead()
		if serr := sleep(rctx, backoff); serr != nil {
			return err
		}
		backoff = min(2*backoff, backoffMax)
	}
}

// connectRead opens the read connection: to the connection's read node,
// or, when it fails, to each next candidate in turn (readCandidates), then
// to the leader when the candidates left it out.
func (cn *conn) connectRead(ctx context.Context) error {
	addrs := cn.c.Store.Get()
	if len(addrs) == 0 {
		return errors.New("dqlite: no node addresses")
	}
	cands, last := cn.readCandidates(addrs)
	if !cn.rpicked {
		cn.rnode, cn.rpicked = cn.c.readNext.Add(1)-1, true
	}
	var errs []error
	try := func(addr string) bool {
		w, err := wire.Dial(ctx, addr, cn.c.TLS)
		if err == nil {
			var db uint32
			if db, err = w.OpenAny(ctx, cn.c.Name); err == nil {
				cn.r, cn.rdb = w, db
				return true
			}
			w.Close()
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		return false
	}
	for range cands {
		if try(cands[cn.rnode%uint64(len(cands))]) {
			return nil
		}
		cn.rnode++
		if ctx.Err() != nil {
			break
		}
	}
	if last != "" && ctx.Err() == nil && try(last) {
		return nil
	}
	return fmt.Errorf("dqlite: no node accepted a read connection: %w", errors.Join(errs...))
}

// readCandidates are the addresses the read connection rotates over, and
// last, one to try when none of them accepts ("": none). With
// ReadFollowers they are the known nodes but the leader of the
// connection's leader connection, which is last; with ReadAllNodes, or
// when no other node is known, every known node.
func (cn *conn) readCandidates(addrs []string) (cands []string, last string) {
	if cn.c.ReadNodes == ReadAllNodes || cn.w == nil {
		return addrs, ""
	}
	for _, a := range addrs {
		if a != cn.w.Address {
			cands = append(cands, a)
		}
	}
	if len(cands) == 0 || len(cands) == len(addrs) {
		return addrs, "" // the leader alone, or not among them
	}
	return cands, cn.w.Address
}

// dropRead closes the read connection; the next one goes to the next node.
func (cn *conn) dropRead() {
	if cn.r != nil {
		cn.r.Close()
		cn.r = nil
		cn.rnode++
	}
}

// send sends a request to the leader until it succeeds, fails for good or
// the retry window ends, reconnecting as needed. A request that may write
// (mayWrite) whose outcome is unknown is sent again only with
// deduplication (the request keeps its session id and sequence number);
// without (Connector.NotIdempotent) it fails at once with
// ErrUnknownOutcome, and when the retry window ends after it the error
// wraps ErrUnknownOutcome too. Otherwise call must be safe to send again:
// a read, or a BEGIN (an attempt whose reply was lost ended with its
// connection, and the server rolled it back).
func (cn *conn) send(ctx context.Context, mayWrite bool, call func(ctx context.Context) error) error {
	rctx, cancel := context.WithTimeout(ctx, cn.c.RetryTimeout)
	defer cancel()
	backoff := backoffMin
	unknown := false // a previous attempt may have written
	for {
		var err error
		if cn.w == nil {
			err = cn.tryConnect(rctx)
		}
		if err == nil {
			if err = call(rctx); err == nil {
				return nil
			}
			if retryable(err) {
				if mayWrite && sentUnknown(err) {
					if cn.c.NotIdempotent {
						cn.drop()
						return fmt.Errorf("%w: %v", ErrUnknownOutcome, err)
					}
					unknown = true
					cn.c.writeRetries.Add(1)
				}
				cn.drop()
			}
		}
		if !retryable(err) && !isProbe(err) {
			return err
		}
		if serr := sleep(rctx, backoff); serr != nil {
			if unknown {
				return fmt.Errorf("%w: %v", ErrUnknownOutcome, err)
			}
			return err
		}
		backoff = min(2*backoff, backoffMax)
	}
}

func (cn *conn) Ping(ctx context.Context) error {
	if cn.w == nil {
		return cn.connect(ctx)
	}
	return nil
}

// IsValid looks at the leader connection only: a broken read connection
// is replaced by the next read.
func (cn *conn) IsValid() bool { return cn.w == nil || cn.w.Broken() == nil }

func (cn *conn) Prepare(query string) (driver.Stmt, error) {
	return cn.PrepareContext(context.Background(), query)
}

// PrepareContext returns a client-side statement: it runs as EXEC_SQL or
// QUERY_SQL, so it survives leader changes.
func (cn *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return &stmt{cn: cn, sql: query}, nil
}

func (cn *conn) Begin() (driver.Tx, error) {
	return cn.BeginTx(context.Background(), driver.TxOptions{})
}

// BeginTx opens a transaction spanning requests (see the package doc).
// SQLite's transactions are serializable, which satisfies every isolation
// level database/sql names; ReadOnly is accepted and not enforced.
func (cn *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if cn.inTx {
		return nil, errors.New("dqlite: a transaction is already open on this connection")
	}
	err := cn.send(ctx, false, func(ctx context.Context) error {
		_, err := cn.w.Exec(ctx, &wire.Request{Type: wire.ReqExecSQL, Schema: 1, SQL: "BEGIN", DB: cn.db})
		return err
	})
	if err != nil {
		return nil, err
	}
	cn.inTx, cn.txLost = true, false
	return &tx{cn: cn}, nil
}

// txUsable checks that the transaction's server session still exists, and
// frees the connection from a query still streaming (database/sql lets a
// transaction run a statement while its earlier rows are open).
func (cn *conn) txUsable() error {
	if cn.open != nil {
		err := cn.open.rr.Buffer(TxRowsBufferBytes)
		cn.open = nil
		if err != nil {
			return cn.txFailed(err)
		}
	}
	if cn.txLost || cn.w == nil || cn.w.Broken() != nil {
		cn.txLost = true
		return fmt.Errorf("%w: the connection to the leader was lost", ErrTxAborted)
	}
	return nil
}

// txFailed classifies the error of a request inside the transaction: a
// lost connection or leader ends the transaction (the server rolls it
// back); a statement's own error leaves it open, as in SQLite.
func (cn *conn) txFailed(err error) error {
	var we *wire.Error
	switch {
	case errors.As(err, &we) && we.Code == wire.CodeTxAborted:
		return fmt.Errorf("%w: %v", ErrTxAborted, err)
	case retryable(err):
		cn.drop()
		cn.txLost = true
		return fmt.Errorf("%w: %v", ErrTxAborted, err)
	}
	return err
}

// txExec sends one request inside the transaction, once.
func (cn *conn) txExec(ctx context.Context, query string, params []wire.Value) (wire.Result, error) {
	if err := cn.txUsable(); err != nil {
		return wire.Result{}, err
	}
	req := &wire.Request{Type: wire.ReqExecSQL, Schema: 1, SQL: query, Params: params, DB: cn.db}
	rctx, cancel := context.WithTimeout(ctx, cn.c.RetryTimeout)
	defer cancel()
	res, err := cn.w.Exec(rctx, req)
	if err != nil {
		return wire.Result{}, cn.txFailed(err)
	}
	return res, nil
}

type tx struct{ cn *conn }

// Commit replicates the transaction. A lost reply leaves its outcome
// unknown (ErrUnknownOutcome); any other failure leaves nothing committed.
func (t *tx) Commit() error {
	cn := t.cn
	defer func() { cn.inTx, cn.txLost, cn.open = false, false, nil }()
	if err := cn.txUsable(); err != nil {
		return err // never sent: the session is gone, and its transaction
	}
	rctx, cancel := context.WithTimeout(context.Background(), cn.c.RetryTimeout)
	defer cancel()
	_, err := cn.w.Exec(rctx, &wire.Request{Type: wire.ReqExecSQL, Schema: 1, SQL: "COMMIT", DB: cn.db})
	if err == nil {
		return nil
	}
	var we *wire.Error
	isWire := errors.As(err, &we)
	switch {
	case errors.Is(err, wire.ErrNotSent):
		cn.drop()
		return fmt.Errorf("%w: %v", ErrTxAborted, err)
	case isWire && (we.Code == wire.CodeTxAborted || we.Code == wire.CodeNotLeader || we.Code == wire.CodeNotLeaderLegacy):
		// Refused before it ran: the transaction was rolled back.
		if we.Code != wire.CodeTxAborted {
			cn.drop()
		}
		return fmt.Errorf("%w: %v", ErrTxAborted, err)
	case !isWire || we.Code == wire.CodeLeadershipLost || we.Code == wire.CodeLeadershipLostLegacy:
		// Sent, and the answer lost: the entry may have committed.
		cn.drop()
		return fmt.Errorf("%w: %v", ErrUnknownOutcome, err)
	}
	// SQLite refused the COMMIT (e.g. a deferred constraint): the
	// transaction is still open on the server; database/sql considers it
	// ended, so roll it back.
	_, _ = cn.txExec(context.Background(), "ROLLBACK", nil)
	return err
}

// Rollback drops the transaction. A lost connection already did.
func (t *tx) Rollback() error {
	cn := t.cn
	defer func() { cn.inTx, cn.txLost, cn.open = false, false, nil }()
	if cn.txLost || cn.w == nil {
		return nil
	}
	_, err := cn.txExec(context.Background(), "ROLLBACK", nil)
	if errors.Is(err, ErrTxAborted) {
		return nil
	}
	return err
}

func (cn *conn) Close() error {
	cn.drop()
	cn.dropRead()
	return nil
}

type stmt struct {
	cn  *conn
	sql string
}

func (s *stmt) Close() error  { return nil }
func (s *stmt) NumInput() int { return -1 }
func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.cn.ExecContext(context.Background(), s.sql, named(args))
}
func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.cn.QueryContext(context.Background(), s.sql, named(args))
}
func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.cn.ExecContext(ctx, s.sql, args)
}
func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.cn.QueryContext(ctx, s.sql, args)
}

func named(args []driver.Value) []driver.NamedValue {
	out := make([]driver.NamedValue, len(args))
	for i, a := range args {
		out[i] = driver.NamedValue{Ordinal: i + 1, Value: a}
	}
	return out
}

type result struct{ last, rows int64 }

func (r result) LastInsertId() (int64, error) { return r.last, nil }
func (r result) RowsAffected() (int64, error) { return r.rows, nil }

// ISO8601 is the layout times are sent in.
const ISO8601 = "2006-01-02 15:04:05.999999999-07:00"

func toParams(args []driver.NamedValue) ([]wire.Value, error) {
	out := make([]wire.Value, len(args))
	for i, a := range args {
		if a.Name != "" {
			return nil, fmt.Errorf("dqlite: named parameter %q: only positional parameters are supported", a.Name)
		}
		switch x := a.Value.(type) {
		case nil:
			out[i] = wire.Value{Type: wire.Null}
		case int64:
			out[i] = wire.Value{Type: wire.Integer, V: x}
		case float64:
			out[i] = wire.Value{Type: wire.Float, V: x}
		case bool:
			v := int64(0)
			if x {
				v = 1
			}
			out[i] = wire.Value{Type: wire.Boolean, V: v}
		case string:
			out[i] = wire.Value{Type: wire.Text, V: x}
		case []byte:
			out[i] = wire.Value{Type: wire.Blob, V: x}
		case time.Time:
			out[i] = wire.Value{Type: wire.ISO8601, V: x.Format(ISO8601)}
		default:
			return nil, fmt.Errorf("dqlite: parameter %d: unsupported type %T", i+1, a.Value)
		}
	}
	return out, nil
}

type rows struct {
	rr *wire.RowsReader
}

func (r *rows) Columns() []string { return r.rr.Columns }
func (r *rows) Close() error      { return r.rr.Close() }

// timeLayouts are tried, in order, for ISO-8601 column values.
var timeLayouts = []string{
	"2006-01-02 15:04:05.999999999-07:00",
	"2006-01-02T15:04:05.999999999-07:00",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05",
	"2006-01-02T15:04:05",
	"2006-01-02 15:04",
	"2006-01-02T15:04",
	"2006-01-02",
}

func (r *rows) Next(dest []driver.Value) error {
	row, err := r.rr.Next()
	if err != nil {
		return err
	}
	for i, v := range row {
		if i >= len(dest) {
			break
		}
		switch v.Type {
		case wire.UnixTime:
			dest[i] = time.Unix(v.V.(int64), 0)
		case wire.ISO8601:
			s := strings.TrimSuffix(v.V.(string), "Z")
			if s == "" {
				dest[i] = nil
				continue
			}
			var t time.Time
			var perr error
			for _, l := range timeLayouts {
				if t, perr = time.ParseInLocation(l, s, time.UTC); perr == nil {
					break
				}
			}
			if perr != nil {
				return fmt.Errorf("dqlite: column %d: cannot parse time %q", i+1, s)
			}
			dest[i] = t
		case wire.Boolean:
			dest[i] = v.V.(int64) != 0
		default:
			dest[i] = v.V
		}
	}
	return nil
}
