package jepsen

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/dqlite-go/dqlite/driver"
)

// Register workload: one register per key (table reg), linearizable reads
// and blind writes of unique values, checked with porcupine per key.

type regInput struct {
	write bool
	key   int
	value int64
}

type regOutput struct {
	value   int64 // read: the value (0: absent)
	unknown bool  // write: outcome unknown
}

var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[int][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(regInput).key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]int, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Ints(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return int64(0) },
	Step: func(state, input, output any) (bool, any) {
		in, out := input.(regInput), output.(regOutput)
		if in.write {
			return true, in.value
		}
		return out.value == state.(int64), state
	},
	Equal: func(a, b any) bool { return a == b },
	DescribeOperation: func(input, output any) string {
		in, out := input.(regInput), output.(regOutput)
		if in.write {
			if out.unknown {
				return fmt.Sprintf("write(k%d, %d) outcome unknown", in.key, in.value)
			}
			return fmt.Sprintf("write(k%d, %d)", in.key, in.value)
		}
		return fmt.Sprintf("read(k%d) = %d", in.key, out.value)
	},
}

// dropUnobservedUnknownWrites removes the writes of unknown outcome whose
// value no read returned. Values are unique, so such a write, if it took
// effect, was overwritten before any read: the history is linearizable with
// it exactly when it is without it. Each one kept would stay concurrent with
// everything after it on its key, which is what makes porcupine's search
// explode on long runs.
func dropUnobservedUnknownWrites(ops []porcupine.Operation) []porcupine.Operation {
	read := map[int64]bool{}
	for _, op := range ops {
		if in := op.Input.(regInput); !in.write {
			read[op.Output.(regOutput).value] = true
		}
	}
	kept := make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		in, out := op.Input.(regInput), op.Output.(regOutput)
		if in.write && out.unknown && !read[in.value] {
			continue
		}
		kept = append(kept, op)
	}
	return kept
}

// history records operations with their times relative to the run start.
type history struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(op porcupine.Operation) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// counts are a workload's operation outcomes.
type counts struct {
	mu                  sync.Mutex
	ok, failed, unknown int
	firstFailure        string
	firstUnknown        string
	kinds               map[string]int // masked error text: count
}

var digits = regexp.MustCompile(`[0-9]+`)

// top returns the n most frequent errors with their counts.
func (c *counts) top(n int) []string {
	type kv struct {
		k string
		n int
	}
	var l []kv
	for k, v := range c.kinds {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].n > l[j].n || (l[i].n == l[j].n && l[i].k < l[j].k) })
	var out []string
	for i := 0; i < len(l) && i < n; i++ {
		out = append(out, fmt.Sprintf("%7d x %s", l[i].n, l[i].k))
	}
	return out
}

func (c *counts) record(ok, unknown bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if c.kinds == nil {
			c.kinds = map[string]int{}
		}
		k := digits.ReplaceAllString(err.Error(), "N")
		if len(k) > 160 {
			k = k[:160]
		}
		c.kinds[k]++
	}
	switch {
	case ok:
		c.ok++
	case unknown:
		c.unknown++
		if c.firstUnknown == "" && err != nil {
			c.firstUnknown = err.Error()
		}
	default:
		c.failed++
		if c.firstFailure == "" && err != nil {
			c.firstFailure = err.Error()
		}
	}
}

// keyLifetime is how long a register is used: every keyLifetime the
// workload moves on to keys fresh registers, as Jepsen's independent keys
// do. Each key's history stays short, so checking it stays cheap however
// long the run (a write whose outcome is unknown stays concurrent with
// everything after it on its key, which made porcupine's search on
// 30-minute keys exhaust the machine's memory).
const keyLifetime = 20 * time.Second

func runRegister(ctx context.Context, db *sql.DB, client int, seed uint64, keys int, h *history, c *counts) {
	rng := rand.New(rand.NewPCG(seed, uint64(client)))
	for i := 0; ctx.Err() == nil; i++ {
		key := int(h.now()/int64(keyLifetime))*keys + rng.IntN(keys)
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		call := h.now()
		if rng.IntN(2) == 0 {
			v := int64(client)*1_000_000 + int64(i) + 1
			_, err := db.ExecContext(octx, "INSERT OR REPLACE INTO reg (k, v) VALUES (?, ?)", key, v)
			ret := h.now()
			if err != nil {
				// Any failed write may have happened: it may take effect at
				// any time after its call.
				ret = math.MaxInt64
			}
			if ctx.Err() != nil && err != nil {
				cancel()
				// Cut off by the end of the phase: still a write that may
				// have happened.
				h.add(porcupine.Operation{ClientId: client, Input: regInput{true, key, v}, Call: call,
					Output: regOutput{unknown: true}, Return: ret})
				return
			}
			h.add(porcupine.Operation{ClientId: client, Input: regInput{true, key, v}, Call: call,
				Output: regOutput{unknown: err != nil}, Return: ret})
			c.record(err == nil, err != nil, err)
		} else {
			var v sql.NullInt64
			err := db.QueryRowContext(octx, "SELECT v FROM reg WHERE k = ?", key).Scan(&v)
			if errors.Is(err, sql.ErrNoRows) {
				err = nil
			}
			ret := h.now()
			if err == nil {
				h.add(porcupine.Operation{ClientId: client, Input: regInput{false, key, 0}, Call: call,
					Output: regOutput{value: v.Int64}, Return: ret})
			}
			if ctx.Err() == nil {
				c.record(err == nil, false, err)
			}
		}
		cancel()
	}
}

// Bank workload: accounts whose total never changes; transfers are single
// atomic statements or transactions spanning requests that read both
// balances and write back values computed by the client (a lost update or
// a non-serializable interleaving changes the total); every read checks the
// total and that no balance is negative.

const (
	bankAccounts = 5
	bankTotal    = 500
)

func setupBank(ctx context.Context, db *sql.DB) error {
	_, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS acc (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL); "+
		"INSERT OR IGNORE INTO acc SELECT value, ? FROM json_each('[0,1,2,3,4]')", bankTotal/bankAccounts)
	return err
}

// runBank records single-statement transfers and reads in c, transfers in
// transactions spanning requests in tc.
func runBank(ctx context.Context, db *sql.DB, client int, seed uint64, c, tc *counts, violations *violations) {
	rng := rand.New(rand.NewPCG(seed, uint64(client)+1000))
	for ctx.Err() == nil {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		op := rng.IntN(4)
		if op == 0 {
			from, to := rng.IntN(bankAccounts), rng.IntN(bankAccounts)
			for to == from {
				to = rng.IntN(bankAccounts)
			}
			ok, unknown, err := bankTxTransfer(octx, db, from, to, 1+rng.IntN(10))
			if ctx.Err() == nil {
				tc.record(ok, unknown, err)
			}
		} else if op == 1 {
			from, to := rng.IntN(bankAccounts), rng.IntN(bankAccounts)
			for to == from {
				to = rng.IntN(bankAccounts)
			}
			amount := 1 + rng.IntN(10)
			_, err := db.ExecContext(octx, "UPDATE acc SET bal = bal + CASE id WHEN ?1 THEN -?3 ELSE ?3 END "+
				"WHERE id IN (?1, ?2) AND (SELECT bal FROM acc WHERE id = ?1) >= ?3", from, to, amount)
			if ctx.Err() == nil {
				c.record(err == nil, err != nil, err)
			}
		} else {
			var total, least int64
			err := db.QueryRowContext(octx, "SELECT sum(bal), min(bal) FROM acc").Scan(&total, &least)
			if err == nil && (total != bankTotal || least < 0) {
				violations.add("bank: a read saw total %d (want %d) and lowest balance %d", total, bankTotal, least)
			}
			if ctx.Err() == nil {
				c.record(err == nil, false, err)
			}
		}
		cancel()
	}
}

// bankTxTransfer moves amount in a transaction spanning requests: read
// both balances, write the new values as constants. unknown: the COMMIT's
// answer was lost.
func bankTxTransfer(ctx context.Context, db *sql.DB, from, to, amount int) (ok, unknown bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, false, err
	}
	defer tx.Rollback() // after Commit: sql.ErrTxDone, ignored
	var fb, tb int64
	if err := tx.QueryRowContext(ctx, "SELECT bal FROM acc WHERE id = ?", from).Scan(&fb); err != nil {
		return false, false, err
	}
	if err := tx.QueryRowContext(ctx, "SELECT bal FROM acc WHERE id = ?", to).Scan(&tb); err != nil {
		return false, false, err
	}
	if fb < int64(amount) {
		return true, false, nil // nothing to move: a successful no-op
	}
	if _, err := tx.ExecContext(ctx, "UPDATE acc SET bal = ? WHERE id = ?", fb-int64(amount), from); err != nil {
		return false, false, err
	}
	if _, err := tx.ExecContext(ctx, "UPDATE acc SET bal = ? WHERE id = ?", tb+int64(amount), to); err != nil {
		return false, false, err
	}
	if err := tx.Commit(); err != nil {
		return false, errors.Is(err, driver.ErrUnknownOutcome), err
	}
	return true, false, nil
}

// Set workload: unique inserts into a table without a key; at the end
// every acknowledged id must be present and none twice.

type setState struct {
	mu      sync.Mutex
	acked   map[int64]bool
	unknown map[int64]bool
}

func runSet(ctx context.Context, db *sql.DB, client int, s *setState, c *counts) {
	for i := int64(0); ctx.Err() == nil; i++ {
		id := int64(client)*1_000_000 + i
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := db.ExecContext(octx, "INSERT INTO elems (id) VALUES (?)", id)
		cancel()
		s.mu.Lock()
		if err == nil {
			s.acked[id] = true
		} else {
			s.unknown[id] = true
		}
		s.mu.Unlock()
		if ctx.Err() == nil || err == nil {
			c.record(err == nil, err != nil, err)
		}
	}
}

func checkSet(ctx context.Context, db *sql.DB, s *setState, v *violations) (present int, err error) {
	rows, err := db.QueryContext(ctx, "SELECT id, count(*) FROM elems GROUP BY id")
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	seen := map[int64]bool{}
	for rows.Next() {
		var id, n int64
		if err := rows.Scan(&id, &n); err != nil {
			return 0, err
		}
		if n != 1 {
			v.add("set: id %d present %d times", id, n)
		}
		if !s.acked[id] && !s.unknown[id] {
			v.add("set: id %d present but never written", id)
		}
		seen[id] = true
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	missing := 0
	for id := range s.acked {
		if !seen[id] {
			missing++
			if missing <= 5 {
				v.add("set: acknowledged id %d is missing", id)
			}
		}
	}
	if missing > 5 {
		v.add("set: %d acknowledged ids missing in all", missing)
	}
	return len(seen), nil
}

// violations collects what the checkers found.
type violations struct {
	mu   sync.Mutex
	list []string
}

func (v *violations) add(format string, args ...any) {
	v.mu.Lock()
	if len(v.list) < 100 {
		v.list = append(v.list, fmt.Sprintf(format, args...))
	}
	v.mu.Unlock()
}
