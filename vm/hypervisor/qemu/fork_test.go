package qemu

import (
	"testing"

	"github.com/minionsdev/minions/vm/hypervisor"
)

// TestCopyCompatible: a fork's machine may differ from the saved one in
// its MAC and vsock CID only; Restore's check still insists on the MAC.
func TestCopyCompatible(t *testing.T) {
	saved := machine{ID: "0123456789ab", Accel: "tcg", CPUs: 1, MemoryMiB: 256, Kernel: "/k",
		Disks: []hypervisor.Disk{{Path: "/a/disk.qcow2", Format: "qcow2"}}, Net: &hypervisor.NetIface{TAP: "mna", MAC: "02:00:00:00:00:01"}, VsockCID: 3}
	fork := saved
	fork.ID, fork.VsockCID = "ba9876543210", 4
	fork.Disks = []hypervisor.Disk{{Path: "/b/disk.qcow2", Format: "qcow2"}}
	fork.Net = &hypervisor.NetIface{TAP: "mnb", MAC: "02:00:00:00:00:02"}
	if err := copyCompatible(saved, fork); err != nil {
		t.Fatalf("fork refused: %v", err)
	}
	if saved.Net.MAC != "02:00:00:00:00:01" {
		t.Fatalf("copyCompatible changed the saved machine's MAC")
	}
	if err := compatible(saved, fork); err == nil {
		t.Fatalf("Restore's check accepts another MAC")
	}
	for name, change := range map[string]func(m *machine){
		"cpus":      func(m *machine) { m.CPUs = 2 },
		"memory":    func(m *machine) { m.MemoryMiB = 512 },
		"no net":    func(m *machine) { m.Net = nil },
		"disk kind": func(m *machine) { m.Disks = []hypervisor.Disk{{Path: "/b/d", Format: "raw"}} },
		"accel":     func(m *machine) { m.Accel = "kvm" },
	} {
		m := fork
		change(&m)
		if err := copyCompatible(saved, m); err == nil {
			t.Errorf("%s: a fork of another shape accepted", name)
		}
	}
}
