package jailexec

import "testing"

// TestCheckEnv: only NAME=value entries pass, and PATH (CleanEnv's) may
// not be replaced.
func TestCheckEnv(t *testing.T) {
	if err := CheckEnv([]string{"GOMAXPROCS=1", "A_1=", "X=a=b", "_x=y"}); err != nil {
		t.Fatal(err)
	}
	for _, e := range []string{"", "=1", "NOVALUE", "PATH=/tmp", "1A=x", "A-B=x", "A B=x", "É=x"} {
		if err := CheckEnv([]string{"OK=1", e}); err == nil {
			t.Errorf("%q: accepted", e)
		}
	}
}
