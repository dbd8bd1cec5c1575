package qemu

import (
	"path/filepath"
	"slices"
	"time"

	"github.com/minionsdev/minions/vm/jail"
)

// cgroupSweepGrace is how old a VM's cgroup must be before SweepCgroups
// may remove it: one just made (the "create cgroup" step of a start)
// holds no process yet.
var cgroupSweepGrace = time.Minute

// SweepCgroups removes the cgroups of this installation's group
// (jail.Config.Installation) that belong to none of the VMs keep names
// (IDs), hold no process and are older than a minute, and returns their
// names. Other installations' groups, and the shared parent's flat
// groups, are never touched. Without an installation group (or with the
// jail off) it does nothing.
func (d *Driver) SweepCgroups(keep []string) []string {
	group := d.cfg.Jail.InstallationCgroup()
	if group == "" || !d.cfg.Jail.On() {
		return nil
	}
	gone, err := jail.SweepCgroups(group, func(id string) bool { return slices.Contains(keep, id) }, time.Now().Add(-cgroupSweepGrace))
	if err != nil {
		d.log.Debug("sweep cgroups", "group", group, "err", err)
	}
	if err := jail.PruneCgroup(group); err != nil {
		d.log.Debug("prune the installation's cgroup", "group", group, "err", err)
	}
	return gone
}

// deleteCgroup removes a VM's cgroup (jail.DeleteCgroup), then this
// installation's group if that was its last VM: an installation whose VMs
// are all gone (a test's, one uninstalled) leaves nothing behind.
func (d *Driver) deleteCgroup(name string) error {
	if err := jail.DeleteCgroup(name); err != nil {
		return err
	}
	if group := d.cfg.Jail.InstallationCgroup(); group != "" && filepath.Dir(name) == group {
		return jail.PruneCgroup(group)
	}
	return nil
}
