package images

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/testenv"
	"github.com/minionsdev/minions/vm/disk"
)

// sharedKernel installs the kernel once per test binary run.
var (
	kernelOnce sync.Once
	kernelVal  Kernel
	kernelErr  error
	kernelDir  string
)

func testKernel(t *testing.T) Kernel {
	t.Helper()
	if _, err := exec.LookPath("apt-get"); err != nil {
		testenv.SkipUnlessCI(t, "apt-get not available")
	}
	kernelOnce.Do(func() {
		kernelDir, kernelErr = os.MkdirTemp("", "minions-images-test-kernel-")
		if kernelErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		start := time.Now()
		kernelVal, kernelErr = EnsureKernel(ctx, kernelDir)
		fmt.Printf("EnsureKernel (download + unpack + vmlinux + modules.dep): %v\n", time.Since(start))
	})
	if kernelErr != nil {
		t.Fatalf("EnsureKernel: %v", kernelErr)
	}
	return kernelVal
}

func TestMain(m *testing.M) {
	code := m.Run()
	if kernelDir != "" {
		os.RemoveAll(kernelDir)
	}
	os.Exit(code)
}

// buildTestAgent builds testdata/testagent statically with the given
// version string and returns its path.
func buildTestAgent(t *testing.T, dir, version string) string {
	t.Helper()
	out := filepath.Join(dir, "testagent-"+version)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version="+version, "-o", out, "./testdata/testagent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build test agent: %v\n%s", err, b)
	}
	return out
}

func hostTSCkHz(t *testing.T) string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			var mhz float64
			fmt.Sscanf(strings.TrimSpace(v), "%f", &mhz)
			return fmt.Sprintf("%d", int(mhz*1000))
		}
	}
	t.Fatal("no cpu MHz in /proc/cpuinfo")
	return ""
}

// bootResult is what one boot printed.
type bootResult struct {
	console  string
	elapsed  time.Duration // launch to QEMU exit
	toMarker time.Duration // launch to the agent running on the root filesystem
}

// boot runs QEMU microvm (TCG) in a fresh network namespace with kernel,
// initramfs and a qcow2 root disk until the guest powers off.
func boot(t *testing.T, kernel, initrd, rootDisk string) bootResult {
	t.Helper()
	for _, tool := range []string{"qemu-system-x86_64", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.SkipUnlessCI(t, tool+" not installed")
		}
	}
	if os.Geteuid() != 0 {
		testenv.SkipUnlessCI(t, "needs root for a private network namespace")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmdline := "console=ttyS0 root=/dev/vda rw panic=-1 quiet tsc_early_khz=" + hostTSCkHz(t)
	args := []string{"--net", "qemu-system-x86_64",
		"-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic",
		"-kernel", kernel, "-initrd", initrd, "-append", cmdline,
		"-drive", "id=root,file=" + rootDisk + ",format=qcow2,if=none",
		"-device", "virtio-blk-device,drive=root",
		"-serial", "stdio", "-no-reboot"}
	cmd := exec.CommandContext(ctx, "unshare", args...)
	out := &markerWriter{marker: []byte("TESTAGENT rootfs")}
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	out.start = start
	err := cmd.Run()
	el := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("boot timed out after %v; console:\n%s", el, out.String())
	}
	if err != nil {
		t.Fatalf("qemu: %v; console:\n%s", err, out.String())
	}
	return bootResult{console: out.String(), elapsed: el, toMarker: out.at}
}

// markerWriter collects console output and notes when marker first shows.
type markerWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker []byte
	start  time.Time
	at     time.Duration
}

func (w *markerWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.at == 0 && bytes.Contains(w.buf.Bytes(), w.marker) {
		w.at = time.Since(w.start)
	}
	return len(p), nil
}

func (w *markerWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestMinimalImageBoots builds the kernel, an initramfs and the minimal
// image from scratch, boots it on a qcow2 overlay with real QEMU (once with
// the extracted vmlinux, once with the bzImage), bakes a new agent into a
// new version and boots that: kernel + initramfs + rootfs + bake proven.
func TestMinimalImageBoots(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	k := testKernel(t)
	if k.Vmlinux == "" {
		t.Fatalf("no PVH vmlinux extracted from %s", k.BzImage)
	}
	dir := t.TempDir()
	agent1 := buildTestAgent(t, dir, "1")
	agent2 := buildTestAgent(t, dir, "2")
	cat := &Catalog{Dir: filepath.Join(dir, "catalog")}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	start := time.Now()
	ir, err := cat.Initramfs(ctx, k, agent1)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs built in %v: %s", time.Since(start), filepath.Base(ir.Path))
	if len(ir.Modules) != 14 {
		t.Errorf("initramfs has %d modules, want 14: %v", len(ir.Modules), ir.Modules)
	}

	var steps []string
	start = time.Now()
	im, err := cat.Build(ctx, BuildOptions{OS: OSMinimal, AgentBinary: agent1, Kernel: &k, Progress: func(s string) { steps = append(steps, s) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("minimal image built in %v (steps %v): %s", time.Since(start), steps, im.Ref())
	if im.SizeBytes != DefaultMinimalSizeMiB<<20 {
		t.Errorf("size %d", im.SizeBytes)
	}
	st, err := os.Stat(im.Path)
	if err != nil || st.Mode().Perm() != 0o444 {
		t.Fatalf("image file mode: %v %v", st.Mode(), err)
	}
	before, _ := fileSHA256(im.Path)

	bootOn := func(name string, img Image, kernel string) bootResult {
		ov := filepath.Join(dir, name+".qcow2")
		if err := disk.CreateOverlay(ctx, img.Path, disk.FormatRaw, ov, 0); err != nil {
			t.Fatal(err)
		}
		r := boot(t, kernel, ir.Path, ov)
		t.Logf("boot %s (%s): %v to agent on rootfs, %v to QEMU exit", name, filepath.Base(kernel), r.toMarker, r.elapsed)
		for _, l := range strings.Split(r.console, "\n") {
			if strings.Contains(l, "TESTAGENT") {
				t.Logf("  %s", strings.TrimSpace(l))
			}
		}
		return r
	}
	check := func(r bootResult, version string) {
		t.Helper()
		for _, want := range []string{
			"TESTAGENT stage1 loaded 14 modules",
			"TESTAGENT rootfs version=" + version + " os=minions-minimal busybox=true init->/usr/sbin/minions-agent writable=true",
			"TESTAGENT done",
		} {
			if !strings.Contains(r.console, want) {
				t.Fatalf("console lacks %q:\n%s", want, r.console)
			}
		}
	}
	check(bootOn("vmlinux", im, k.Vmlinux), "1")

	// Bake a new agent: a new version, the old file untouched.
	start = time.Now()
	baked, err := cat.Bake(ctx, OSMinimal, agent2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bake in %v: %s", time.Since(start), baked.Ref())
	if baked.Version <= im.Version || baked.BakedFrom != im.Version {
		t.Fatalf("baked %+v from %+v", baked, im)
	}
	if after, _ := fileSHA256(im.Path); after != before {
		t.Fatal("bake changed the source image")
	}
	if sum, _ := fileSHA256(agent2); baked.AgentSHA256 != sum {
		t.Fatal("baked image records the wrong agent hash")
	}
	if r, _ := cat.Resolve(OSMinimal); r.Version != baked.Version {
		t.Fatalf("resolve minimal = %s, want the baked %s", r.Version, baked.Version)
	}
	check(bootOn("bzimage-baked", baked, k.BzImage), "2")
	if after, _ := fileSHA256(baked.Path); after == "" {
		t.Fatal("baked image unreadable")
	}
}

func TestCatalogLifecycle(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4")
	}
	if err := checkStaticBusybox(BusyboxPath); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("#!/bin/sh\necho fake agent\n"), 0o755)
	cat := &Catalog{Dir: filepath.Join(dir, "cat")}
	ctx := context.Background()

	if _, err := cat.Resolve("minimal"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("resolve in empty catalogue: %v", err)
	}
	start := time.Now()
	a, err := cat.Build(ctx, BuildOptions{OS: OSMinimal, AgentBinary: agent, SizeMiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("minimal (64 MiB) built in %v", time.Since(start))
	b, err := cat.Build(ctx, BuildOptions{OS: OSMinimal, AgentBinary: agent, SizeMiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	if !(a.Version < b.Version) {
		t.Fatalf("versions not increasing: %s, %s", a.Version, b.Version)
	}
	list, err := cat.List()
	if err != nil || len(list) != 2 || list[0].Version != a.Version || list[1].Version != b.Version {
		t.Fatalf("list = %+v, %v", list, err)
	}
	for _, tt := range []struct {
		ref   string
		want  string
		class *errs.Class
	}{
		{"minimal", b.Version, nil},
		{"minimal@" + a.Version, a.Version, nil},
		{"minimal@20000101-000000-0000", "", errs.NotFound},
		{"debian", "", errs.NotFound},
		{"minimal@latest", "", errs.InvalidArgument},
		{"../etc", "", errs.InvalidArgument},
	} {
		im, err := cat.Resolve(tt.ref)
		if tt.class != nil {
			if !errors.Is(err, tt.class) {
				t.Errorf("resolve %s: err %v, want %v", tt.ref, err, tt.class)
			}
			continue
		}
		if err != nil || im.Version != tt.want {
			t.Errorf("resolve %s = %s, %v; want %s", tt.ref, im.Version, err, tt.want)
		}
	}

	// Inside the image: the agent is init, root is locked.
	dump := func(im Image, p string) string {
		out, err := exec.Command("debugfs", "-R", "cat "+p, im.Path).Output()
		if err != nil {
			t.Fatalf("debugfs cat %s: %v", p, err)
		}
		return string(out)
	}
	if got := dump(a, AgentPath); !strings.Contains(got, "fake agent") {
		t.Fatalf("agent in image: %q", got)
	}
	if got := dump(a, "/etc/shadow"); !strings.HasPrefix(got, "root:!:") {
		t.Fatalf("shadow: %q", got)
	}
	for path, mode := range map[string]string{"/tmp": "Mode:  01777", "/root": "Mode:  0700", "/etc/shadow": "Mode:  0640", AgentPath: "Mode:  0755"} {
		if out, _ := exec.Command("debugfs", "-R", "stat "+path, a.Path).Output(); !strings.Contains(string(out), mode) {
			t.Errorf("%s: want %q in\n%s", path, mode, out)
		}
	}
	if out, _ := exec.Command("debugfs", "-R", "stat /sbin/init", a.Path).Output(); !strings.Contains(string(out), "Fast link dest: \"/usr/sbin/minions-agent\"") {
		t.Fatalf("/sbin/init: %s", out)
	}

	// Remove refuses images in use, then removes.
	inUse := func(im Image) bool { return im.Version == a.Version }
	if _, err := cat.Remove("minimal", inUse); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("remove in use: %v", err)
	}
	if l, _ := cat.List(); len(l) != 2 {
		t.Fatal("a refused remove removed something")
	}
	if rm, err := cat.Remove("minimal@"+b.Version, inUse); err != nil || len(rm) != 1 {
		t.Fatalf("remove b: %v", err)
	}
	if _, err := os.Stat(b.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("removed image still on disk")
	}
	if rm, err := cat.Remove("minimal", nil); err != nil || len(rm) != 1 {
		t.Fatalf("remove all: %v %v", rm, err)
	}

	// Failed builds leave nothing behind.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	for _, o := range []BuildOptions{
		{OS: OSMinimal, AgentBinary: filepath.Join(dir, "missing")},
		{OS: OSMinimal, AgentBinary: agent, SizeMiB: 1},
		{OS: "plan9", AgentBinary: agent},
	} {
		if _, err := cat.Build(ctx, o); err == nil {
			t.Errorf("build %+v succeeded", o)
		}
	}
	if _, err := cat.Build(cctx, BuildOptions{OS: OSMinimal, AgentBinary: agent, SizeMiB: 64}); err == nil {
		t.Error("cancelled build succeeded")
	}
	if l, _ := cat.List(); len(l) != 0 {
		t.Fatalf("failed builds left images: %+v", l)
	}
	left, _ := os.ReadDir(filepath.Join(cat.Dir, "tmp"))
	if len(left) != 0 {
		t.Fatalf("failed builds left temp files: %v", left)
	}
}

func TestCleanTempSparesLiveBuilds(t *testing.T) {
	cat := &Catalog{Dir: t.TempDir()}
	live, err := newTempDir(filepath.Join(cat.Dir, "tmp"), "build-minimal-")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Remove()
	// A build whose process died: lock file present, nobody holds it.
	dead := filepath.Join(cat.Dir, "tmp", "build-debian-123")
	os.MkdirAll(filepath.Join(dead, "root/etc"), 0o755)
	os.WriteFile(filepath.Join(dead, lockName), nil, 0o600)
	// A kernel install that died, and a fresh entry without a lock yet.
	deadK := filepath.Join(cat.KernelDir(), ".tmp-6.1.0-1-cloud-amd64-9")
	os.MkdirAll(deadK, 0o755)
	os.WriteFile(filepath.Join(deadK, lockName), nil, 0o600)
	fresh := filepath.Join(cat.Dir, "initramfs", ".tmp-initramfs-5")
	os.MkdirAll(filepath.Dir(fresh), 0o755)
	os.WriteFile(fresh, []byte("partial"), 0o644)
	// Published things are never touched.
	keep := filepath.Join(cat.KernelDir(), "6.1.0-1-cloud-amd64")
	os.MkdirAll(keep, 0o755)

	n, err := cat.CleanTemp()
	if err != nil || n != 2 {
		t.Fatalf("CleanTemp = %d, %v; want 2", n, err)
	}
	for p, want := range map[string]bool{live.Path: true, dead: false, deadK: false, fresh: true, keep: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", p, err == nil, want)
		}
	}
	old := time.Now().Add(-2 * staleGrace)
	os.Chtimes(fresh, old, old)
	if n, _ := cat.CleanTemp(); n != 1 {
		t.Fatalf("old unlocked file not removed (n=%d)", n)
	}
}

// TestBootTimes compares booting the extracted vmlinux (PVH) with the
// bzImage: MINIONS_TEST_BOOTBENCH=<n> boots each n times, alternating,
// one VM at a time, and logs the medians to the agent on the root
// filesystem.
func TestBootTimes(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("MINIONS_TEST_BOOTBENCH"))
	if n <= 0 {
		t.Skip("set MINIONS_TEST_BOOTBENCH=<boots per kernel>")
	}
	k := testKernel(t)
	dir := t.TempDir()
	agent := buildTestAgent(t, dir, "1")
	cat := &Catalog{Dir: filepath.Join(dir, "catalog")}
	ctx := t.Context()
	ir, err := cat.Initramfs(ctx, k, agent)
	if err != nil {
		t.Fatal(err)
	}
	im, err := cat.Build(ctx, BuildOptions{OS: OSMinimal, AgentBinary: agent})
	if err != nil {
		t.Fatal(err)
	}
	times := map[string][]time.Duration{}
	for i := 0; i < n; i++ {
		for _, kern := range []string{k.Vmlinux, k.BzImage} {
			ov := filepath.Join(dir, fmt.Sprintf("b%d-%s.qcow2", i, filepath.Base(kern)))
			if err := disk.CreateOverlay(ctx, im.Path, disk.FormatRaw, ov, 0); err != nil {
				t.Fatal(err)
			}
			r := boot(t, kern, ir.Path, ov)
			times[filepath.Base(kern)] = append(times[filepath.Base(kern)], r.toMarker)
			os.Remove(ov)
		}
	}
	for name, ts := range times {
		sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
		t.Logf("%s: median %v to agent on rootfs (min %v, max %v, n=%d)", name, ts[len(ts)/2], ts[0], ts[len(ts)-1], len(ts))
	}
}
