package hostcmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/vm/jail"
)

// TestMain lets the test binary stand in for the minions binary as the jail
// launcher (doctor runs "<executable> jail-exec PLAN").
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "jail-exec" {
		os.Exit(jail.Main(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// TestDoctorJailLines checks doctor's jail lines: the per-VM uid, a mount
// namespace proved by running the real launcher, the cgroup version and
// controllers; and one line saying so when the jail is off.
func TestDoctorJailLines(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	paths := local.Paths{State: filepath.Join(dir, "s"), Run: filepath.Join(dir, "run")}
	for _, d := range []string{paths.State, paths.Run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]check{}
	for _, c := range jailChecks(jail.Config{Mode: "on"}, paths) {
		got[c.What] = c
		t.Logf("%s (ok %t): %s", c.What, c.OK, c.Detail)
	}
	for what, want := range map[string]string{
		"per-vm uid":      "2000000000",
		"mount namespace": paths.State,
		"cgroups":         "memory max = guest + 256 MiB",
	} {
		c, ok := got[what]
		if !ok || !c.OK || !strings.Contains(c.Detail, want) {
			t.Errorf("%s: %+v (present %v), want ok and %q", what, c, ok, want)
		}
	}
	if c := got["cgroups"]; !strings.HasPrefix(c.Detail, "v1") && !strings.HasPrefix(c.Detail, "v2") {
		t.Errorf("cgroups line names no version: %q", c.Detail)
	}
	// How the in-process jail joins a VM's cgroup, proved by a probe
	// started in a cgroup of its own, which is gone after.
	mode, err := jail.CgroupJoinMode()
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := got["cgroup join"]; !ok || !c.OK || !strings.HasPrefix(c.Detail, mode+": ") || !strings.Contains(c.Detail, "started in "+jail.DefaultCgroupParent+"/") {
		t.Errorf("cgroup join: %+v (present %v), want ok, %q first and the probe's cgroup", c, ok, mode)
	}
	v1, _ := filepath.Glob("/sys/fs/cgroup/*/" + jail.DefaultCgroupParent + "/*/doctor-*")
	v2, _ := filepath.Glob("/sys/fs/cgroup/" + jail.DefaultCgroupParent + "/*/doctor-*")
	if left := append(v1, v2...); len(left) > 0 {
		t.Errorf("doctor's probe cgroup left behind: %v", left)
	}
	off := jailChecks(jail.Config{Mode: "off"}, paths)
	if len(off) != 1 || off[0].OK || !strings.Contains(off[0].Detail, "unconfined") {
		t.Errorf("jail off: %+v", off)
	}
}
