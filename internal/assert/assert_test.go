package assert

import (
	"errors"
	"testing"
)

// TestThatPanicsWithValues checks a false condition panics with a Violation
// carrying the formatted values, and a true one does not.
func TestThatPanicsWithValues(t *testing.T) {
	That(true, "never")
	defer func() {
		r := recover()
		v, ok := r.(Violation)
		if !ok || v.Msg != "x=3 y=4" {
			t.Fatalf("recovered %#v", r)
		}
	}()
	That(false, "x=%d y=%d", 3, 4)
	t.Fatal("did not panic")
}

func TestNoError(t *testing.T) {
	NoError(nil, "fine")
	defer func() {
		v, ok := recover().(Violation)
		if !ok || v.Msg != "ctx: boom" {
			t.Fatalf("got %#v", v)
		}
	}()
	NoError(errors.New("boom"), "ctx")
}

func TestFail(t *testing.T) {
	defer func() {
		if _, ok := recover().(Violation); !ok {
			t.Fatal("Fail did not panic with a Violation")
		}
	}()
	Fail("unreachable %d", 1)
}
