// Command dqlited runs one dqlite-go node.
//
//	dqlited -id 1 -address 127.0.0.1:9001 -dir /var/lib/dqlite/1
//	dqlited -id 2 -address 127.0.0.1:9002 -dir /var/lib/dqlite/2 -join 127.0.0.1:9001
//	dqlited inspect [-repair] DIR
//
// The first node of a new cluster starts without -join and bootstraps a
// cluster of itself. Others start with -join (any reachable members): they
// are added as spares and role management (on the leader) promotes them,
// keeping -voters voters and up to -standbys standbys among the nodes that
// answer. A restarted node rejoins from its data directory (-join is then
// harmless). SIGTERM or SIGINT hands leadership over before the process
// exits. Every flag can also be set by an environment variable: DQLITE_
// and the flag's name in capitals with - as _ (DQLITE_DATA_DIR...).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dqlite-go/dqlite/fsm"
	"github.com/dqlite-go/dqlite/internal/inspectcmd"
	"github.com/dqlite-go/dqlite/internal/mutant"
	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/raft"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "inspect" {
		os.Exit(inspect(os.Stdout, os.Args[2:]))
	}
	os.Exit(run(context.Background(), os.Args[1:], os.Stderr))
}

type options struct {
	id              uint64
	address, dir    string
	join            string
	tlsCert, tlsKey string
	tlsCA           string
	tlsPeerCA       string
	clusterKeyFile  string
	openPeerLinks   bool
	metrics         string
	logLevel        string
	statements      bool
	voters          int
	standbys        int
	domain          uint64
	handover        time.Duration
	tick            time.Duration
	maxClockDrift   float64
	noLeaderLease   bool
	logMemory       int64
	cacheSize       int64
	readCacheSize   int64
	memoryLimit     int64
	mallocArenas    int
	listen          string
	testingBug      string
}

func parse(args []string, errOut io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("dqlited", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.Uint64Var(&o.id, "id", 0, "node id, unique in the cluster (default: derived from -address)")
	fs.StringVar(&o.address, "address", "", "host:port to listen on for clients and peers, as others dial it (required)")
	fs.StringVar(&o.dir, "dir", "", "data directory (required)")
	fs.StringVar(&o.join, "join", "", "comma-separated addresses of cluster members to join (empty: bootstrap a new cluster)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate of this node (turns on mutual TLS, with -tls-key and -tls-ca)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM private key of this node")
	fs.StringVar(&o.tlsCA, "tls-ca", "", "PEM certificate of the cluster's CA")
	fs.StringVar(&o.tlsPeerCA, "tls-peer-ca", "", "PEM certificate of the CA that issues the nodes' certificates, distinct from the clients' "+
		"(-tls-ca): peer links then need a certificate it issued")
	fs.StringVar(&o.clusterKeyFile, "cluster-key-file", "", "file holding the cluster key (hex) that peer links prove; a bootstrapping node creates it "+
		"when missing (default: DIR/cluster-key if present; DQLITE_CLUSTER_KEY, in hex, overrides)")
	fs.BoolVar(&o.openPeerLinks, "open-peer-links", false, "accept peer links that prove nothing on a non-loopback address (anyone reaching the port can act as a member)")
	fs.StringVar(&o.metrics, "metrics", "", "host:port to serve /metrics, /healthz and /readyz on (empty: off)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&o.statements, "statements", false, "replicate SQL statements instead of WAL frames (comparison mode)")
	fs.IntVar(&o.voters, "voters", 3, "voters role management keeps")
	fs.IntVar(&o.standbys, "standbys", 3, "standbys role management keeps, at most")
	fs.Uint64Var(&o.domain, "failure-domain", 0, "failure domain of this node (role management spreads voters)")
	fs.DurationVar(&o.handover, "handover-timeout", 10*time.Second, "how long SIGTERM waits for the leadership hand-over")
	fs.StringVar(&o.listen, "listen", "", "host:port to listen on when it differs from -address (behind a proxy or NAT)")
	fs.StringVar(&o.testingBug, "testing-bug", "", "TESTING ONLY: run with this deliberate bug of the catalogue (internal/mutant), for testing the testers")
	fs.DurationVar(&o.tick, "tick", 100*time.Millisecond, "Raft tick (the election timeout is 10 ticks)")
	fs.Float64Var(&o.maxClockDrift, "max-clock-drift", 0.1, "bound on how far any member's monotonic clock runs fast or slow (0.1: 10%); the leader lease is shortened to stay safe within it (docs/CONSISTENCY.md)")
	fs.BoolVar(&o.noLeaderLease, "no-leader-lease", false, "serve every linearizable read after a heartbeat round (assumes nothing about clocks)")
	fs.Int64Var(&o.logMemory, "log-memory", 64<<20, "bytes of memory the Raft log may hold (index and cached entries)")
	fs.Int64Var(&o.cacheSize, "cache-size", 16<<20, "bytes of SQLite page cache for each database's write connection")
	fs.Int64Var(&o.readCacheSize, "read-cache-size", 2<<20, "bytes of SQLite page cache for each read connection (one per open query)")
	fs.Int64Var(&o.memoryLimit, "memory-limit", defaultMemoryLimit, "soft limit in bytes on the Go runtime's memory: the garbage collector runs more often as it nears it "+
		"(SQLite's C heap is outside it; 0: none; GOMEMLIMIT, when set, wins)")
	fs.IntVar(&o.mallocArenas, "malloc-arenas", 1, "glibc malloc arenas for the C heap (SQLite): each keeps the memory freed into it; with it, C blocks of 1 MiB or more are mapped on their own "+
		"and returned when freed (0: glibc's defaults; MALLOC_ARENA_MAX, when set, wins)")
	// Environment variables first; flags override them.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := "DQLITE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if name == "DQLITE_DIR" {
			name = "DQLITE_DATA_DIR"
		}
		if v, ok := os.LookupEnv(name); ok {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s=%q: %v", name, v, err)
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.address == "" || o.dir == "" {
		fs.Usage()
		return nil, errors.New("-address and -dir are required")
	}
	if _, _, err := net.SplitHostPort(o.address); err != nil {
		return nil, fmt.Errorf("-address %q: %v", o.address, err)
	}
	if o.id == 0 {
		h := fnv.New64a()
		h.Write([]byte(o.address))
		o.id = h.Sum64()>>1 | 1
	}
	return o, nil
}

// loadTLS returns the TLS configuration and the pool of peer CAs (nil
// without -tls-peer-ca; it is also trusted for the TLS handshake).
func loadTLS(o *options) (*tls.Config, *x509.CertPool, error) {
	if o.tlsCert == "" && o.tlsKey == "" && o.tlsCA == "" {
		if o.tlsPeerCA != "" {
			return nil, nil, errors.New("-tls-peer-ca needs -tls-cert, -tls-key and -tls-ca")
		}
		return nil, nil, nil
	}
	if o.tlsCert == "" || o.tlsKey == "" || o.tlsCA == "" {
		return nil, nil, errors.New("TLS needs all of -tls-cert, -tls-key and -tls-ca")
	}
	cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return nil, nil, err
	}
	ca, err := os.ReadFile(o.tlsCA)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", o.tlsCA)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	if o.tlsPeerCA != "" {
		pem, err := os.ReadFile(o.tlsPeerCA)
		if err != nil {
			return nil, nil, err
		}
		peers := x509.NewCertPool()
		if !peers.AppendCertsFromPEM(pem) || !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("%s: no PEM certificate", o.tlsPeerCA)
		}
		return cfg, peers, nil
	}
	return cfg, nil, nil
}

func run(parent context.Context, args []string, errOut io.Writer) int {
	o, err := parse(args, errOut)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(errOut, "dqlited:", err)
		return 2
	}
	applyMemorySettings(o)
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintln(errOut, "dqlited: -log-level:", err)
		return 2
	}
	logOut := newLogWriter(errOut) // the loop never waits for the log's output
	defer logOut.Close()
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level}))
	tlsCfg, peerCAs, err := loadTLS(o)
	if err != nil {
		log.Error("loading TLS files", "err", err)
		return 2
	}
	fresh, err := isFresh(o.dir)
	if err != nil {
		log.Error("data directory", "dir", o.dir, "err", err)
		return 1
	}
	key, err := clusterKey(o, fresh && o.join == "", peerCAs != nil, log)
	if err != nil {
		log.Error("cluster key", "err", err)
		return 2
	}
	if o.testingBug != "" {
		b, ok := mutant.Lookup(o.testingBug)
		if !ok {
			log.Error("unknown -testing-bug (see internal/mutant's catalogue)", "name", o.testingBug)
			return 2
		}
		release, err := mutant.Activate(b)
		if err != nil {
			log.Error("-testing-bug", "err", err)
			return 2
		}
		defer release()
		log.Warn("running with a deliberate bug, for testing only", "bug", o.testingBug)
	}
	cfg := node.Config{ID: raft.NodeID(o.id), Address: o.address, Dir: o.dir, Logger: log, TLS: tlsCfg,
		ClusterKey: key, PeerCAs: peerCAs, OpenPeerLinks: o.openPeerLinks,
		FailureDomain: o.domain, Tick: o.tick, LogMemoryBytes: o.logMemory, CacheBytes: o.cacheSize, ReadCacheBytes: o.readCacheSize, ListenAddress: o.listen,
		Roles: node.Roles{Voters: o.voters, Standbys: o.standbys}, MaxClockDrift: o.maxClockDrift, NoLeaderLease: o.noLeaderLease}
	if o.statements {
		cfg.Mode = fsm.ModeStatements
	}
	if fresh && o.join == "" {
		log.Info("bootstrapping a new cluster", "id", o.id, "address", o.address)
		cfg.Bootstrap = []raft.Server{{ID: cfg.ID, Address: o.address, Role: raft.Voter}}
	}
	n, err := node.New(cfg)
	if err != nil {
		log.Error("starting the node", "err", err)
		return 1
	}
	log.Info("node started", "id", o.id, "address", o.address, "dir", o.dir, "fresh", fresh)

	ctx, stop := signal.NotifyContext(parent, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	joined := make(chan error, 1)
	if fresh && o.join != "" {
		go func() { joined <- n.Join(ctx, strings.Split(o.join, ",")) }()
	} else {
		joined <- nil
	}
	var msrv *http.Server
	if o.metrics != "" {
		ln, err := net.Listen("tcp", o.metrics)
		if err != nil {
			log.Error("metrics listener", "err", err)
			n.Close()
			return 1
		}
		msrv = &http.Server{Handler: metricsHandler(n), ReadHeaderTimeout: 5 * time.Second}
		go msrv.Serve(ln)
		log.Info("serving metrics", "address", ln.Addr().String())
	}
	code := 0
	select {
	case <-ctx.Done():
	case err := <-joined:
		if err != nil {
			log.Error("joining the cluster", "err", err)
			code = 1
		} else {
			<-ctx.Done()
		}
	}
	if parent.Err() == nil {
		log.Info("stopping: handing over")
	}
	hctx, cancel := context.WithTimeout(context.Background(), o.handover)
	if err := n.Handover(hctx); err != nil {
		log.Warn("hand-over did not complete", "err", err)
	}
	cancel()
	if msrv != nil {
		msrv.Close()
	}
	n.Close()
	log.Info("stopped")
	return code
}

// isFresh reports whether dir holds no log yet (creating it if needed).
func isFresh(dir string) (bool, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "seg-") || strings.HasPrefix(e.Name(), "snap-") || e.Name() == "meta" {
			return false, nil
		}
	}
	return true, nil
}

// inspect prints and verifies a data directory (see dqlite-inspect).
func inspect(out io.Writer, args []string) int {
	fs := flag.NewFlagSet("dqlited inspect", flag.ContinueOnError)
	repair := fs.Bool("repair", false, "truncate the log after the last good entry")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(out, "usage: dqlited inspect [-repair] DIR")
		return 2
	}
	return inspectcmd.Run(out, fs.Arg(0), *repair)
}
