// Command dqlite is an interactive SQL shell for a dqlite cluster.
//
//	dqlite -s 127.0.0.1:9001,127.0.0.1:9002 app            interactive
//	dqlite -s 127.0.0.1:9001 -c "SELECT * FROM t" app       one command
//	dqlite -s 127.0.0.1:9001 app < script.sql               a script
//
// Statements end with ";" (a script's last may omit it). Dot commands:
// .cluster, .leader, .describe, .weight N, .transfer ID, .remove ID,
// .dump FILE, .databases, .open NAME, .read LEVEL [DURATION], .help.
// Output is a table, or JSON with -f json.
//
// .read any (linearizable) or .read stale DURATION (at most DURATION
// old) sends the following queries to the first node of -s that accepts
// them, leader or not; .read leader (the default) to the leader.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dqlite-go/dqlite/internal/sqltext"
	"github.com/dqlite-go/dqlite/wire"
	"golang.org/x/term"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

type shell struct {
	servers []string
	db      string
	format  string
	tls     *tls.Config
	timeout time.Duration
	out     io.Writer
	conn    *wire.Conn
	dbID    uint32
	// inTx: a BEGIN succeeded on conn and no COMMIT or ROLLBACK yet; the
	// transaction lives in conn's server session, so it is never retried
	// on another connection.
	inTx bool
	// readLevel (a wire.Read* level) and maxStale are the level of
	// queries (.read); those at ReadAny or ReadStale go to rconn, a
	// connection to servers[rnode] with the database rdbID opened on it
	// by OpenAny.
	readLevel uint64
	maxStale  time.Duration
	rconn     *wire.Conn
	rdbID     uint32
	rnode     int
}

// codeAuth is SQLITE_AUTH: a statement the node reserves for itself.
const codeAuth = 23

// errTxLost is returned when the connection holding an open transaction
// is lost: the server rolled the transaction back.
var errTxLost = errors.New("the connection to the leader was lost inside a transaction: it was rolled back")

func run(args []string, in io.Reader, out, errOut io.Writer) int {
	fs := flag.NewFlagSet("dqlite", flag.ContinueOnError)
	fs.SetOutput(errOut)
	servers := fs.String("s", "127.0.0.1:9001", "comma-separated node addresses")
	format := fs.String("f", "tabular", "output format: tabular or json")
	command := fs.String("c", "", "run this SQL or dot command and exit")
	timeout := fs.Duration("timeout", 30*time.Second, "time limit of one command")
	cert := fs.String("tls-cert", "", "client certificate (PEM) for mutual TLS, with -tls-key and -tls-ca")
	key := fs.String("tls-key", "", "client private key (PEM)")
	ca := fs.String("tls-ca", "", "the cluster's CA certificate (PEM)")
	fs.Usage = func() {
		fmt.Fprintln(errOut, "usage: dqlite [-s addresses] [-f tabular|json] [-c command] DATABASE")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 || (*format != "tabular" && *format != "json") {
		fs.Usage()
		return 2
	}
	sh := &shell{servers: strings.Split(*servers, ","), db: fs.Arg(0), format: *format, timeout: *timeout, out: out}
	if *cert != "" || *key != "" || *ca != "" {
		cfg, err := loadTLS(*cert, *key, *ca)
		if err != nil {
			fmt.Fprintln(errOut, "dqlite:", err)
			return 2
		}
		sh.tls = cfg
	}
	defer sh.close()
	if *command != "" {
		if err := sh.do(*command); err != nil {
			fmt.Fprintln(errOut, "Error:", err)
			return 1
		}
		return 0
	}
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return sh.interactive(f, errOut)
	}
	// A script: statements end with ';' at the end of a line. A BEGIN ...
	// COMMIT block is sent as one request (atomic even if the connection
	// breaks half way), so the output of sqlite3's .dump loads as it is.
	// Typed interactively, BEGIN opens a transaction spanning requests.
	failed := false
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var stmt, txn strings.Builder
	inTxn := false
	flush := func() {
		text := strings.TrimSpace(stmt.String())
		stmt.Reset()
		if text == "" {
			return
		}
		switch kw := firstWord(text); {
		case kw == "BEGIN" && !inTxn:
			inTxn = true
			txn.Reset()
			txn.WriteString(text + "\n")
			return
		case inTxn && (kw == "COMMIT" || kw == "END"):
			inTxn = false
			txn.WriteString(text)
			text = txn.String()
		case inTxn:
			txn.WriteString(text + "\n")
			return
		}
		if err := sh.do(text); err != nil {
			fmt.Fprintln(errOut, "Error:", err)
			failed = true
		}
	}
	for sc.Scan() {
		line := sc.Text()
		if stmt.Len() == 0 && strings.HasPrefix(strings.TrimSpace(line), ".") {
			stmt.WriteString(line)
			flush()
			continue
		}
		stmt.WriteString(line)
		stmt.WriteString("\n")
		if strings.HasSuffix(strings.TrimSpace(line), ";") {
			flush()
		}
	}
	flush()
	if inTxn {
		fmt.Fprintln(errOut, "Error: the script ends inside BEGIN without COMMIT; nothing of it was sent")
		failed = true
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(errOut, "Error:", err)
		return 1
	}
	if failed {
		return 1
	}
	return 0
}

func loadTLS(cert, key, ca string) (*tls.Config, error) {
	if cert == "" || key == "" || ca == "" {
		return nil, errors.New("TLS needs all of -tls-cert, -tls-key and -tls-ca")
	}
	c, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate", ca)
	}
	return &tls.Config{Certificates: []tls.Certificate{c}, RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
}

// interactive reads commands with line editing and history.
func (sh *shell) interactive(f *os.File, errOut io.Writer) int {
	state, err := term.MakeRaw(int(f.Fd()))
	if err != nil {
		fmt.Fprintln(errOut, "dqlite:", err)
		return 1
	}
	defer term.Restore(int(f.Fd()), state)
	t := term.NewTerminal(struct {
		io.Reader
		io.Writer
	}{f, os.Stdout}, "dqlite> ")
	sh.out = t
	fmt.Fprintf(t, "dqlite shell: database %s on %s. End statements with ';'. Type .help for help.\n", sh.db, strings.Join(sh.servers, ","))
	var stmt strings.Builder
	for {
		line, err := t.ReadLine()
		if err != nil { // EOF (Ctrl-D) or Ctrl-C
			fmt.Fprintln(t)
			return 0
		}
		if stmt.Len() == 0 && strings.HasPrefix(strings.TrimSpace(line), ".") {
			if err := sh.do(strings.TrimSpace(line)); err != nil {
				fmt.Fprintln(t, "Error:", err)
			}
			continue
		}
		stmt.WriteString(line)
		stmt.WriteString("\n")
		if !strings.HasSuffix(strings.TrimSpace(line), ";") {
			t.SetPrompt("   ...> ")
			continue
		}
		t.SetPrompt("dqlite> ")
		text := strings.TrimSpace(stmt.String())
		stmt.Reset()
		if err := sh.do(text); err != nil {
			fmt.Fprintln(t, "Error:", err)
		}
	}
}

func (sh *shell) close() {
	if sh.conn != nil {
		sh.conn.Close()
		sh.conn = nil
	}
	sh.closeRead()
}

func (sh *shell) closeRead() {
	if sh.rconn != nil {
		sh.rconn.Close()
		sh.rconn = nil
	}
}

// connectRead opens the read connection: to servers[rnode], or the next
// ones in turn when it fails.
func (sh *shell) connectRead(ctx context.Context) error {
	if sh.rconn != nil && sh.rconn.Broken() == nil {
		return nil
	}
	sh.closeRead()
	var errs []error
	for range sh.servers {
		addr := sh.servers[sh.rnode%len(sh.servers)]
		c, err := wire.Dial(ctx, addr, sh.tls)
		if err == nil {
			var id uint32
			if id, err = c.OpenAny(ctx, sh.db); err == nil {
				sh.rconn, sh.rdbID = c, id
				return nil
			}
			c.Close()
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		sh.rnode++
	}
	return errors.Join(errs...)
}

// readQuery runs a query that surely reads at the .read level on the read
// connection, moving to the next server when one cannot serve it (each at
// most once); when none can, the query goes to the leader, at its level.
func (sh *shell) readQuery(ctx context.Context, sql string) error {
	for range sh.servers {
		if sh.connectRead(ctx) != nil {
			break
		}
		err := sh.query(ctx, sh.rconn, sh.rdbID, sql, true)
		if err == nil || !movable(err, sh.rconn) {
			return err
		}
		sh.closeRead()
		sh.rnode++
	}
	return sh.retry(ctx, func() error { return sh.query(ctx, sh.conn, sh.dbID, sql, true) })
}

// movable reports whether a request that failed with err on c may go to
// another node: c broke, or the node cannot serve it (not leader, no
// database).
func movable(err error, c *wire.Conn) bool {
	var we *wire.Error
	return errors.As(err, &we) && (we.Code == wire.CodeNotLeader || we.Code == wire.CodeNotLeaderLegacy ||
		we.Code == wire.CodeNotFound) || c.Broken() != nil
}

// connect reaches the leader and opens the database.
func (sh *shell) connect(ctx context.Context) error {
	if sh.conn != nil && sh.conn.Broken() == nil {
		return nil
	}
	if sh.inTx {
		sh.inTx = false
		return errTxLost
	}
	sh.close()
	c, err := findLeader(ctx, sh.servers, sh.tls)
	if err != nil {
		return err
	}
	id, err := c.Open(ctx, sh.db)
	if err != nil {
		c.Close()
		return fmt.Errorf("opening %s on %s: %w", sh.db, c.Address, err)
	}
	sh.conn, sh.dbID = c, id
	return nil
}

// findLeader is wire.FindLeader, tried again with capped backoff (10 ms
// doubling to 1 s) while no node names a leader (an election, a cluster
// just started), until ctx ends, as the driver does.
func findLeader(ctx context.Context, servers []string, tlsCfg *tls.Config) (*wire.Conn, error) {
	backoff := 10 * time.Millisecond
	for {
		c, err := wire.FindLeader(ctx, servers, tlsCfg)
		var pe *wire.ProbeError
		if err == nil || !errors.As(err, &pe) {
			return c, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
		backoff = min(2*backoff, time.Second)
	}
}

// retry runs f on the leader, reconnecting once if it moved.
func (sh *shell) retry(ctx context.Context, f func() error) error {
	for attempt := 0; ; attempt++ {
		if err := sh.connect(ctx); err != nil {
			return err
		}
		err := f()
		if err == nil || !movable(err, sh.conn) || attempt > 0 {
			return err
		}
		if sh.inTx {
			sh.inTx = false
			sh.close()
			sh.conn = nil
			return fmt.Errorf("%w (%v)", errTxLost, err)
		}
		sh.close()
		sh.conn = nil
	}
}

func (sh *shell) do(cmd string) error {
	ctx, cancel := context.WithTimeout(context.Background(), sh.timeout)
	defer cancel()
	if strings.HasPrefix(cmd, ".") {
		return sh.dot(ctx, strings.Fields(cmd))
	}
	if isQuery(cmd) && sh.readLevel != wire.ReadLeader && !sh.inTx && sqltext.ReadOnly(cmd) {
		return sh.readQuery(ctx, cmd)
	}
	if isQuery(cmd) {
		err := sh.retry(ctx, func() error { return sh.query(ctx, sh.conn, sh.dbID, cmd, false) })
		// A statement that writes (or a PRAGMA that may only be set inside
		// the transaction a write runs in) goes again as a write.
		var we *wire.Error
		if !errors.As(err, &we) || !strings.Contains(we.Message, "must not write") && we.Code != codeAuth {
			return err
		}
	}
	ctl := sqltext.LoneTxControl(cmd)
	if sh.inTx && (ctl == "COMMIT" || ctl == "END") {
		return sh.commit(ctx, cmd)
	}
	return sh.retry(ctx, func() error {
		res, err := sh.conn.Exec(ctx, &wire.Request{Type: wire.ReqExecSQL, DB: sh.dbID, SQL: cmd})
		var we *wire.Error
		switch {
		case err == nil && ctl == "BEGIN":
			sh.inTx = true
		case err == nil && ctl != "", errors.As(err, &we) && we.Code == wire.CodeTxAborted && ctl != "":
			sh.inTx = false
		}
		if err != nil {
			return err
		}
		if sh.format == "json" {
			return json.NewEncoder(sh.out).Encode(map[string]uint64{"last_insert_id": res.LastInsertID, "rows_affected": res.RowsAffected})
		}
		fmt.Fprintf(sh.out, "OK (%d rows affected, last insert id %d)\n", res.RowsAffected, res.LastInsertID)
		return nil
	})
}

// commit sends the open transaction's COMMIT once (never on another
// connection) and says what is known of its outcome.
func (sh *shell) commit(ctx context.Context, cmd string) error {
	if sh.conn == nil || sh.conn.Broken() != nil {
		sh.inTx = false
		return errTxLost
	}
	_, err := sh.conn.Exec(ctx, &wire.Request{Type: wire.ReqExecSQL, DB: sh.dbID, SQL: cmd})
	var we *wire.Error
	isWire := errors.As(err, &we)
	switch {
	case err == nil:
		sh.inTx = false
		fmt.Fprintln(sh.out, "OK (committed)")
		return nil
	case errors.Is(err, wire.ErrNotSent):
		sh.inTx = false
		return fmt.Errorf("%w (%v)", errTxLost, err)
	case isWire && (we.Code == wire.CodeTxAborted || we.Code == wire.CodeNotLeader || we.Code == wire.CodeNotLeaderLegacy):
		sh.inTx = false
		return fmt.Errorf("the transaction was rolled back, nothing of it committed: %w", err)
	case !isWire || we.Code == wire.CodeLeadershipLost || we.Code == wire.CodeLeadershipLostLegacy:
		// Sent, answer lost: it may have committed. The server's session
		// no longer holds it either way.
		sh.inTx = false
		return fmt.Errorf("the outcome of the COMMIT is unknown (it may have committed): check before running the transaction again: %w", err)
	}
	return err // SQLite refused the COMMIT: the transaction is still open
}

func firstWord(sql string) string {
	f := strings.Fields(strings.ToUpper(sql))
	if len(f) == 0 {
		return ""
	}
	return strings.TrimSuffix(f[0], ";")
}

// isQuery guesses whether a statement returns rows (sent as a query, a
// statement that writes runs as a write: INSERT ... RETURNING shows its
// rows).
func isQuery(sql string) bool {
	switch firstWord(sql) {
	case "SELECT", "WITH", "PRAGMA", "EXPLAIN", "VALUES":
		return true
	}
	for _, w := range strings.Fields(strings.ToUpper(sql)) {
		if strings.Trim(w, ",;()") == "RETURNING" {
			return true
		}
	}
	return false
}

// query runs a query on c, database db; with atLevel, at the .read level
// (SchemaRead).
func (sh *shell) query(ctx context.Context, c *wire.Conn, db uint32, sql string, atLevel bool) error {
	req := &wire.Request{Type: wire.ReqQuerySQL, DB: db, SQL: strings.TrimSuffix(strings.TrimSpace(sql), ";")}
	if atLevel {
		req.Schema, req.ReadLevel = wire.SchemaRead, sh.readLevel
		if sh.readLevel == wire.ReadStale {
			req.MaxStalenessUs = uint64((sh.maxStale + time.Microsecond - 1) / time.Microsecond)
		}
	}
	rr, err := c.Query(ctx, req)
	if err != nil {
		return err
	}
	defer rr.Close()
	var rows [][]wire.Value
	for {
		row, err := rr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		rows = append(rows, row)
	}
	sh.table(rr.Columns, rows)
	return nil
}

func render(v wire.Value) any {
	switch x := v.V.(type) {
	case []byte:
		return fmt.Sprintf("x'%x'", x)
	case nil:
		return nil
	}
	if v.Type == wire.Boolean {
		return v.V.(int64) != 0
	}
	return v.V
}

func (sh *shell) table(cols []string, rows [][]wire.Value) {
	if sh.format == "json" {
		out := make([]map[string]any, 0, len(rows))
		for _, r := range rows {
			m := map[string]any{}
			for i, c := range cols {
				m[c] = render(r[i])
			}
			out = append(out, m)
		}
		json.NewEncoder(sh.out).Encode(out)
		return
	}
	tw := tabwriter.NewWriter(sh.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(cols, "\t"))
	seps := make([]string, len(cols))
	for i, c := range cols {
		seps[i] = strings.Repeat("-", max(len(c), 1))
	}
	fmt.Fprintln(tw, strings.Join(seps, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, v := range r {
			if x := render(v); x == nil {
				cells[i] = "NULL"
			} else {
				cells[i] = fmt.Sprint(x)
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	tw.Flush()
}

const help = `.cluster          members: id, address, role
.leader           the leader's address
.describe         failure domain and weight of the node connected to
.weight N         set the weight of the node connected to
.transfer ID      hand leadership to node ID (0: the best one)
.remove ID        remove node ID from the cluster
.dump FILE        write the database to FILE (opens with sqlite3)
.databases        the database this shell has open
.open NAME        switch to database NAME (created by its first write)
.read LEVEL [DUR] where the following queries are served: leader (the
                  default), any (any node of -s, the first that can;
                  linearizable) or stale DURATION (any node, from state
                  at most DURATION old, e.g. .read stale 500ms)
.help             this text`

// setRead handles .read [leader|any|stale DURATION]: without arguments,
// it shows the level.
func (sh *shell) setRead(args []string) error {
	if len(args) == 0 {
		switch sh.readLevel {
		case wire.ReadAny:
			fmt.Fprintln(sh.out, "any")
		case wire.ReadStale:
			fmt.Fprintf(sh.out, "stale %v\n", sh.maxStale)
		default:
			fmt.Fprintln(sh.out, "leader")
		}
		return nil
	}
	const usage = ".read takes leader, any, or stale and a duration (.read stale 500ms)"
	switch {
	case args[0] == "leader" && len(args) == 1:
		sh.readLevel, sh.maxStale = wire.ReadLeader, 0
	case args[0] == "any" && len(args) == 1:
		sh.readLevel, sh.maxStale = wire.ReadAny, 0
	case args[0] == "stale" && len(args) == 2:
		d, err := time.ParseDuration(args[1])
		if err != nil || d <= 0 || d > time.Duration(wire.MaxStalenessUs)*time.Microsecond {
			return fmt.Errorf(".read stale %s: want a duration from 1us to 1h, such as 500ms", args[1])
		}
		sh.readLevel, sh.maxStale = wire.ReadStale, d
	default:
		return errors.New(usage)
	}
	return nil
}

func (sh *shell) dot(ctx context.Context, f []string) error {
	arg := func() (uint64, error) {
		if len(f) != 2 {
			return 0, fmt.Errorf("%s takes one number", f[0])
		}
		return strconv.ParseUint(f[1], 10, 64)
	}
	switch f[0] {
	case ".help":
		fmt.Fprintln(sh.out, help)
		return nil
	case ".databases":
		fmt.Fprintf(sh.out, "main: %s\n", sh.db)
		return nil
	case ".read":
		return sh.setRead(f[1:])
	case ".open":
		if len(f) != 2 {
			return errors.New(".open takes a database name")
		}
		if sh.inTx {
			return errors.New("a transaction is open: COMMIT or ROLLBACK it first")
		}
		old := sh.db
		sh.close()
		sh.db = f[1]
		if err := sh.connect(ctx); err != nil {
			sh.db = old
			return err
		}
		return nil
	case ".cluster":
		return sh.retry(ctx, func() error {
			servers, err := sh.conn.Cluster(ctx, 1)
			if err != nil {
				return err
			}
			rows := make([][]wire.Value, len(servers))
			for i, s := range servers {
				role := map[uint64]string{wire.RoleVoter: "voter", wire.RoleStandby: "standby", wire.RoleSpare: "spare"}[s.Role]
				rows[i] = []wire.Value{{Type: wire.Integer, V: int64(s.ID)}, {Type: wire.Text, V: s.Address}, {Type: wire.Text, V: role}}
			}
			sh.table([]string{"id", "address", "role"}, rows)
			return nil
		})
	case ".leader":
		return sh.retry(ctx, func() error {
			_, addr, err := sh.conn.Leader(ctx)
			if err == nil {
				fmt.Fprintln(sh.out, addr)
			}
			return err
		})
	case ".describe":
		return sh.retry(ctx, func() error {
			d, w, err := sh.conn.Describe(ctx)
			if err == nil {
				fmt.Fprintf(sh.out, "%s: failure domain %d, weight %d\n", sh.conn.Address, d, w)
			}
			return err
		})
	case ".weight", ".transfer", ".remove":
		n, err := arg()
		if err != nil {
			return err
		}
		typ := map[string]uint8{".weight": wire.ReqWeight, ".transfer": wire.ReqTransfer, ".remove": wire.ReqRemove}[f[0]]
		return sh.retry(ctx, func() error { return sh.conn.Empty(ctx, &wire.Request{Type: typ, ID: n}) })
	case ".dump":
		if len(f) != 2 {
			return errors.New(".dump takes a file name")
		}
		return sh.retry(ctx, func() error {
			files, err := sh.conn.Dump(ctx, sh.db)
			if err != nil {
				return err
			}
			if err := os.WriteFile(f[1], files[0].Data, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(sh.out, "wrote %s (%d bytes)\n", f[1], len(files[0].Data))
			return nil
		})
	}
	return fmt.Errorf("unknown command %s (.help lists them)", f[0])
}
