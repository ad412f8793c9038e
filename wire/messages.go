package wire

import (
	"fmt"
	"strings"
)

// Request types (client to server).
const (
	ReqLeader    = 0
	ReqClient    = 1
	ReqHeartbeat = 2
	ReqOpen      = 3
	ReqPrepare   = 4
	ReqExec      = 5
	ReqQuery     = 6
	ReqFinalize  = 7
	ReqExecSQL   = 8
	ReqQuerySQL  = 9
	ReqInterrupt = 10
	ReqConnect   = 11
	ReqAdd       = 12
	ReqAssign    = 13
	ReqRemove    = 14
	ReqDump      = 15
	ReqCluster   = 16
	ReqTransfer  = 17
	ReqDescribe  = 18
	ReqWeight    = 19
)

// Response types (server to client).
const (
	RespFailure  = 0
	RespServer   = 1
	RespWelcome  = 2
	RespServers  = 3
	RespDB       = 4
	RespStmt     = 5
	RespResult   = 6
	RespRows     = 7
	RespEmpty    = 8
	RespFiles    = 9
	RespMetadata = 10
)

// SchemaDedup is our extension of EXEC and EXEC_SQL (never sent by other
// clients): the body starts with a client session id and a sequence number
// (two uint64), then the schema-1 body. The cluster records the last
// sequence number applied per client session, so a retried write is applied
// at most once.
const SchemaDedup = 2

// SchemaRead is our extension of QUERY and QUERY_SQL (never sent by other
// clients): the body starts as SchemaDedup's (client session id, sequence
// number), then the read level (a uint64: ReadLeader, ReadAny or
// ReadStale) and the staleness bound in microseconds (a uint64, ReadStale
// only), then the schema-1 body. A query with a level other than
// ReadLeader is served by any node (see docs/CONSISTENCY.md).
//
// OPEN with schema 1 (the same body) opens the database on any node, for
// such reads; schema 0 is refused by a node that does not lead, as before.
const SchemaRead = 3

// Read levels of SchemaRead.
const (
	ReadLeader = 0 // linearizable, served by the leader (the default)
	ReadAny    = 1 // linearizable, served by any node that knows a leader
	ReadStale  = 2 // served from a node's state at most the bound old
)

// Wire role codes.
const (
	RoleVoter   = 0
	RoleStandby = 1
	RoleSpare   = 2
)

// Error codes clients act on (see WIRE.md).
const (
	CodeError = 1
	CodeBusy  = 5
	// CodeInterrupt (SQLITE_INTERRUPT): the request never ran, its client
	// interrupted it or closed the connection while it waited.
	CodeInterrupt      = 9
	CodeLeaderExec     = 10
	CodeNotFound       = 12
	CodeDescribeFormat = 15
	CodeNoDatabase     = 1002
	CodeParse          = 1005
	CodeNotLeader      = 10250
	CodeLeadershipLost = 10506
	// CodeTxAborted (SQLITE_ABORT_ROLLBACK): the server rolled back the
	// connection's open transaction (leadership lost, idle too long);
	// nothing of it committed.
	CodeTxAborted = 516
	// Legacy codes the Go client of dqlite also treats as "reconnect".
	CodeNotLeaderLegacy      = 8202
	CodeLeadershipLostLegacy = 8458
)

// Error is a FAILURE response: an error code and message.
type Error struct {
	Code    uint64
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("dqlite: %s (code %d)", e.Message, e.Code) }

// Request is any request, decoded. Which fields are set depends on Type.
type Request struct {
	Type, Schema uint8
	// ID is the LEADER/CLIENT/HEARTBEAT/CONNECT/ADD/ASSIGN/REMOVE/TRANSFER
	// id (client id, timestamp, node id), the db id of OPEN's reply users,
	// the CLUSTER/DESCRIBE format and the WEIGHT weight.
	ID       uint64
	DB, Stmt uint32
	Name     string // OPEN, DUMP
	Flags    uint64 // OPEN
	VFS      string // OPEN
	SQL      string // PREPARE, EXEC_SQL, QUERY_SQL
	Address  string // CONNECT, ADD
	Role     uint64 // ASSIGN (voter when absent: legacy PROMOTE)
	Params   []Value
	// Client and Seq identify a write for deduplication (SchemaDedup,
	// SchemaRead).
	Client, Seq uint64
	// ReadLevel and MaxStalenessUs are a query's read level (SchemaRead).
	ReadLevel, MaxStalenessUs uint64
}

// paramsSchema is the parameter tuple schema of a request schema.
func paramsSchema(schema uint8) uint8 {
	if schema == 0 {
		return 0
	}
	return 1
}

// EncodeRequest returns the message for r.
func EncodeRequest(r *Request) ([]byte, error) {
	var e Encoder
	switch r.Type {
	case ReqLeader, ReqClient, ReqHeartbeat, ReqRemove, ReqTransfer, ReqCluster, ReqDescribe, ReqWeight:
		e.U64(r.ID)
	case ReqOpen:
		e.Text(r.Name)
		e.U64(r.Flags)
		e.Text(r.VFS)
	case ReqPrepare, ReqExecSQL, ReqQuerySQL:
		if r.Schema >= SchemaDedup && r.Type != ReqPrepare {
			e.U64(r.Client)
			e.U64(r.Seq)
		}
		if r.Schema == SchemaRead && r.Type == ReqQuerySQL {
			e.U64(r.ReadLevel)
			e.U64(r.MaxStalenessUs)
		}
		e.U64(uint64(r.DB))
		e.Text(r.SQL)
		if r.Type != ReqPrepare && len(r.Params) > 0 {
			if err := EncodeParams(&e, paramsSchema(r.Schema), r.Params); err != nil {
				return nil, err
			}
		}
	case ReqExec, ReqQuery, ReqFinalize:
		if r.Schema >= SchemaDedup && r.Type != ReqFinalize {
			e.U64(r.Client)
			e.U64(r.Seq)
		}
		if r.Schema == SchemaRead && r.Type == ReqQuery {
			e.U64(r.ReadLevel)
			e.U64(r.MaxStalenessUs)
		}
		e.U32(r.DB)
		e.U32(r.Stmt)
		if r.Type != ReqFinalize && len(r.Params) > 0 {
			if err := EncodeParams(&e, paramsSchema(r.Schema), r.Params); err != nil {
				return nil, err
			}
		}
	case ReqInterrupt:
		e.U64(uint64(r.DB))
	case ReqConnect, ReqAdd:
		e.U64(r.ID)
		e.Text(r.Address)
	case ReqAssign:
		e.U64(r.ID)
		e.U64(r.Role)
	case ReqDump:
		e.Text(r.Name)
	default:
		return nil, fmt.Errorf("wire: unknown request type %d", r.Type)
	}
	return AppendMessage(nil, r.Type, r.Schema, e.B), nil
}

// DecodeRequest decodes a request body. Errors are *Error values to send
// back as FAILURE (framing is intact: the body was read whole).
func DecodeRequest(h Header, body []byte) (*Request, error) {
	r := &Request{Type: h.Type, Schema: h.Schema}
	d := NewDecoder(body)
	schemaOK := func(max uint8) bool { return h.Schema <= max }
	switch h.Type {
	case ReqLeader:
		// The field is unused; a zero-word LEADER is answered too (the
		// original server never answered it).
		if d.Rest() >= 8 {
			r.ID = d.U64("unused")
		}
	case ReqClient, ReqHeartbeat, ReqRemove, ReqTransfer, ReqCluster, ReqDescribe, ReqWeight:
		if !schemaOK(0) {
			return nil, badSchema(h, CodeParse)
		}
		r.ID = d.U64("id")
	case ReqOpen:
		if !schemaOK(1) {
			return nil, badSchema(h, CodeParse)
		}
		r.Name = d.Text("name")
		r.Flags = d.U64("flags")
		r.VFS = d.Text("vfs")
	case ReqPrepare, ReqExecSQL, ReqQuerySQL:
		max := uint8(1)
		switch h.Type {
		case ReqExecSQL:
			max = SchemaDedup
		case ReqQuerySQL:
			max = SchemaRead
		}
		if !schemaOK(max) {
			return nil, badSchema(h, CodeError)
		}
		if h.Schema >= SchemaDedup {
			r.Client, r.Seq = d.U64("client"), d.U64("sequence")
		}
		if h.Schema == SchemaRead {
			if err := decodeReadLevel(d, r); err != nil {
				return nil, err
			}
		}
		r.DB = uint32(d.U64("db id"))
		r.SQL = d.Text("sql")
		if h.Type != ReqPrepare {
			r.Params = DecodeParams(d, paramsSchema(h.Schema))
		}
	case ReqExec, ReqQuery, ReqFinalize:
		max := uint8(SchemaDedup)
		switch h.Type {
		case ReqFinalize:
			max = 0
		case ReqQuery:
			max = SchemaRead
		}
		if !schemaOK(max) {
			code := uint64(CodeError)
			if h.Type == ReqFinalize {
				code = CodeParse
			}
			return nil, badSchema(h, code)
		}
		if h.Schema >= SchemaDedup {
			r.Client, r.Seq = d.U64("client"), d.U64("sequence")
		}
		if h.Schema == SchemaRead {
			if err := decodeReadLevel(d, r); err != nil {
				return nil, err
			}
		}
		r.DB = d.U32("db id")
		r.Stmt = d.U32("statement id")
		if h.Type != ReqFinalize {
			r.Params = DecodeParams(d, paramsSchema(h.Schema))
		}
	case ReqInterrupt:
		if !schemaOK(0) {
			return nil, badSchema(h, CodeParse)
		}
		r.DB = uint32(d.U64("db id"))
	case ReqConnect, ReqAdd:
		if !schemaOK(0) {
			return nil, badSchema(h, CodeParse)
		}
		r.ID = d.U64("node id")
		r.Address = d.Text("address")
	case ReqAssign:
		if !schemaOK(0) {
			return nil, badSchema(h, CodeParse)
		}
		r.ID = d.U64("node id")
		r.Role = RoleVoter // legacy PROMOTE has no role
		if d.Rest() >= 8 {
			r.Role = d.U64("role")
		}
	case ReqDump:
		if !schemaOK(0) {
			return nil, badSchema(h, CodeParse)
		}
		r.Name = d.Text("name")
	default:
		return nil, &Error{CodeParse, fmt.Sprintf("unrecognized request type %d", h.Type)}
	}
	if err := d.Err(); err != nil {
		return nil, &Error{CodeParse, fmt.Sprintf("request type %d: %s", h.Type,
			strings.TrimPrefix(err.Error(), ErrMalformed.Error()+": "))}
	}
	return r, nil
}

func badSchema(h Header, code uint64) error {
	return &Error{code, fmt.Sprintf("unknown schema %d for request type %d", h.Schema, h.Type)}
}

// ServerInfo is one node in a SERVERS response.
type ServerInfo struct {
	ID      uint64
	Address string
	Role    uint64
}

// File is one file of a FILES response.
type File struct {
	Name string
	Data []byte
}

// Response is any response but ROWS, decoded. Which fields are set
// depends on Type.
type Response struct {
	Type, Schema uint8
	Code         uint64 // FAILURE
	Message      string // FAILURE
	ID           uint64 // SERVER
	Address      string // SERVER
	Heartbeat    uint64 // WELCOME: heartbeat timeout in ms
	Format       uint64 // SERVERS: 0 without roles, 1 with
	Servers      []ServerInfo
	DB, Stmt     uint32 // DB, STMT
	ParamCount   uint64 // STMT
	Tail         uint64 // STMT schema 1: byte offset of the unparsed tail
	LastInsertID uint64 // RESULT
	RowsAffected uint64 // RESULT
	Files        []File
	Domain       uint64 // METADATA
	Weight       uint64 // METADATA
}

// EncodeResponse returns the message for r (not ROWS: see RowsEncoder).
func EncodeResponse(r *Response) []byte {
	var e Encoder
	switch r.Type {
	case RespFailure:
		e.U64(r.Code)
		e.Text(r.Message)
	case RespServer:
		e.U64(r.ID)
		e.Text(r.Address)
	case RespWelcome:
		e.U64(r.Heartbeat)
	case RespServers:
		e.U64(uint64(len(r.Servers)))
		for _, s := range r.Servers {
			e.U64(s.ID)
			e.Text(s.Address)
			if r.Format == 1 {
				e.U64(s.Role)
			}
		}
	case RespDB:
		e.U32(r.DB)
		e.U32(0)
	case RespStmt:
		e.U32(r.DB)
		e.U32(r.Stmt)
		e.U64(r.ParamCount)
		if r.Schema == 1 {
			e.U64(r.Tail)
		}
	case RespResult:
		e.U64(r.LastInsertID)
		e.U64(r.RowsAffected)
	case RespEmpty:
		e.U64(0)
	case RespFiles:
		e.U64(uint64(len(r.Files)))
		for _, f := range r.Files {
			e.Text(f.Name)
			e.U64(uint64(len(f.Data)))
			e.B = append(e.B, f.Data...)
		}
	case RespMetadata:
		e.U64(r.Domain)
		e.U64(r.Weight)
	}
	return AppendMessage(nil, r.Type, r.Schema, e.B)
}

// Failure builds a FAILURE response.
func Failure(code uint64, msg string) *Response {
	return &Response{Type: RespFailure, Code: code, Message: msg}
}

// maxServers bounds a SERVERS response's count before allocating.
const maxServers = 1 << 16

// DecodeResponse decodes a response body (not ROWS). format is the CLUSTER
// format asked (the SERVERS layout depends on it).
func DecodeResponse(h Header, body []byte, format uint64) (*Response, error) {
	r := &Response{Type: h.Type, Schema: h.Schema}
	d := NewDecoder(body)
	switch h.Type {
	case RespFailure:
		r.Code = d.U64("code")
		r.Message = d.Text("message")
	case RespServer:
		r.ID = d.U64("id")
		if d.Rest() > 0 { // the legacy reply has only the address
			r.Address = d.Text("address")
		}
	case RespWelcome:
		r.Heartbeat = d.U64("heartbeat timeout")
	case RespServers:
		r.Format = format
		n := d.U64("count")
		if n > maxServers || n*16 > uint64(d.Rest()) {
			d.fail("%d servers in %d bytes", n, d.Rest())
		}
		for i := uint64(0); i < n && d.Err() == nil; i++ {
			s := ServerInfo{ID: d.U64("id"), Address: d.Text("address")}
			if format == 1 {
				s.Role = d.U64("role")
			}
			r.Servers = append(r.Servers, s)
		}
	case RespDB:
		r.DB = d.U32("db id")
		d.U32("unused")
	case RespStmt:
		r.DB = d.U32("db id")
		r.Stmt = d.U32("statement id")
		r.ParamCount = d.U64("parameter count")
		if h.Schema == 1 {
			r.Tail = d.U64("tail offset")
		}
	case RespResult:
		r.LastInsertID = d.U64("last insert id")
		r.RowsAffected = d.U64("rows affected")
	case RespEmpty:
		d.U64("unused")
	case RespFiles:
		n := d.U64("count")
		if n > 16 {
			d.fail("%d files", n)
		}
		for i := uint64(0); i < n && d.Err() == nil; i++ {
			name := d.Text("file name")
			size := d.U64("file size")
			if d.Err() == nil && size > uint64(d.Rest()) {
				d.fail("file %s: %d bytes beyond the body", name, size)
			}
			data := d.take(int(size), "file data")
			if d.Err() == nil {
				r.Files = append(r.Files, File{Name: name, Data: append([]byte{}, data...)})
			}
		}
	case RespMetadata:
		r.Domain = d.U64("failure domain")
		r.Weight = d.U64("weight")
	default:
		return nil, fmt.Errorf("%w: unknown response type %d", ErrMalformed, h.Type)
	}
	if err := d.Err(); err != nil {
		return nil, err
	}
	return r, nil
}

// RowsEncoder builds ROWS messages of about batchBytes each.
type RowsEncoder struct {
	Columns []string
	e       Encoder
	rows    int
}

// Add appends a row to the current message.
func (w *RowsEncoder) Add(row []Value) error {
	if w.e.B == nil {
		w.header()
	}
	w.rows++
	return EncodeRow(&w.e, row)
}

func (w *RowsEncoder) header() {
	w.e.B = w.e.B[:0]
	w.e.U64(uint64(len(w.Columns)))
	for _, c := range w.Columns {
		w.e.Text(c)
	}
}

// Size is the current message's body size.
func (w *RowsEncoder) Size() int { return len(w.e.B) }

// Rows is the number of rows in the current message.
func (w *RowsEncoder) Rows() int { return w.rows }

// Finish ends the current message with marker (RowsPart or RowsDone),
// returns it and starts a new one.
func (w *RowsEncoder) Finish(marker uint64) []byte {
	if w.e.B == nil || len(w.e.B) == 0 {
		w.header()
	}
	w.e.U64(marker)
	msg := AppendMessage(nil, RespRows, 0, w.e.B)
	w.e.B = w.e.B[:0]
	w.rows = 0
	w.header()
	return msg
}

// Rows is one decoded ROWS message.
type Rows struct {
	Columns []string
	Rows    [][]Value
	More    bool // a RowsPart marker: more ROWS messages follow
}

// maxColumns bounds a result's columns (SQLite's own limit is 32767).
const maxColumns = 32767

// DecodeRows decodes a ROWS body.
func DecodeRows(body []byte) (*Rows, error) {
	d := NewDecoder(body)
	n := d.U64("column count")
	if n > maxColumns || n*8 > uint64(d.Rest()) {
		return nil, fmt.Errorf("%w: %d columns in %d bytes", ErrMalformed, n, d.Rest())
	}
	out := &Rows{Columns: make([]string, n)}
	for i := range out.Columns {
		out.Columns[i] = d.Text("column name")
	}
	for d.Err() == nil {
		if d.Rest() < 8 {
			d.fail("rows without an end marker")
			break
		}
		// A marker is a whole word; a row header starts with a type nibble
		// that is never 0xe or 0xf.
		if b := d.b[d.off]; b == 0xee || b == 0xff {
			m := d.U64("marker")
			switch m {
			case RowsPart:
				out.More = true
			case RowsDone:
			default:
				d.fail("bad end marker %#x", m)
			}
			if d.Rest() != 0 {
				d.fail("%d bytes after the end marker", d.Rest())
			}
			break
		}
		if n == 0 {
			d.fail("a row of zero columns")
			break
		}
		out.Rows = append(out.Rows, DecodeRow(d, int(n)))
	}
	if err := d.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// MaxStalenessUs bounds a ReadStale query's bound (one hour).
const MaxStalenessUs = 3600 * 1_000_000

// decodeReadLevel reads SchemaRead's level and bound.
func decodeReadLevel(d *Decoder, r *Request) error {
	r.ReadLevel, r.MaxStalenessUs = d.U64("read level"), d.U64("staleness bound")
	switch {
	case d.Err() != nil:
		return nil // reported by the caller with the rest of the body
	case r.ReadLevel > ReadStale:
		return &Error{CodeError, fmt.Sprintf("unknown read level %d (leader 0, any 1, stale 2)", r.ReadLevel)}
	case r.ReadLevel == ReadStale && (r.MaxStalenessUs == 0 || r.MaxStalenessUs > MaxStalenessUs):
		return &Error{CodeError, fmt.Sprintf("staleness bound %dus outside 1us..%dus", r.MaxStalenessUs, uint64(MaxStalenessUs))}
	}
	return nil
}
