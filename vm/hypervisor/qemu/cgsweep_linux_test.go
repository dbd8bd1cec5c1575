package qemu

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/jail"
)

// TestSweepCgroupsOfInstallation: with real cgroups under a parent of the
// test's own, the driver's sweep removes its installation's cgroup that
// no VM keeps and leaves a kept one and another installation's; removing
// the last VM's cgroup (Kill, Shutdown) prunes the installation's group,
// while the other installation's group stays. A driver without an
// installation group sweeps nothing.
func TestSweepCgroupsOfInstallation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := jail.Cgroups(); err != nil {
		t.Skip(err)
	}
	top := fmt.Sprintf("minions-test-qsweep%d", os.Getpid())
	cfg := func(inst string) jail.Config {
		return jail.Config{Command: []string{"/bin/true"}, CgroupParent: top, Installation: inst}.WithDefaults()
	}
	mine, other := cfg("mine"), cfg("other")
	d := &Driver{cfg: Config{Jail: mine}, log: slog.New(slog.DiscardHandler)}
	flat := &Driver{cfg: Config{Jail: cfg("")}, log: slog.New(slog.DiscardHandler)}
	grace := cgroupSweepGrace
	cgroupSweepGrace = 0
	t.Cleanup(func() {
		cgroupSweepGrace = grace
		for _, c := range []jail.Config{mine, other, cfg("")} {
			for _, id := range []string{"stale0000000", "kept00000000", "theirs000000", "flat00000000"} {
				if g, err := c.Cgroup(id); err == nil {
					jail.DeleteCgroup(g)
				}
			}
			if g := c.InstallationCgroup(); g != "" {
				jail.DeleteCgroup(g)
			}
		}
		jail.DeleteCgroup(top)
	})
	l, err := mine.Limits(1, 64)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(c jail.Config, id string) string {
		t.Helper()
		g, err := c.Cgroup(id)
		if err != nil {
			t.Fatal(err)
		}
		if err := jail.CreateCgroup(g, l); err != nil {
			t.Fatal(err)
		}
		return g
	}
	exists := func(g string) bool {
		_, err := jail.CgroupCPUWeight(g)
		return err == nil
	}
	stale, kept, theirs, flatG := mk(mine, "stale0000000"), mk(mine, "kept00000000"), mk(other, "theirs000000"), mk(cfg(""), "flat00000000")
	if got := flat.SweepCgroups(nil); len(got) != 0 || !exists(flatG) {
		t.Fatalf("a driver without an installation group swept %v", got)
	}
	if got := d.SweepCgroups([]string{"kept00000000"}); len(got) != 1 || got[0] != "stale0000000" {
		t.Errorf("swept %v, want [stale0000000]", got)
	}
	if exists(stale) {
		t.Error("the stale cgroup is left")
	}
	for _, g := range []string{kept, theirs, flatG} {
		if !exists(g) {
			t.Errorf("cgroup %s was removed", g)
		}
	}
	// The installation's last VM ends: its group goes too, the other
	// installation's stays.
	d.removeCgroup(&hypervisor.Handle{Cgroup: kept})
	if exists(kept) || exists(mine.InstallationCgroup()) {
		t.Errorf("after the last vm's removal: vm cgroup %v, installation group %v", exists(kept), exists(mine.InstallationCgroup()))
	}
	if !exists(theirs) || !exists(other.InstallationCgroup()) {
		t.Error("another installation's cgroups went")
	}
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", "cpu", top)); err != nil && !jailV2() {
		t.Errorf("the shared parent: %v", err)
	}
}

func jailV2() bool {
	info, err := jail.Cgroups()
	return err == nil && info.Version == "v2"
}
