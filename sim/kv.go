package sim

import (
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strings"

	"github.com/anishathalye/porcupine"

	"github.com/dqlite-go/dqlite/raft"
)

// kvStore is the small replicated key-value state machine the simulator
// runs on top of the loop (the SQLite state machine plugs in through the same
// loop.StateMachine interface later). A command is "key=value".
type kvStore struct {
	m map[string]string
}

func newKV() *kvStore { return &kvStore{m: map[string]string{}} }

func (k *kvStore) Apply(e raft.Entry) (any, error) {
	key, val, ok := strings.Cut(string(e.Data), "=")
	if !ok {
		return nil, fmt.Errorf("sim: bad kv command %q", e.Data)
	}
	k.m[key] = val
	return nil, nil
}

func (k *kvStore) keys() []string {
	keys := make([]string, 0, len(k.m))
	for key := range k.m {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	return keys
}

// Snapshot encodes the map as sorted "key=value\n" lines.
func (k *kvStore) Snapshot() ([]byte, error) {
	var b strings.Builder
	for _, key := range k.keys() {
		fmt.Fprintf(&b, "%s=%s\n", key, k.m[key])
	}
	return []byte(b.String()), nil
}

func (k *kvStore) Restore(data []byte) error {
	m := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return errors.New("sim: corrupt kv snapshot")
		}
		m[key] = val
	}
	k.m = m
	return nil
}

// hash is a digest of the whole state, for convergence checks.
func (k *kvStore) hash() uint64 {
	h := fnv.New64a()
	for _, key := range k.keys() {
		h.Write([]byte(key))
		h.Write([]byte{0})
		h.Write([]byte(k.m[key]))
		h.Write([]byte{0})
	}
	return h.Sum64()
}

// kvInput and kvOutput are the porcupine operation values.
type kvInput struct {
	put   bool
	key   string
	value string
}

type kvOutput struct {
	value   string
	unknown bool // a write whose outcome the client never learned
}

// kvModel is a register per key, partitioned by key.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in, out := input.(kvInput), output.(kvOutput)
		if in.put {
			return true, in.value
		}
		return out.value == state.(string), state
	},
	Hash: func(state any) uint64 {
		h := fnv.New64a()
		h.Write([]byte(state.(string)))
		return h.Sum64()
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		if in.put {
			if out.unknown {
				return fmt.Sprintf("put(%s, %s) -> ?", in.key, in.value)
			}
			return fmt.Sprintf("put(%s, %s)", in.key, in.value)
		}
		return fmt.Sprintf("get(%s) -> %q", in.key, out.value)
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state) },
}
