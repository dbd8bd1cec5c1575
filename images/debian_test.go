package images

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/disk"
)

// TestDebianImage builds the Debian image (debootstrap: minutes) and boots
// it: systemd must start the agent unit. Set MINIONS_TEST_DEBIAN=1 to run;
// MINIONS_TEST_DEBIAN_DIR keeps the catalogue (and its debootstrap cache)
// between runs.
func TestDebianImage(t *testing.T) {
	if os.Getenv("MINIONS_TEST_DEBIAN") != "1" {
		t.Skip("set MINIONS_TEST_DEBIAN=1 (slow: debootstrap)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	k := testKernel(t)
	dir := t.TempDir()
	catDir := os.Getenv("MINIONS_TEST_DEBIAN_DIR")
	if catDir == "" {
		catDir = filepath.Join(dir, "catalog")
	}
	agent := buildTestAgent(t, dir, "1")
	cat := &Catalog{Dir: catDir}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	start := time.Now()
	im, err := cat.Build(ctx, BuildOptions{OS: OSDebian, AgentBinary: agent, Kernel: &k,
		Progress: func(s string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), s) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("debian image built in %v: %s (%d bytes apparent)", time.Since(start), im.Ref(), im.SizeBytes)
	if im.SizeBytes != DefaultDebianSizeMiB<<20 || im.KernelVersion != k.Version {
		t.Fatalf("image %+v", im)
	}
	dbg := func(cmd string) string { return debugfs(t, im.Path, cmd) }
	for _, c := range []struct{ cmd, want string }{
		{"cat /etc/systemd/system/minions-agent.service", "DefaultDependencies=no"},
		{"stat /etc/systemd/system/sysinit.target.wants/minions-agent.service", "minions-agent.service"},
		{"cat /etc/ssh/sshd_config.d/minions.conf", "PermitRootLogin prohibit-password"},
		{"stat /usr/lib/modules/" + k.Version + "/modules.dep.bin", "Size:"},
		{"stat /usr/sbin/sshd", "Size:"},
		{"stat /usr/bin/gcc", "Link"},
		{"cat /usr/lib/minions/ssh-hostkeys.sh", "ssh-keygen -q -t \"$t\""},
	} {
		if got := dbg(c.cmd); !strings.Contains(got, c.want) {
			t.Errorf("%s: want %q in\n%s", c.cmd, c.want, got)
		}
	}
	if got := dbg("ls /etc/ssh"); strings.Contains(got, "ssh_host_") {
		t.Errorf("image ships ssh host keys: %s", got)
	}

	ir, err := cat.Initramfs(ctx, k, agent)
	if err != nil {
		t.Fatal(err)
	}
	ov := filepath.Join(dir, "debian.qcow2")
	if err := disk.CreateOverlay(ctx, im.Path, disk.FormatRaw, ov, 0); err != nil {
		t.Fatal(err)
	}
	r := boot(t, k.Path, ir.Path, ov)
	t.Logf("debian boot: %v to agent started by systemd, %v to QEMU exit", r.toMarker, r.elapsed)
	if !strings.Contains(r.console, "TESTAGENT rootfs version=1 os=debian") {
		t.Fatalf("systemd did not start the agent:\n%s", r.console)
	}

	// A rebuild reuses the debootstrap cache.
	start = time.Now()
	im2, err := cat.Build(ctx, BuildOptions{OS: OSDebian, AgentBinary: agent, Kernel: &k})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cached rebuild in %v: %s", time.Since(start), im2.Ref())
}
