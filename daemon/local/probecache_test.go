package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/jail"
)

// TestSandboxProbeCached: the sandbox verdict is kept in the run dir, so
// a second process (a new cachedSandboxProbe) does not run QEMU again; a
// failed probe is kept with its reason; a changed binary is probed again.
func TestSandboxProbeCached(t *testing.T) {
	run := t.TempDir()
	bin := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	calls := 0
	verdict := error(nil)
	probe := func(context.Context, string) error { calls++; return verdict }
	ctx := context.Background()

	for i := range 3 { // each iteration is a new CLI process
		if err := cachedSandboxProbe(run, probe)(ctx, bin); err != nil {
			t.Fatalf("probe %d: %v", i, err)
		}
	}
	if calls != 1 {
		t.Fatalf("probed %d times, want 1", calls)
	}

	// Another QEMU at the same path (an upgrade): probe again, and keep a
	// failure with its reason.
	verdict = errors.New("no seccomp here")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n# upgraded\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		err := cachedSandboxProbe(run, probe)(ctx, bin)
		if err == nil || err.Error() != "no seccomp here" {
			t.Fatalf("probe after upgrade %d: %v, want the probe's error", i, err)
		}
	}
	if calls != 2 {
		t.Fatalf("probed %d times, want 2", calls)
	}

	// Same size, new contents and mtime: probed again.
	verdict = nil
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n# upgrades\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Minute)
	os.Chtimes(bin, future, future)
	if err := cachedSandboxProbe(run, probe)(ctx, bin); err != nil || calls != 3 {
		t.Fatalf("probe after rewrite: %v, %d calls, want nil and 3", err, calls)
	}

	// A missing binary is not cached: the probe decides.
	missing := filepath.Join(t.TempDir(), "nope")
	verdict = errors.New("not found")
	for range 2 {
		cachedSandboxProbe(run, probe)(ctx, missing)
	}
	if calls != 5 {
		t.Fatalf("probed %d times with a missing binary, want 5", calls)
	}
}

// TestVMJailLauncher: the jail launcher is minions-relay where it is
// found (a small binary), else the minions executable.
func TestVMJailLauncher(t *testing.T) {
	relay := filepath.Join(t.TempDir(), "minions-relay")
	if err := os.WriteFile(relay, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	paths := Paths{State: "/var/lib/minions", Run: "/run/minions"}
	t.Setenv("MINIONS_RELAY_BIN", relay)
	if got := VMJail("/usr/bin/minions", jail.Config{}, paths).Command; len(got) != 2 || got[0] != relay || got[1] != "jail-exec" {
		t.Errorf("launcher %q, want %s jail-exec", got, relay)
	}
	if _, err := RelayBinary(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MINIONS_RELAY_BIN", filepath.Join(t.TempDir(), "absent"))
	if _, err := RelayBinary(); err == nil {
		t.Skip("a minions-relay is installed on this host")
	}
	if got := VMJail("/usr/bin/minions", jail.Config{}, paths).Command; len(got) != 2 || got[0] != "/usr/bin/minions" {
		t.Errorf("launcher without minions-relay %q, want /usr/bin/minions jail-exec", got)
	}
}

// TestVMJailInstallation: each installation's VMs get cgroups in a group
// of their own, named like its RAM file dir, so that installations of one
// machine never share one and each sweeps only its own.
func TestVMJailInstallation(t *testing.T) {
	a := VMJail("/usr/bin/minions", jail.Config{}, Paths{State: "/var/lib/minions", Run: "/run/minions"})
	b := VMJail("/usr/bin/minions", jail.Config{}, Paths{State: "/tmp/other/s", Run: "/tmp/other/r"})
	if a.Installation == "" || a.Installation == b.Installation {
		t.Fatalf("installations %q and %q", a.Installation, b.Installation)
	}
	if filepath.Base(MemoryDir("/var/lib/minions")) != a.Installation {
		t.Errorf("installation %q, ram dir %s", a.Installation, MemoryDir("/var/lib/minions"))
	}
	if g, err := a.Cgroup("0123456789ab"); err != nil || g != "minions/"+a.Installation+"/0123456789ab" {
		t.Errorf("cgroup %q, %v", g, err)
	}
	if c := VMJail("/usr/bin/minions", jail.Config{Installation: "x"}, Paths{State: "/s", Run: "/r"}); c.Installation != "x" {
		t.Errorf("a set installation was replaced: %q", c.Installation)
	}
}
