package jail

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func TestLimits(t *testing.T) {
	for _, tc := range []struct {
		cfg       Config
		cpus, mem int
		want      Limits
	}{
		{Config{}, 1, 256, Limits{MemoryBytes: 512 << 20, CPUQuotaUs: 100_000, CPUPeriodUs: 100_000, PidsMax: 1024, CPUShares: 1024}},
		{Config{}, 2, 1024, Limits{MemoryBytes: 1280 << 20, CPUQuotaUs: 200_000, CPUPeriodUs: 100_000, PidsMax: 1024, CPUShares: 2048}},
		{Config{MemoryOverheadMiB: 64, PidsMax: 100}, 4, 512, Limits{MemoryBytes: 576 << 20, CPUQuotaUs: 400_000, CPUPeriodUs: 100_000, PidsMax: 100, CPUShares: 4096}},
	} {
		got, err := tc.cfg.Limits(tc.cpus, tc.mem)
		if err != nil || got != tc.want {
			t.Errorf("%+v.Limits(%d, %d) = %+v, %v; want %+v", tc.cfg, tc.cpus, tc.mem, got, err, tc.want)
		}
	}
	if _, err := (Config{}).Limits(0, 256); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("0 cpus: %v", err)
	}
}

func TestUIDAndCgroupNames(t *testing.T) {
	c := Config{}
	if u, err := c.UID(3); err != nil || u != 2_000_000_003 {
		t.Errorf("UID(3) = %d, %v", u, err)
	}
	if u, err := (Config{UIDBase: 500000}).UID(7); err != nil || u != 500007 {
		t.Errorf("UID with base 500000 = %d, %v", u, err)
	}
	for _, i := range []uint32{0, 1<<32 - 1} {
		if _, err := c.UID(i); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("UID(%d): %v, want InvalidArgument", i, err)
		}
	}
	if g, err := c.Cgroup("0123456789ab"); err != nil || g != "minions/0123456789ab" {
		t.Errorf("Cgroup = %q, %v", g, err)
	}
	inst := Config{Installation: "5e1f00aa7b3c"}
	if g, err := inst.Cgroup("0123456789ab"); err != nil || g != "minions/5e1f00aa7b3c/0123456789ab" {
		t.Errorf("Cgroup of an installation = %q, %v", g, err)
	}
	if g := inst.InstallationCgroup(); g != "minions/5e1f00aa7b3c" {
		t.Errorf("InstallationCgroup = %q", g)
	}
	if g := c.InstallationCgroup(); g != "" {
		t.Errorf("InstallationCgroup without an installation = %q", g)
	}
	for _, id := range []string{"", "..", "a/b"} {
		if _, err := c.Cgroup(id); err == nil {
			t.Errorf("Cgroup(%q) accepted", id)
		}
	}
}

func TestValidate(t *testing.T) {
	good := Config{Command: []string{"/bin/minions", "jail-exec"}, Hide: []string{"/var/lib/minions"}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (Config{Mode: ModeOff}).Validate(); err != nil {
		t.Errorf("off needs no command: %v", err)
	}
	for name, c := range map[string]Config{
		"no command":    {},
		"bad mode":      {Mode: "auto", Command: good.Command},
		"system uids":   {UIDBase: 10, Command: good.Command},
		"relative hide": {Command: good.Command, Hide: []string{"var"}},
		"hide root":     {Command: good.Command, Hide: []string{"/"}},
		"abs cgroup":    {Command: good.Command, CgroupParent: "/minions"},
		"installation":  {Command: good.Command, Installation: "a/b"},
		"dot dot":       {Command: good.Command, Installation: ".."},
	} {
		if err := c.Validate(); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

// TestPlanGolden pins the jail of a VM with the daemon's layout: the state
// dir (with the run dir inside, as in tests) and /run/minions are hidden;
// the VM's own files come back, the base image read-only; the QEMU binary
// and the kernel outside hidden dirs need no bind but are checked.
func TestPlanGolden(t *testing.T) {
	c := Config{Command: []string{"/usr/bin/minions", "jail-exec"}, Hide: []string{"/var/lib/minions", "/var/lib/minions/run", "/run/minions"}}
	p, err := c.Plan(Request{
		UID: 2000000003, Groups: []int{106}, Cgroup: "minions/0123456789ab",
		Dir:  "/var/lib/minions/run/0123456789ab",
		Argv: []string{"/usr/bin/qemu-system-x86_64", "-name", "x"},
		ReadOnly: []string{
			"/var/lib/minions/images/kernels/6.1/vmlinux",
			"/var/lib/minions/images/minimal/1/rootfs.raw",
			"/boot/vmlinuz",
			"/var/lib/minions/vms/0123456789ab/disk.qcow2", // also writable: rw wins
		},
		Writable: []string{
			"/var/lib/minions/run/0123456789ab",
			"/var/lib/minions/run/0123456789ab/qemu.log", // inside a rw bind: no bind of its own
			"/var/lib/minions/vms/0123456789ab/console.log",
			"/var/lib/minions/vms/0123456789ab/disk.qcow2",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "plan.golden", p.String())
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("%s differs:\n--- got\n%s--- want\n%s", name, got, want)
	}
}

func TestPlanRefusesBadRequests(t *testing.T) {
	c := Config{Command: []string{"/x"}}
	for name, r := range map[string]Request{
		"relative argv": {UID: 5, Dir: "/", Argv: []string{"qemu"}},
		"root uid":      {UID: 0, Dir: "/", Argv: []string{"/qemu"}},
		"relative file": {UID: 5, Dir: "/", Argv: []string{"/qemu"}, ReadOnly: []string{"k"}},
		"bad env":       {UID: 5, Dir: "/", Argv: []string{"/qemu"}, Env: []string{"GOMAXPROCS"}},
		"env sets PATH": {UID: 5, Dir: "/", Argv: []string{"/qemu"}, Env: []string{"PATH=/tmp"}},
	} {
		if _, err := c.Plan(r); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestBackingChain(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	qcow2 := func(backing string) []byte {
		h := make([]byte, 512)
		copy(h, "QFI\xfb\x00\x00\x00\x03")
		if backing != "" {
			h[15] = 100 // offset 100
			h[19] = byte(len(backing))
			copy(h[100:], backing)
		}
		return h
	}
	base := write("base.raw", make([]byte, 4096))
	mid := write("mid.qcow2", qcow2("base.raw")) // relative to its directory
	top := write("top.qcow2", qcow2(mid))
	chain, err := BackingChain(top)
	if err != nil || len(chain) != 2 || chain[0] != mid || chain[1] != base {
		t.Fatalf("chain of top = %v, %v; want [%s %s]", chain, err, mid, base)
	}
	if chain, err := BackingChain(base); err != nil || len(chain) != 0 {
		t.Errorf("raw image has chain %v, %v", chain, err)
	}
	loop := filepath.Join(dir, "loop.qcow2")
	write("loop.qcow2", qcow2(loop))
	if _, err := BackingChain(loop); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("loop: %v", err)
	}
	if _, err := BackingChain(write("proto.qcow2", qcow2("nbd:host:1"))); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("protocol backing: %v", err)
	}
}
