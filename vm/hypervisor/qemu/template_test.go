package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/minionsdev/minions/vm/hypervisor"
)

func TestTemplateArgs(t *testing.T) {
	m := machine{ID: "0123456789ab", Accel: "tcg", CPUs: 1, MemoryMiB: 512, Kernel: "/k", Cmdline: "quiet", RunDir: "/r", ConsoleLog: "/r/c"}
	plain := strings.Join(m.args(), " ")
	if strings.Contains(plain, "memory-backend") || strings.Contains(plain, "id=agentport") {
		t.Fatalf("a plain vm has template options: %s", plain)
	}
	m.MemFile, m.MemShared = "/t/memory,ram", true
	a := m.args()
	if i := slices.Index(a, "-M"); i < 0 || a[i+1] != "microvm,memory-backend=mem" {
		t.Errorf("-M: %q", a)
	}
	if i := slices.Index(a, "-object"); i < 0 || a[i+1] != "memory-backend-file,id=mem,size=512M,mem-path=/t/memory,,ram,share=on" {
		t.Errorf("template memory: %q", a)
	}
	if !strings.Contains(strings.Join(a, " "), "name=org.minions.agent,id=agentport") {
		t.Errorf("agent port has no id: %q", a)
	}
	m.MemShared = false
	if i := slices.Index(m.args(), "-object"); i < 0 || !strings.HasSuffix(m.args()[i+1], ",share=off") {
		t.Errorf("clone memory is not private: %q", m.args())
	}
	// A restored snapshot of a clone: the same RAM block name, anonymous.
	m.MemFile, m.MemBackendRAM = "", true
	a = m.args()
	if i := slices.Index(a, "-object"); i < 0 || a[i+1] != "memory-backend-ram,id=mem,size=512M" || !slices.Contains(a, "microvm,memory-backend=mem") {
		t.Errorf("snapshot of a clone: %q", a)
	}
}

func TestCloneCompatible(t *testing.T) {
	tmpl := machine{Accel: "tcg", CPUs: 1, MemoryMiB: 256, Kernel: "/k", Initramfs: "/i", VhostVsock: true, VsockCID: 3,
		Disks: []hypervisor.Disk{{Path: "/tpl.qcow2", Format: "qcow2"}}, Net: &hypervisor.NetIface{TAP: "t0", MAC: "52:54:00:00:00:01"}}
	clone := tmpl
	clone.Disks = []hypervisor.Disk{{Path: "/clone.qcow2", Format: "qcow2"}}
	clone.Net = &hypervisor.NetIface{TAP: "t1", MAC: "52:54:00:00:00:02"}
	clone.VsockCID = 9
	if err := cloneCompatible(tmpl, clone); err != nil {
		t.Fatalf("a clone's own disk, tap, mac and cid must be fine: %v", err)
	}
	if tmpl.Net.MAC != "52:54:00:00:00:01" || tmpl.VsockCID != 3 {
		t.Fatal("cloneCompatible changed the template")
	}
	for name, mut := range map[string]func(*machine){
		"memory":    func(m *machine) { m.MemoryMiB = 512 },
		"cpus":      func(m *machine) { m.CPUs = 2 },
		"kernel":    func(m *machine) { m.Kernel = "/k2" },
		"initramfs": func(m *machine) { m.Initramfs = "/i2" },
		"no net":    func(m *machine) { m.Net = nil },
		"disks":     func(m *machine) { m.Disks = nil },
	} {
		m := clone
		mut(&m)
		if cloneCompatible(tmpl, m) == nil {
			t.Errorf("%s: mismatch accepted", name)
		}
	}
}
