package testenv

import (
	"fmt"
	"testing"
)

// fakeTB records which of Fatalf and Skipf was called.
type fakeTB struct{ fatal, skip string }

func (f *fakeTB) Helper()                        {}
func (f *fakeTB) Fatalf(format string, a ...any) { f.fatal = fmt.Sprintf(format, a...) }
func (f *fakeTB) Skipf(format string, a ...any)  { f.skip = fmt.Sprintf(format, a...) }

func TestSkipUnlessCI(t *testing.T) {
	for _, tc := range []struct {
		ci        string
		wantFatal bool
	}{{"", false}, {"false", false}, {"true", true}, {"1", true}} {
		t.Setenv("CI", tc.ci)
		var f fakeTB
		SkipUnlessCI(&f, "no qemu")
		if gotFatal := f.fatal != ""; gotFatal != tc.wantFatal || (!gotFatal && f.skip != "no qemu") {
			t.Errorf("CI=%q: fatal=%q skip=%q", tc.ci, f.fatal, f.skip)
		}
	}
	t.Setenv("CI", "true")
	var f fakeTB
	NeedOrFail(&f, true, "x")
	if f.fatal != "" || f.skip != "" {
		t.Errorf("NeedOrFail(true) did something: %+v", f)
	}
	NeedOrFail(&f, false, "x")
	if f.fatal == "" {
		t.Error("NeedOrFail(false) in CI did not fail")
	}
}
