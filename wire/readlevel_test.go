package wire

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

// TestReadLevelCodec pins SchemaRead's QUERY and QUERY_SQL layouts (the
// SchemaDedup words, then the level and the bound, then the schema-1
// body) and OPEN schema 1's, and checks each decodes back to itself.
func TestReadLevelCodec(t *testing.T) {
	params := []Value{{Integer, int64(7)}, {Text, "hi"}}
	p1 := "0200000001030000" + word(7) + text("hi")
	cases := []struct {
		name string
		req  Request
		want string
	}{
		{"QUERY_SQL any", Request{Type: ReqQuerySQL, Schema: SchemaRead, DB: 4, SQL: "X", Params: params,
			Client: 5, Seq: 6, ReadLevel: ReadAny},
			hdr(9, 9, 3) + word(5) + word(6) + word(ReadAny) + word(0) + word(4) + text("X") + p1},
		{"QUERY_SQL stale", Request{Type: ReqQuerySQL, Schema: SchemaRead, SQL: "X",
			Client: 5, Seq: 6, ReadLevel: ReadStale, MaxStalenessUs: 100_000},
			hdr(6, 9, 3) + word(5) + word(6) + word(ReadStale) + word(100_000) + word(0) + text("X")},
		{"QUERY_SQL leader, no session", Request{Type: ReqQuerySQL, Schema: SchemaRead, SQL: "X", ReadLevel: ReadLeader},
			hdr(6, 9, 3) + word(0) + word(0) + word(0) + word(0) + word(0) + text("X")},
		{"QUERY any", Request{Type: ReqQuery, Schema: SchemaRead, DB: 2, Stmt: 3, Params: params,
			Client: 5, Seq: 6, ReadLevel: ReadAny},
			hdr(8, 6, 3) + word(5) + word(6) + word(ReadAny) + word(0) + "0200000003000000" + p1},
		{"QUERY stale", Request{Type: ReqQuery, Schema: SchemaRead, Stmt: 1, ReadLevel: ReadStale, MaxStalenessUs: MaxStalenessUs},
			hdr(5, 6, 3) + word(0) + word(0) + word(ReadStale) + word(MaxStalenessUs) + "0000000001000000"},
		{"OPEN any node", Request{Type: ReqOpen, Schema: 1, Name: "test", VFS: "volatile"},
			hdr(4, 3, 1) + text("test") + word(0) + text("volatile")},
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
		if len(want.Params) == 0 {
			want.Params = nil
		}
		if !reflect.DeepEqual(*got, want) {
			t.Errorf("%s: decoded %+v, want %+v", c.name, *got, want)
		}
	}
}

// TestReadLevelRefused: an unknown level, a stale read without a bound or
// with one past MaxStalenessUs, and SchemaRead on requests it does not
// extend decode to a *Error (sent back as FAILURE), never a panic or a
// framing error.
func TestReadLevelRefused(t *testing.T) {
	cases := []struct {
		name string
		req  Request
		msg  string
	}{
		{"QUERY_SQL level 3", Request{Type: ReqQuerySQL, Schema: SchemaRead, SQL: "X", ReadLevel: 3}, "unknown read level 3"},
		{"QUERY level 3", Request{Type: ReqQuery, Schema: SchemaRead, ReadLevel: 3}, "unknown read level 3"},
		{"QUERY_SQL stale bound 0", Request{Type: ReqQuerySQL, Schema: SchemaRead, SQL: "X", ReadLevel: ReadStale}, "staleness bound 0us"},
		{"QUERY stale bound 0", Request{Type: ReqQuery, Schema: SchemaRead, ReadLevel: ReadStale}, "staleness bound 0us"},
		{"QUERY_SQL stale bound too large", Request{Type: ReqQuerySQL, Schema: SchemaRead, SQL: "X",
			ReadLevel: ReadStale, MaxStalenessUs: MaxStalenessUs + 1}, "staleness bound"},
		{"EXEC_SQL schema 3", Request{Type: ReqExecSQL, Schema: SchemaRead, SQL: "X"}, "schema"},
		{"EXEC schema 3", Request{Type: ReqExec, Schema: SchemaRead}, "schema"},
		{"OPEN schema 2", Request{Type: ReqOpen, Schema: 2, Name: "test"}, "schema"},
	}
	for _, c := range cases {
		msg, err := EncodeRequest(&c.req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		h, body, err := ReadMessage(bytes.NewReader(msg), MaxMessageBytes)
		if err != nil {
			t.Fatal(err)
		}
		_, err = DecodeRequest(h, body)
		var we *Error
		if !errors.As(err, &we) {
			t.Errorf("%s: decode error %v (%T), want a *Error", c.name, err, err)
			continue
		}
		if !strings.Contains(we.Message, c.msg) {
			t.Errorf("%s: %q, want it to mention %q", c.name, we.Message, c.msg)
		}
		// It encodes as a FAILURE the client reads back.
		fh, fbody, err := ReadMessage(bytes.NewReader(EncodeResponse(Failure(we.Code, we.Message))), MaxMessageBytes)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := DecodeResponse(fh, fbody, 0); err != nil || r.Type != RespFailure || r.Code != we.Code || r.Message != we.Message {
			t.Errorf("%s: FAILURE round trip: %+v %v", c.name, r, err)
		}
	}
}

// TestReadLevelServer: a node that does not lead refuses OPEN (schema 0)
// and leader-level queries with "not leader", and accepts OpenAny and
// queries at the any and stale levels; a bad level comes back as a
// FAILURE and the connection stays usable.
func TestReadLevelServer(t *testing.T) {
	addr := startServer(t, &fakeBackend{notLeader: true, rows: 3})
	ctx := ctx5(t)
	c := dial(t, addr)
	defer c.Close()
	var we *Error
	if _, err := c.Open(ctx, "db"); !errors.As(err, &we) || we.Code != CodeNotLeader {
		t.Fatalf("OPEN on a follower: %v, want not leader", err)
	}
	if _, err := c.OpenAny(ctx, "db"); err != nil {
		t.Fatalf("OpenAny on a follower: %v", err)
	}
	count := func(r *Request) (int, error) {
		rr, err := c.Query(ctx, r)
		if err != nil {
			return 0, err
		}
		defer rr.Close()
		n := 0
		for {
			_, err := rr.Next()
			if err == io.EOF {
				return n, nil
			}
			if err != nil {
				return n, err
			}
			n++
		}
	}
	for _, r := range []Request{
		{Type: ReqQuerySQL, Schema: SchemaRead, SQL: "SELECT 1", Client: 1, Seq: 1, ReadLevel: ReadAny},
		{Type: ReqQuerySQL, Schema: SchemaRead, SQL: "SELECT 1", ReadLevel: ReadStale, MaxStalenessUs: 1000},
	} {
		if n, err := count(&r); err != nil || n != 3 {
			t.Fatalf("level %d on a follower: %d rows, %v", r.ReadLevel, n, err)
		}
	}
	for _, r := range []Request{
		{Type: ReqQuerySQL, Schema: SchemaRead, SQL: "SELECT 1", ReadLevel: ReadLeader},
		{Type: ReqQuerySQL, Schema: SchemaDedup, SQL: "SELECT 1", Client: 1, Seq: 2},
		{Type: ReqExecSQL, SQL: "INSERT INTO t VALUES (1)"},
	} {
		if _, err := count(&r); !errors.As(err, &we) || we.Code != CodeNotLeader {
			t.Fatalf("%+v on a follower: %v, want not leader", r, err)
		}
	}
	if _, err := count(&Request{Type: ReqQuerySQL, Schema: SchemaRead, SQL: "SELECT 1", ReadLevel: 3}); !errors.As(err, &we) ||
		!strings.Contains(we.Message, "unknown read level") {
		t.Fatalf("level 3: %v, want a FAILURE naming the level", err)
	}
	if _, err := count(&Request{Type: ReqQuerySQL, Schema: SchemaRead, SQL: "SELECT 1", ReadLevel: ReadStale}); !errors.As(err, &we) ||
		!strings.Contains(we.Message, "staleness bound") {
		t.Fatalf("stale without a bound: %v, want a FAILURE naming the bound", err)
	}
	if n, err := count(&Request{Type: ReqQuerySQL, Schema: SchemaRead, SQL: "SELECT 1", ReadLevel: ReadAny}); err != nil || n != 3 {
		t.Fatalf("after the refusals: %d rows, %v", n, err)
	}
}
