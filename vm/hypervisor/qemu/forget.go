package qemu

// forgetCgroup removes the cgroup of the jailed VM whose run dir is
// runDir (its machine file names it), for a VM whose processes are gone
// but whose handle was never recorded (a fork's copy started early whose
// daemon was killed). A cgroup that still holds processes is left, with a
// warning.
func (d *Driver) forgetCgroup(runDir string) {
	m, err := readMachine(runDir)
	if err != nil || m.Cgroup == "" {
		return
	}
	if err := d.deleteCgroup(m.Cgroup); err != nil {
		d.log.Warn("cgroup of a vm without a handle left in place", "vm_id", m.ID, "cgroup", m.Cgroup, "err", err)
	}
}
