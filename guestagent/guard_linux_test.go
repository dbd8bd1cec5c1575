package guestagent

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMachineChangesOnlyInGuest(t *testing.T) {
	dir := t.TempDir()
	old := cmdlinePath
	t.Cleanup(func() { cmdlinePath = old })
	cmdlinePath = filepath.Join(dir, "cmdline")
	for _, tc := range []struct {
		cmdline string
		guest   bool
	}{
		{"console=ttyS0 root=/dev/vda", false},
		{"console=ttyS0 minions.id= root=/dev/vda", false},
		{"console=ttyS0 xminions.id=abc", false},
		{"console=ttyS0 minions.id=0123abcd minions.name=a", true},
	} {
		os.WriteFile(cmdlinePath, []byte(tc.cmdline+"\n"), 0o644)
		if got := inGuest(); got != tc.guest {
			t.Errorf("inGuest(%q) = %v, want %v", tc.cmdline, got, tc.guest)
		}
	}
	// This host's kernel line has no minions.id: every default that
	// changes the machine refuses, and nothing is changed.
	os.WriteFile(cmdlinePath, []byte("console=ttyS0\n"), 0o644)
	host, _ := os.Hostname()
	for name, err := range map[string]error{
		"hostname": sethostname("minions-guard-test"),
		"clock":    settime(time.Unix(0, 0)),
		"rng":      reseedKernel(make([]byte, 32)),
		"net":      reconfigureNet(net.HardwareAddr{2, 0, 0, 0, 0, 1}, netip.MustParsePrefix("10.250.0.2/24"), netip.MustParseAddr("10.250.0.1")),
	} {
		if err == nil || !strings.Contains(err.Error(), "not a Minions guest") {
			t.Errorf("%s: err = %v, want a refusal", name, err)
		}
	}
	if got := reloadServices("/"); len(got) != 0 {
		t.Errorf("reloadServices outside a guest = %v", got)
	}
	if now, _ := os.Hostname(); now != host {
		t.Fatalf("hostname changed: %q -> %q", host, now)
	}
	if time.Since(time.Now()) > time.Hour || time.Now().Year() < 2000 {
		t.Fatal("clock changed")
	}
}
