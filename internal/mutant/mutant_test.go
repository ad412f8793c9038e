package mutant

import "testing"

func TestCatalogueNamesRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for _, in := range Catalogue {
		if seen[in.Name] {
			t.Errorf("name %q used twice", in.Name)
		}
		seen[in.Name] = true
		if b, ok := Lookup(in.Name); !ok || b != in.Bug || b.String() != in.Name {
			t.Errorf("%q: Lookup gives %v, %v", in.Name, b, ok)
		}
		if in.Pkg == "" || in.Rule == "" {
			t.Errorf("%q lacks its package or rule", in.Name)
		}
	}
	if _, ok := Lookup("no-such-bug"); ok {
		t.Error("an unknown name was found")
	}
}

func TestActivateOneAtATime(t *testing.T) {
	if Active() != None || On(RaftFigure8) {
		t.Fatal("a bug is active before any test activated one")
	}
	r1, err := Activate(RaftFigure8)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Activate(RaftFigure8) // parallel seeds share a bug
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Activate(WALNoFsync); err == nil {
		t.Fatal("a second, different bug was activated")
	}
	if !On(RaftFigure8) || On(WALNoFsync) {
		t.Fatal("On does not report the active bug")
	}
	r1()
	r1() // a release runs once
	if !On(RaftFigure8) {
		t.Fatal("released while another user holds it")
	}
	r2()
	if Active() != None {
		t.Fatalf("%s still active after every release", Active())
	}
	if _, err := Activate(numBugs); err == nil {
		t.Fatal("an unknown bug was activated")
	}
}
