package sim

import (
	"fmt"
	"os"
	"sort"
	"testing"
)

func TestDebugSeed(t *testing.T) {
	if os.Getenv("SEED") == "" {
		t.Skip()
	}
	var seed uint64
	fmt.Sscan(os.Getenv("SEED"), &seed)
	o := DefaultOptions(seed)
	f, _ := os.Create("/tmp/trace.txt")
	o.Trace = f
	s := New(o)
	s.start()
	s.runUntil(o.FaultPhase)
	s.endFaults()
	s.heal()
	s.check()
	h := append([]op(nil), s.history...)
	sort.Slice(h, func(i, j int) bool { return h[i].call < h[j].call })
	g, _ := os.Create("/tmp/hist.txt")
	for _, o := range h {
		fmt.Fprintf(g, "%s c%d call=%d ret=%d put=%v val=%q out=%q unk=%v\n", o.input.key, o.client, o.call/1e6, o.return_/1e6, o.input.put, o.input.value, o.output.value, o.output.unknown)
	}
	t.Log(s.violations)
}
func TestDebugKeys(t *testing.T) {
	if os.Getenv("SEED") == "" {
		t.Skip()
	}
	var seed uint64
	fmt.Sscan(os.Getenv("SEED"), &seed)
	o := DefaultOptions(seed)
	s := New(o)
	s.start()
	s.runUntil(o.FaultPhase)
	s.endFaults()
	s.heal()
	for k := 0; k < 3; k++ {
		key := fmt.Sprintf("k%d", k)
		var hh []op
		for _, x := range s.history {
			if x.input.key == key {
				hh = append(hh, x)
			}
		}
		s2 := &Sim{history: hh, now: s.now, opts: o}
		s2.check()
		t.Logf("%s: %v", key, s2.linearizable)
	}
}
