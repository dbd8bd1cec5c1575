package qemu

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/jail"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// fakeHost makes a driver without looking at the host.
func fakeHost(accel string, vhost bool) *Driver {
	cfg := Config{Accel: accel, RelayCommand: []string{"/bin/minions", "agent-relay"}, Jail: jail.Config{Mode: jail.ModeOff}}.withDefaults()
	d := &Driver{cfg: cfg, binary: "/usr/bin/qemu-system-x86_64", accel: cfg.accel(), vhost: vhost, log: cfg.Log,
		tapExists: func(name string) bool { return name != "missing0" }}
	if d.accel == AccelTCG {
		d.tscKHz = 2445426
	}
	d.sandboxOnce.Do(func() {}) // as if probed: this QEMU has the sandbox
	return d
}

// jailedHost is fakeHost with the jail on, hiding root (the test's state
// dir).
func jailedHost(accel string, vhost bool, root string) *Driver {
	d := fakeHost(accel, vhost)
	d.cfg.Jail = jail.Config{Command: []string{"/bin/minions", "jail-exec"}, Hide: []string{root}}.WithDefaults()
	return d
}

// TestSandboxModes checks -sandbox follows Config.Sandbox and the probe: off
// leaves it out, auto drops it when the probe fails, on refuses to start.
func TestSandboxModes(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	spec := hypervisor.Spec{ID: "a", CPUs: 1, MemoryMiB: 256, Kernel: kernel, RunDir: dir, ConsoleLog: filepath.Join(dir, "c.log")}
	has := func(d *Driver) (bool, error) {
		m, err := d.machineFor(spec)
		return strings.Contains(strings.Join(m.args(), " "), "-sandbox "+SandboxArgs), err
	}
	d := fakeHost(AccelTCG, false)
	if ok, err := has(d); !ok || err != nil {
		t.Errorf("probed available: sandbox %v, %v", ok, err)
	}
	d = fakeHost(AccelTCG, false)
	d.cfg.Sandbox = SandboxOff
	if ok, err := has(d); ok || err != nil {
		t.Errorf("off: sandbox %v, %v", ok, err)
	}
	for _, mode := range []string{SandboxAuto, SandboxOn} {
		d = fakeHost(AccelTCG, false)
		d.sandboxOnce = sync.Once{}
		d.binary = "/bin/false" // a "QEMU" that refuses -sandbox
		d.cfg.Sandbox = mode
		ok, err := has(d)
		if mode == SandboxAuto && (ok || err != nil) {
			t.Errorf("auto without sandbox support: sandbox %v, %v", ok, err)
		}
		if mode == SandboxOn && !errors.Is(err, errs.FailedPrecondition) {
			t.Errorf("on without sandbox support: err = %v, want FailedPrecondition", err)
		}
	}
}

func TestArgsGolden(t *testing.T) {
	// Files the spec refers to must exist; they are created under a
	// fixed-looking root so the golden files are stable.
	root := t.TempDir()
	touch := func(rel string) string {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	run := filepath.Join(root, "run")
	if err := os.MkdirAll(run, 0o700); err != nil {
		t.Fatal(err)
	}
	base := hypervisor.Spec{
		ID: "0123456789ab", Name: "web", CPUs: 2, MemoryMiB: 512,
		Kernel: touch("k/vmlinux"), Initramfs: touch("k/initrd.img"),
		Cmdline: "console=ttyS0 root=/dev/vda rw minions.id=0123456789ab",
		RunDir:  run, ConsoleLog: filepath.Join(root, "console.log"), VsockCID: 7,
	}
	full := base
	full.Disks = []hypervisor.Disk{{Path: touch("disks/root.qcow2"), Format: "qcow2"}, {Path: touch("disks/seed,1.raw"), Format: "raw", ReadOnly: true}}
	full.Net = &hypervisor.NetIface{TAP: "mn0123456789ab", MAC: "52:54:00:12:34:56"}
	kvm := base
	kvm.Initramfs = ""
	kvm.Cmdline = "console=ttyS0 tsc_early_khz=1000"

	tests := []struct {
		name     string
		d        *Driver
		spec     hypervisor.Spec
		incoming string
	}{
		{"tcg_relay_minimal", fakeHost(AccelAuto, false), base, ""},
		{"tcg_relay_disks_net", fakeHost(AccelTCG, false), full, ""},
		{"kvm_vhost_vsock", fakeHost(AccelKVM, true), kvm, ""},
		{"tcg_restore", fakeHost(AccelTCG, false), full, filepath.Join(root, "snap it's", StateMemoryFile)},
		{"tcg_jailed", jailedHost(AccelTCG, false, root), full, ""},
		{"kvm_vhost_vsock_jailed", jailedHost(AccelKVM, true, root), kvm, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := tt.d.machineFor(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			m.Incoming = tt.incoming
			got := strings.Join(m.args(), "\n") + "\n"
			if m.UID > 0 && m.Accel == AccelTCG {
				// The jail: the uid from the CID, what is hidden, what
				// is bound back.
				p, err := tt.d.qemuPlan(m)
				if err != nil {
					t.Fatal(err)
				}
				got += "# jail\n" + p.String()
			}
			got = strings.ReplaceAll(got, root, "$ROOT")
			golden := filepath.Join("testdata", tt.name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if got != string(want) {
				t.Errorf("argv differs from %s:\n--- got\n%s--- want\n%s", golden, got, want)
			}
		})
	}
}

func TestMachineForRejects(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	good := hypervisor.Spec{ID: "a", CPUs: 1, MemoryMiB: 256, Kernel: kernel, RunDir: dir, ConsoleLog: filepath.Join(dir, "c.log"), VsockCID: 3}
	tests := []struct {
		name   string
		mutate func(*hypervisor.Spec)
	}{
		{"no id", func(s *hypervisor.Spec) { s.ID = "" }},
		{"no cpus", func(s *hypervisor.Spec) { s.CPUs = 0 }},
		{"tiny memory", func(s *hypervisor.Spec) { s.MemoryMiB = 8 }},
		{"missing kernel", func(s *hypervisor.Spec) { s.Kernel = filepath.Join(dir, "nope") }},
		{"missing initramfs", func(s *hypervisor.Spec) { s.Initramfs = filepath.Join(dir, "nope") }},
		{"no run dir", func(s *hypervisor.Spec) { s.RunDir = filepath.Join(dir, "nope") }},
		{"long run dir", func(s *hypervisor.Spec) { s.RunDir = "/" + strings.Repeat("x", 100) }},
		{"no console log", func(s *hypervisor.Spec) { s.ConsoleLog = "" }},
		{"bad disk format", func(s *hypervisor.Spec) { s.Disks = []hypervisor.Disk{{Path: kernel, Format: "vmdk"}} }},
		{"missing disk", func(s *hypervisor.Spec) {
			s.Disks = []hypervisor.Disk{{Path: filepath.Join(dir, "nope"), Format: "raw"}}
		}},
		{"bad mac", func(s *hypervisor.Spec) { s.Net = &hypervisor.NetIface{TAP: "t0", MAC: "zz"} }},
		{"no tap", func(s *hypervisor.Spec) { s.Net = &hypervisor.NetIface{MAC: "52:54:00:00:00:01"} }},
	}
	d0 := fakeHost(AccelTCG, false)
	s0 := good
	s0.Net = &hypervisor.NetIface{TAP: "missing0", MAC: "52:54:00:00:00:01"}
	if _, err := d0.machineFor(s0); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("missing tap: err = %v, want FailedPrecondition", err)
	}
	d := fakeHost(AccelTCG, false)
	if _, err := d.machineFor(good); err != nil {
		t.Fatalf("good spec: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good
			tt.mutate(&s)
			if _, err := d.machineFor(s); !errors.Is(err, errs.InvalidArgument) {
				t.Fatalf("err = %v, want InvalidArgument", err)
			}
		})
	}
	vd := fakeHost(AccelKVM, true)
	s := good
	s.VsockCID = 2
	if _, err := vd.machineFor(s); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("cid 2 with vhost-vsock: err = %v", err)
	}
}

func TestWithTSC(t *testing.T) {
	tests := []struct{ in, want string }{
		{"console=ttyS0", "console=ttyS0 tsc_early_khz=5"},
		{"", "tsc_early_khz=5"},
		{"a tsc_early_khz=9 b", "a tsc_early_khz=9 b"},
	}
	for _, tt := range tests {
		if got := withTSC(tt.in, 5); got != tt.want {
			t.Errorf("withTSC(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := withTSC("x", 0); got != "x" {
		t.Errorf("khz 0: %q", got)
	}
}

func TestConfig(t *testing.T) {
	launcher := jail.Config{Command: []string{"/bin/minions", "jail-exec"}}
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults with relay", Config{RelayCommand: []string{"relay"}, Jail: launcher}, true},
		{"auto vsock without relay", Config{Jail: launcher}, true}, // New decides from the host
		{"jail on without a launcher", Config{RelayCommand: []string{"relay"}}, false},
		{"jail off", Config{RelayCommand: []string{"relay"}, Jail: jail.Config{Mode: jail.ModeOff}}, true},
		{"bad jail mode", Config{RelayCommand: []string{"relay"}, Jail: jail.Config{Mode: "auto"}}, false},
		{"off without relay", Config{VhostVsock: VsockOff}, false},
		{"bad accel", Config{Accel: "hvf", RelayCommand: []string{"r"}}, false},
		{"bad vsock", Config{VhostVsock: "maybe", RelayCommand: []string{"r"}}, false},
		{"negative tsc", Config{TSCkHz: -1, RelayCommand: []string{"r"}}, false},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v", tt.name, err)
		}
		if err != nil && !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("%s: not InvalidArgument: %v", tt.name, err)
		}
	}
	if (Config{Accel: AccelAuto, KVMUsable: true}).accel() != AccelKVM || (Config{Accel: AccelAuto}).accel() != AccelTCG {
		t.Error("auto accel does not follow KVMUsable")
	}
	if _, err := New(Config{Binary: "/nonexistent/qemu", RelayCommand: []string{"r"}, Jail: launcher}); !errors.Is(err, errs.FailedPrecondition) {
		t.Errorf("missing binary: %v", err)
	}
}

func TestParseCPUInfo(t *testing.T) {
	in := "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2445.426\ncpu MHz\t\t: 1.0\n"
	got, err := parseCPUInfoKHz(strings.NewReader(in))
	if err != nil || got != 2445426 {
		t.Fatalf("got %d, %v", got, err)
	}
	if _, err := parseCPUInfoKHz(strings.NewReader("processor: 0\n")); !errors.Is(err, errs.NotFound) {
		t.Fatalf("no MHz line: %v", err)
	}
}

func TestCompatible(t *testing.T) {
	base := machine{Accel: "tcg", CPUs: 1, MemoryMiB: 256, Disks: []hypervisor.Disk{{Path: "/a", Format: "qcow2"}}, Net: &hypervisor.NetIface{TAP: "t", MAC: "52:54:00:00:00:01"}}
	if err := compatible(base, base); err != nil {
		t.Fatal(err)
	}
	moved := base
	moved.Disks = []hypervisor.Disk{{Path: "/elsewhere", Format: "qcow2"}}
	moved.Net = &hypervisor.NetIface{TAP: "other", MAC: "52:54:00:00:00:01"}
	moved.RunDir = "/run/x"
	if err := compatible(base, moved); err != nil {
		t.Fatalf("new paths must be fine: %v", err)
	}
	for name, mut := range map[string]func(*machine){
		"cpus":   func(m *machine) { m.CPUs = 2 },
		"memory": func(m *machine) { m.MemoryMiB = 512 },
		"accel":  func(m *machine) { m.Accel = "kvm" },
		"disks":  func(m *machine) { m.Disks = nil },
		"format": func(m *machine) { m.Disks = []hypervisor.Disk{{Path: "/a", Format: "raw"}} },
		"no net": func(m *machine) { m.Net = nil },
		"mac":    func(m *machine) { m.Net = &hypervisor.NetIface{TAP: "t", MAC: "52:54:00:00:00:02"} },
		"vsock":  func(m *machine) { m.VhostVsock = true },
	} {
		m := base
		mut(&m)
		if compatible(base, m) == nil {
			t.Errorf("%s: mismatch accepted", name)
		}
	}
}
