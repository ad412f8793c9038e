package wire

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// word is 8 little-endian bytes of v, in hex.
func word(v uint64) string {
	var e Encoder
	e.U64(v)
	return hexOf(e.B)
}

func hdr(words uint32, typ, schema uint8) string {
	var e Encoder
	e.U32(words)
	e.U8(typ)
	e.U8(schema)
	e.U8(0)
	e.U8(0)
	return hexOf(e.B)
}

func text(s string) string {
	var e Encoder
	e.Text(s)
	return hexOf(e.B)
}

// TestRequestGolden pins every request's bytes to WIRE.md's layouts, and
// checks each decodes back to itself.
func TestRequestGolden(t *testing.T) {
	params := []Value{{Integer, int64(7)}, {Text, "hi"}}
	p0 := "0201030000000000" + word(7) + text("hi")
	p1 := "0200000001030000" + word(7) + text("hi")
	cases := []struct {
		name string
		req  Request
		want string
	}{
		{"LEADER", Request{Type: ReqLeader}, hdr(1, 0, 0) + word(0)},
		{"CLIENT", Request{Type: ReqClient, ID: 9}, hdr(1, 1, 0) + word(9)},
		{"HEARTBEAT", Request{Type: ReqHeartbeat, ID: 12345}, hdr(1, 2, 0) + word(12345)},
		{"OPEN", Request{Type: ReqOpen, Name: "test", VFS: "volatile"},
			hdr(4, 3, 0) + text("test") + word(0) + text("volatile")},
		{"PREPARE", Request{Type: ReqPrepare, DB: 0, SQL: "SELECT 1"}, hdr(3, 4, 0) + word(0) + text("SELECT 1")},
		{"PREPARE schema 1", Request{Type: ReqPrepare, Schema: 1, SQL: "SELECT 1"}, hdr(3, 4, 1) + word(0) + text("SELECT 1")},
		{"EXEC", Request{Type: ReqExec, DB: 0, Stmt: 3, Params: params},
			hdr(4, 5, 0) + "0000000003000000" + p0},
		{"EXEC schema 1", Request{Type: ReqExec, Schema: 1, Stmt: 3, Params: params},
			hdr(4, 5, 1) + "0000000003000000" + p1},
		{"EXEC no params", Request{Type: ReqExec, Stmt: 3}, hdr(1, 5, 0) + "0000000003000000"},
		{"EXEC dedup", Request{Type: ReqExec, Schema: SchemaDedup, Stmt: 3, Params: params, Client: 5, Seq: 6},
			hdr(6, 5, 2) + word(5) + word(6) + "0000000003000000" + p1},
		{"QUERY", Request{Type: ReqQuery, Stmt: 1, Params: params}, hdr(4, 6, 0) + "0000000001000000" + p0},
		{"FINALIZE", Request{Type: ReqFinalize, Stmt: 1}, hdr(1, 7, 0) + "0000000001000000"},
		{"EXEC_SQL", Request{Type: ReqExecSQL, SQL: "X", Params: params}, hdr(5, 8, 0) + word(0) + text("X") + p0},
		{"EXEC_SQL dedup", Request{Type: ReqExecSQL, Schema: SchemaDedup, SQL: "X", Client: 1, Seq: 2},
			hdr(4, 8, 2) + word(1) + word(2) + word(0) + text("X")},
		{"QUERY_SQL", Request{Type: ReqQuerySQL, SQL: "X", Params: params}, hdr(5, 9, 0) + word(0) + text("X") + p0},
		{"QUERY_SQL schema 1", Request{Type: ReqQuerySQL, Schema: 1, SQL: "X", Params: params},
			hdr(5, 9, 1) + word(0) + text("X") + p1},
		{"INTERRUPT", Request{Type: ReqInterrupt}, hdr(1, 10, 0) + word(0)},
		{"CONNECT", Request{Type: ReqConnect, ID: 2, Address: "127.0.0.1:9002"},
			hdr(3, 11, 0) + word(2) + text("127.0.0.1:9002")},
		{"ADD", Request{Type: ReqAdd, ID: 4, Address: "a:1"}, hdr(2, 12, 0) + word(4) + text("a:1")},
		{"ASSIGN", Request{Type: ReqAssign, ID: 4, Role: RoleStandby}, hdr(2, 13, 0) + word(4) + word(1)},
		{"REMOVE", Request{Type: ReqRemove, ID: 4}, hdr(1, 14, 0) + word(4)},
		{"DUMP", Request{Type: ReqDump, Name: "test"}, hdr(1, 15, 0) + text("test")},
		{"CLUSTER", Request{Type: ReqCluster, ID: 1}, hdr(1, 16, 0) + word(1)},
		{"TRANSFER", Request{Type: ReqTransfer, ID: 2}, hdr(1, 17, 0) + word(2)},
		{"DESCRIBE", Request{Type: ReqDescribe}, hdr(1, 18, 0) + word(0)},
		{"WEIGHT", Request{Type: ReqWeight, ID: 3}, hdr(1, 19, 0) + word(3)},
	}
	for _, c := range cases {
		msg, err := EncodeRequest(&c.req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := hexOf(msg); got != c.want {
			t.Errorf("%s:\n got  %s\n want %s", c.name, got, c.want)
			continue
		}
		h, body, err := ReadMessage(bytes.NewReader(msg), MaxMessageBytes)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeRequest(h, body)
		if err != nil {
			t.Errorf("%s: decode: %v", c.name, err)
			continue
		}
		want := c.req
		if want.Type == ReqAssign && want.Role == 0 {
			want.Role = RoleVoter
		}
		if len(want.Params) == 0 {
			want.Params = nil
		}
		if !reflect.DeepEqual(*got, want) {
			t.Errorf("%s: decoded %+v, want %+v", c.name, *got, want)
		}
	}
	// Legacy PROMOTE: ASSIGN without a role means voter.
	r, err := DecodeRequest(Header{Type: ReqAssign}, mustHex(word(4)))
	if err != nil || r.Role != RoleVoter || r.ID != 4 {
		t.Fatalf("legacy promote: %+v %v", r, err)
	}
}

func mustHex(s string) []byte {
	var b []byte
	for i := 0; i+1 < len(s); i += 2 {
		var v byte
		for _, c := range s[i : i+2] {
			v <<= 4
			switch {
			case c >= '0' && c <= '9':
				v |= byte(c - '0')
			default:
				v |= byte(c-'a') + 10
			}
		}
		b = append(b, v)
	}
	return b
}

// TestResponseGolden pins every response's bytes.
func TestResponseGolden(t *testing.T) {
	cases := []struct {
		name   string
		resp   Response
		want   string
		format uint64
	}{
		{"FAILURE", Response{Type: RespFailure, Code: 10250, Message: "not leader"},
			hdr(3, 0, 0) + word(10250) + text("not leader"), 0},
		{"SERVER", Response{Type: RespServer, ID: 1, Address: "127.0.0.1:9001"},
			hdr(3, 1, 0) + word(1) + text("127.0.0.1:9001"), 0},
		{"WELCOME", Response{Type: RespWelcome, Heartbeat: 15000}, hdr(1, 2, 0) + word(15000), 0},
		{"SERVERS format 0", Response{Type: RespServers, Servers: []ServerInfo{{1, "a:1", 0}, {2, "b:2", 0}}},
			hdr(5, 3, 0) + word(2) + word(1) + text("a:1") + word(2) + text("b:2"), 0},
		{"SERVERS format 1", Response{Type: RespServers, Format: 1, Servers: []ServerInfo{{1, "a:1", 0}, {2, "b:2", 2}}},
			hdr(7, 3, 0) + word(2) + word(1) + text("a:1") + word(0) + word(2) + text("b:2") + word(2), 1},
		{"DB", Response{Type: RespDB}, hdr(1, 4, 0) + word(0), 0},
		{"STMT", Response{Type: RespStmt, Stmt: 3, ParamCount: 2}, hdr(2, 5, 0) + "0000000003000000" + word(2), 0},
		{"STMT schema 1", Response{Type: RespStmt, Schema: 1, Stmt: 3, ParamCount: 2, Tail: 9},
			hdr(3, 5, 1) + "0000000003000000" + word(2) + word(9), 0},
		{"RESULT", Response{Type: RespResult, LastInsertID: 5, RowsAffected: 1 << 33},
			hdr(2, 6, 0) + word(5) + word(1<<33), 0},
		{"EMPTY", Response{Type: RespEmpty}, hdr(1, 8, 0) + word(0), 0},
		{"FILES", Response{Type: RespFiles, Files: []File{{"test", bytes.Repeat([]byte{7}, 16)}, {"test-wal", nil}}},
			hdr(8, 9, 0) + word(2) + text("test") + word(16) + strings.Repeat("07", 16) + text("test-wal") + word(0), 0},
		{"METADATA", Response{Type: RespMetadata, Domain: 1, Weight: 2}, hdr(2, 10, 0) + word(1) + word(2), 0},
	}
	for _, c := range cases {
		msg := EncodeResponse(&c.resp)
		if got := hexOf(msg); got != c.want {
			t.Errorf("%s:\n got  %s\n want %s", c.name, got, c.want)
			continue
		}
		h, body, _ := ReadMessage(bytes.NewReader(msg), MaxMessageBytes)
		got, err := DecodeResponse(h, body, c.format)
		if err != nil {
			t.Errorf("%s: decode: %v", c.name, err)
			continue
		}
		want := c.resp
		if want.Type == RespFiles {
			want.Files[1].Data = []byte{}
		}
		if !reflect.DeepEqual(*got, want) {
			t.Errorf("%s: decoded %+v, want %+v", c.name, *got, want)
		}
	}
}

// TestRowsGolden pins a ROWS message: column count and names, a row, the
// marker; and a continuation repeats the columns.
func TestRowsGolden(t *testing.T) {
	w := &RowsEncoder{Columns: []string{"id", "name", "x"}}
	if err := w.Add([]Value{{Integer, int64(1)}, {Text, "a"}, {Null, nil}}); err != nil {
		t.Fatal(err)
	}
	part := w.Finish(RowsPart)
	want := hdr(9, 7, 0) + word(3) + text("id") + text("name") + text("x") +
		"3105000000000000" + word(1) + text("a") + word(0) + "eeeeeeeeeeeeeeee"
	if got := hexOf(part); got != want {
		t.Fatalf("ROWS:\n got  %s\n want %s", got, want)
	}
	done := w.Finish(RowsDone)
	if got, want := hexOf(done), hdr(5, 7, 0)+word(3)+text("id")+text("name")+text("x")+"ffffffffffffffff"; got != want {
		t.Fatalf("last ROWS:\n got  %s\n want %s", got, want)
	}
	_, body, _ := ReadMessage(bytes.NewReader(part), MaxMessageBytes)
	r, err := DecodeRows(body)
	if err != nil || !r.More || len(r.Rows) != 1 || r.Rows[0][1].V != "a" || r.Columns[2] != "x" {
		t.Fatalf("decode: %+v %v", r, err)
	}
	_, body, _ = ReadMessage(bytes.NewReader(done), MaxMessageBytes)
	if r, err = DecodeRows(body); err != nil || r.More || len(r.Rows) != 0 {
		t.Fatalf("decode last: %+v %v", r, err)
	}
}

// TestColumnValue checks the declared-type rules, including the cases the
// original server got wrong.
func TestColumnValue(t *testing.T) {
	cases := []struct {
		decl string
		v    any
		want Value
	}{
		{"DATETIME", int64(5), Value{UnixTime, int64(5)}},
		{"timestamp", "2024-01-02", Value{ISO8601, "2024-01-02"}},
		{"DATE", nil, Value{ISO8601, ""}},
		{"DATETIME", 1.5, Value{Float, 1.5}},
		{"DATETIME(3)", int64(5), Value{Integer, int64(5)}},
		{"BOOLEAN", int64(7), Value{Boolean, int64(1)}},
		{"BOOLEAN", nil, Value{Null, nil}},
		{"BOOLEAN", "yes", Value{Text, "yes"}},
		{"INTEGER", int64(7), Value{Integer, int64(7)}},
		{"", []byte{1}, Value{Blob, []byte{1}}},
	}
	for _, c := range cases {
		if got := ColumnValue(c.decl, c.v); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s %v: %v, want %v", c.decl, c.v, got, c.want)
		}
	}
}
