package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"

	"github.com/dqlite-go/dqlite/node"
)

// metricsHandler serves /metrics (Prometheus text format 0.0.4),
// /debug/pprof/ (Go's profiler), /healthz
// (the node runs and its storage has not failed) and /readyz (it knows a
// leader and has applied everything it knows committed).
func metricsHandler(n *node.Node) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		writeMetrics(w, n.Metrics())
	})
	// Go's profiler, for performance work (the metrics address should not
	// be exposed beyond the operators' network).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if m := n.Metrics(); m.StorageFailed || m.ApplyFailed {
			http.Error(w, "stopped: storage failed or a committed entry failed to apply (see the log)", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !n.Ready() {
			http.Error(w, "not ready: no leader known, or applying committed entries", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// labelValue escapes a label value as the text format wants.
var labelValue = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func writeMetrics(w io.Writer, m node.Metrics) {
	metric := func(name, typ, help string, v any) {
		fmt.Fprintf(w, "# HELP dqlite_%s %s\n# TYPE dqlite_%s %s\ndqlite_%s %v\n", name, help, name, typ, name, v)
	}
	b := func(x bool) int {
		if x {
			return 1
		}
		return 0
	}
	metric("node_id", "gauge", "Id of this node.", uint64(m.ID))
	metric("term", "gauge", "Current Raft term.", m.Term)
	metric("leader_id", "gauge", "Id of the leader this node knows (0: none).", uint64(m.Leader))
	metric("is_leader", "gauge", "1 when this node leads.", b(m.State == "leader"))
	fmt.Fprintf(w, "# HELP dqlite_role 1 for this node's role in the membership.\n# TYPE dqlite_role gauge\n")
	for _, role := range []string{"voter", "standby", "spare"} {
		fmt.Fprintf(w, "dqlite_role{role=%q} %d\n", role, b(m.Role == role))
	}
	metric("commit_index", "gauge", "Highest log index known committed.", m.Commit)
	metric("applied_index", "gauge", "Highest log index applied to the database.", m.Applied)
	metric("last_index", "gauge", "Last log index.", m.LastIndex)
	metric("log_appends_total", "counter", "Log appends (one write and one fsync each).", m.Appends)
	metric("log_appended_entries_total", "counter", "Entries appended (mean batch size = this / appends).", m.AppendedEntries)
	metric("log_appended_bytes_total", "counter", "Entry payload bytes appended to the log.", m.AppendedBytes)
	metric("log_fsync_seconds_total", "counter", "Time spent in log appends and their fsyncs.", m.FsyncSeconds)
	metric("log_fsync_max_seconds", "gauge", "Longest log append and fsync.", m.FsyncMaxSeconds)
	metric("log_cache_bytes", "gauge", "Log entry data cached in memory.", m.LogCacheBytes)
	metric("log_memory_bytes", "gauge", "Memory the log holds (index and cached data), within -log-memory.", m.LogMemoryBytes)
	metric("peer_sent_bytes_total", "counter", "Bytes sent to peers (replication and elections).", m.PeerBytesSent)
	metric("peer_links_refused_total", "counter", "Incoming peer links refused: no valid cluster key proof or peer certificate.", m.PeerLinksRefused)
	metric("peer_messages_invalid_total", "counter", "Invalid input on authenticated peer links: bad frames, another sender's messages, messages raft refuses (each dropped its link).", m.PeerMessagesInvalid)
	metric("snapshots_total", "counter", "Snapshots taken.", m.Snapshots)
	metric("snapshot_bytes_total", "counter", "Total size of the snapshots taken.", m.SnapshotBytes)
	metric("snapshots_installed_total", "counter", "Snapshots installed from the leader.", m.SnapshotsInstalled)
	metric("event_queue_depth", "gauge", "Events waiting for the node's loop.", m.EventQueue)
	metric("peer_queue_depth", "gauge", "Messages waiting to be sent to peers.", m.PeerQueue)
	metric("queued_writes", "gauge", "Writes waiting for the writer slot.", m.QueuedWrites)
	fmt.Fprintf(w, "# HELP dqlite_reads_total Reads by how they were served: lease (leader, no round), round (leader, heartbeat round), forwarded (asked the leader for a read index), stale (bounded staleness, local state), answered (read index requests of other nodes).\n# TYPE dqlite_reads_total counter\n")
	for _, p := range []struct {
		path string
		n    uint64
	}{{"lease", m.Reads.Lease}, {"round", m.Reads.Rounds}, {"forwarded", m.Reads.Forwarded}, {"stale", m.Reads.Stale}, {"answered", m.Reads.Answered}} {
		fmt.Fprintf(w, "dqlite_reads_total{path=%q} %d\n", p.path, p.n)
	}
	metric("databases", "gauge", "Databases this node holds (written by an entry).", len(m.DatabaseWALBytes))
	fmt.Fprintf(w, "# HELP dqlite_database_wal_bytes Size of a database's WAL (checkpoints keep it short).\n# TYPE dqlite_database_wal_bytes gauge\n")
	names := make([]string, 0, len(m.DatabaseWALBytes))
	for name := range m.DatabaseWALBytes {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "dqlite_database_wal_bytes{database=\"%s\"} %d\n", labelValue.Replace(name), m.DatabaseWALBytes[name])
	}
	metric("loop_event_max_seconds", "gauge", "Longest loop event (tick, message or request) since start.", m.LoopEventMaxSeconds)
	metric("loop_events_slow_total", "counter", "Loop events that took over 100 ms.", m.LoopEventsSlow)
	metric("wal_memory_bytes", "gauge", "Memory the databases' WALs hold (frames since the last checkpoint).", m.WALMemoryBytes)
	metric("page_cache_bytes", "gauge", "Memory of SQLite's page caches (all connections), within -cache-size per database.", m.PageCacheBytes)
	metric("checkpoint_failures_total", "counter", "Checkpoints that failed (full disk, I/O error); the WAL keeps the pages and they are retried.", m.CheckpointFailures)
	metric("durable_index", "gauge", "Index every database file reflects; the log is compacted up to it.", m.DurableIndex)
	metric("snapshot_views_total", "counter", "Snapshot views opened to stream the databases to another node.", m.SnapshotViews)
	metric("snapshot_received_bytes_total", "counter", "Bytes of streamed snapshots received from the leader.", m.SnapshotReceivedBytes)
	metric("snapshot_views_overrun_total", "counter", "Snapshot views closed because the WAL held back under them passed its bound.", m.SnapshotViewsOverrun)
	metric("storage_failed", "gauge", "1 when the log storage failed and the node stopped writing.", b(m.StorageFailed))
	metric("apply_failed", "gauge", "1 when a committed entry failed to apply and the node stopped applying and writing.", b(m.ApplyFailed))
}
