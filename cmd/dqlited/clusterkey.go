package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/dqlite-go/dqlite/node"
	"github.com/dqlite-go/dqlite/wire"
)

// clusterKeyName is the key's file in the data directory, used when no
// other source is given.
const clusterKeyName = "cluster-key"

// clusterKeyEnv holds the key itself, in hex (no flag does, so that it
// never shows in the process list).
const clusterKeyEnv = "DQLITE_CLUSTER_KEY"

// clusterKey finds the cluster key peer links prove: DQLITE_CLUSTER_KEY,
// else -cluster-key-file, else DIR/cluster-key. A bootstrapping node creates
// the file when it is missing: the one named by -cluster-key-file, or
// DIR/cluster-key when nothing else would authenticate peers on a
// non-loopback address. nil: no key (peer links open, or certificates).
func clusterKey(o *options, bootstrap, peerCerts bool, log *slog.Logger) ([]byte, error) {
	if v, ok := os.LookupEnv(clusterKeyEnv); ok {
		return decodeKey(clusterKeyEnv, v)
	}
	path := o.clusterKeyFile
	if path == "" {
		path = filepath.Join(o.dir, clusterKeyName)
	}
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		return decodeKey(path, string(b))
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	case o.clusterKeyFile != "" && !bootstrap:
		return nil, fmt.Errorf("-cluster-key-file %s: %w (only a bootstrapping node creates it; copy it from a member)", path, err)
	case o.clusterKeyFile == "" && (!bootstrap || peerCerts || o.openPeerLinks || isLocal(o)):
		return nil, nil
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := writeKey(path, key); err != nil {
		return nil, err
	}
	log.Info("created the cluster key: give it to joining nodes (-cluster-key-file, or "+clusterKeyEnv+")", "file", path)
	return key, nil
}

func decodeKey(source, text string) ([]byte, error) {
	key, err := hex.DecodeString(strings.TrimSpace(text))
	if err != nil {
		return nil, fmt.Errorf("%s: the cluster key is not hex: %v", source, err)
	}
	if len(key) < wire.ClusterKeyBytesMin {
		return nil, fmt.Errorf("%s: the cluster key has %d bytes, fewer than %d", source, len(key), wire.ClusterKeyBytesMin)
	}
	return key, nil
}

// writeKey creates path (readable by its owner only) durably.
func writeKey(path string, key []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(hex.EncodeToString(key) + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// isLocal reports whether only this machine can reach the node's port.
func isLocal(o *options) bool {
	if o.listen != "" {
		return node.IsLocalAddress(o.listen)
	}
	return node.IsLocalAddress(o.address)
}
