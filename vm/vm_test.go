package vm

import (
	"errors"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
)

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"web", true}, {"a", true}, {"web-1", true}, {"w2", true},
		{"", false}, {"Web", false}, {"1web", false}, {"web-", false}, {"-web", false},
		{"we_b", false}, {"web.example", false}, {strings.Repeat("a", 40), true}, {strings.Repeat("a", 41), false},
		{"../etc", false}, {"web\n", false},
		// Names that read as IDs (issue 11): 12 hex digits starting with a letter.
		{"abcdef012345", false}, {"deadbeefcafe", false}, {"abcdef01234", true}, {"abcdef0123456", true}, {"abcdef01234g", true},
	} {
		err := ValidName("vm", tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("ValidName(%q) error class = %v", tc.name, errs.ClassOf(err))
		}
	}
}

func TestAllowed(t *testing.T) {
	for _, tc := range []struct {
		state State
		op    string
		ok    bool
		msg   string
	}{
		{Stopped, OpStart, true, ""},
		{Running, OpStart, false, "already running"},
		{Stopped, OpExec, false, "minions start web"},
		{Running, OpExec, true, ""},
		{Creating, OpStop, false, "still being created"},
		{Creating, OpDestroy, true, ""},
		{Paused, OpStop, true, ""},
		{Paused, OpExec, false, "it must be running"},
	} {
		err := Allowed("web", tc.state, tc.op)
		if (err == nil) != tc.ok {
			t.Errorf("Allowed(%s, %s) = %v, want ok=%v", tc.state, tc.op, err, tc.ok)
			continue
		}
		if err != nil && (!errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), tc.msg)) {
			t.Errorf("Allowed(%s, %s) = %v, want %q", tc.state, tc.op, err, tc.msg)
		}
	}
}

func TestValidResources(t *testing.T) {
	if err := ValidResources(2, 512, 10); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][3]int{{0, 512, 1}, {65, 512, 1}, {1, 64, 1}, {1, 512, 0}} {
		if err := ValidResources(bad[0], bad[1], bad[2]); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("ValidResources(%v) = %v", bad, err)
		}
	}
}

func TestCmdline(t *testing.T) {
	got := Cmdline(BootParams{ID: "0123456789ab", Name: "web", HostKey: "AAAA", IP: "10.210.0.2/16", Gateway: "10.210.0.1"})
	want := "console=ttyS0 root=/dev/vda rw rootfstype=ext4 panic=-1 reboot=t quiet loglevel=4 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd minions.id=0123456789ab minions.name=web minions.hostkey=AAAA minions.ip=10.210.0.2/16 minions.gw=10.210.0.1"
	if got != want {
		t.Fatalf("Cmdline =\n%s\nwant\n%s", got, want)
	}
}
