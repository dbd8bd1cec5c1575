package images

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

func TestCpioWriterReadByCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("no cpio")
	}
	var buf bytes.Buffer
	w := NewCpioWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("etc", 0o755))
	must(w.Dir("etc/minions", 0o700))
	must(w.File("etc/minions/modules", 0o644, strings.NewReader("a\nb\n"), 4))
	must(w.File("init", 0o755, strings.NewReader("x"), 1)) // odd size: padding
	must(w.Symlink("sbin", "/bin"))
	must(w.CharDev("console", 0o600, 5, 1))
	must(w.Close())
	if buf.Len()%4 != 0 {
		t.Fatalf("archive length %d not 4-aligned", buf.Len())
	}
	// An independent reader (GNU cpio) must list the same entries.
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	for _, want := range []string{"drwxr-xr-x", "etc/minions", "-rw-r--r--", "etc/minions/modules", "-rwxr-xr-x", "init", "sbin -> /bin", "crw-------", "5,", "console"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cpio listing lacks %q:\n%s", want, out)
		}
	}
	// And extract the content.
	dir := t.TempDir()
	cmd = exec.Command("cpio", "-id", "--quiet", "--no-absolute-filenames", "etc/minions/modules", "init")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "etc/minions/modules")); string(b) != "a\nb\n" {
		t.Fatalf("extracted %q", b)
	}
	// Deterministic: same input, same bytes.
	var again bytes.Buffer
	w2 := NewCpioWriter(&again)
	w2.Dir("etc", 0o755)
	w2.Close()
	if !bytes.HasPrefix(buf.Bytes(), again.Bytes()[:110]) {
		t.Fatal("headers are not deterministic")
	}
}

func TestCpioWriterErrors(t *testing.T) {
	w := NewCpioWriter(&bytes.Buffer{})
	if err := w.File("short", 0o644, strings.NewReader("ab"), 5); err == nil {
		t.Fatal("short reader accepted")
	}
	if err := w.Close(); err == nil {
		t.Fatal("close after error succeeded")
	}
	if err := NewCpioWriter(&bytes.Buffer{}).Dir("", 0o755); err == nil {
		t.Fatal("empty name accepted")
	}
}

const sampleDep = `kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/a-b.ko: kernel/c.ko
kernel/c.ko: kernel/a-b.ko
`

func TestModulesLoadOrder(t *testing.T) {
	deps, err := ParseModulesDep([]byte(sampleDep))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		names []string
		want  []string
		class *errs.Class
		err   bool
	}{
		{names: []string{"virtio_blk"}, want: []string{
			"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/block/virtio_blk.ko"}},
		{names: []string{"virtio_blk", "virtio-net"}, want: []string{
			"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/block/virtio_blk.ko",
			"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"}},
		{names: []string{"ext4"}, class: errs.NotFound, err: true},
		{names: []string{"a_b"}, err: true}, // cycle
	}
	for _, tt := range tests {
		got, err := deps.LoadOrder(tt.names)
		if tt.err {
			if err == nil || (tt.class != nil && !errors.Is(err, tt.class)) {
				t.Errorf("%v: err = %v", tt.names, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%v:\n got %v, %v\nwant %v", tt.names, got, err, tt.want)
		}
	}
	if _, err := ParseModulesDep([]byte("no colon here\n")); err == nil {
		t.Error("bad line accepted")
	}
}

// TestGeneratedModulesDep checks the generator against the real kernel's
// modules: the 14 initramfs modules in a valid order.
func TestGeneratedModulesDep(t *testing.T) {
	if testing.Short() {
		t.Skip("installs the kernel")
	}
	k := testKernel(t)
	deps, err := ReadModulesDep(k.ModulesDir)
	if err != nil {
		t.Fatal(err)
	}
	order, err := deps.LoadOrder(InitramfsModules)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range order {
		names = append(names, modName(p))
	}
	want := []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
		"virtio_blk", "failover", "net_failover", "virtio_net", "virtio_console", "vsock",
		"vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("load order\n got %v\nwant %v", names, want)
	}
	// EnsureKernel is idempotent and serves from the cache.
	start := time.Now()
	k2, err := EnsureKernel(t.Context(), filepath.Dir(filepath.Dir(k.BzImage)))
	if err != nil || k2 != k {
		t.Fatalf("second EnsureKernel = %+v, %v", k2, err)
	}
	t.Logf("cached EnsureKernel: %v", time.Since(start))
}

func TestParseKernelDepends(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{"linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n", "6.1.0-56-cloud-amd64", true},
		{"linux-image-cloud-amd64\n  Depends: linux-image-6.12.9+bpo-cloud-amd64\n", "6.12.9+bpo-cloud-amd64", true},
		{"E: No packages found\n", "", false},
	}
	for _, tt := range tests {
		got, ok := parseKernelDepends([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("%q: %q %v", tt.in, got, ok)
		}
	}
}

func TestVersionLess(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		less bool
	}{
		{"6.1.0-9-cloud-amd64", "6.1.0-56-cloud-amd64", true},
		{"6.1.0-56-cloud-amd64", "6.1.0-9-cloud-amd64", false},
		{"6.1.0-56-cloud-amd64", "6.12.0-1-cloud-amd64", true},
		{"6.1.0-56-cloud-amd64", "6.1.0-56-cloud-amd64", false},
	} {
		if got := versionLess(tt.a, tt.b); got != tt.less {
			t.Errorf("versionLess(%s, %s) = %v", tt.a, tt.b, got)
		}
	}
}

func TestParseRefAndVersions(t *testing.T) {
	for _, tt := range []struct {
		ref, os, ver string
		bad          bool
	}{
		{ref: "minimal", os: "minimal"},
		{ref: "debian@20261127-001530-ab12", os: "debian", ver: "20261127-001530-ab12"},
		{ref: "debian@", bad: true},
		{ref: "Debian", bad: true},
		{ref: "x/../y", bad: true},
		{ref: "minimal@../../etc", bad: true},
	} {
		o, v, err := ParseRef(tt.ref)
		if tt.bad {
			if !errors.Is(err, errs.InvalidArgument) {
				t.Errorf("%q: err %v", tt.ref, err)
			}
			continue
		}
		if err != nil || o != tt.os || v != tt.ver {
			t.Errorf("%q: %q %q %v", tt.ref, o, v, err)
		}
	}
	t0 := time.Date(2026, 11, 27, 0, 15, 30, 0, time.UTC)
	prev := ""
	for _, ns := range []int{0, 20_000, 500_000_000, 999_999_999} {
		v := newVersion(t0.Add(time.Duration(ns)))
		if !versionRe().MatchString(v) || v <= prev {
			t.Fatalf("version %q after %q", v, prev)
		}
		prev = v
	}
	if v := newVersion(t0.Add(time.Second)); v <= prev {
		t.Fatalf("next second %q sorts before %q", v, prev)
	}
}

func TestExtractVmlinuxRejects(t *testing.T) {
	bz := make([]byte, 4096)
	if _, err := ExtractVmlinux(bz); err == nil {
		t.Fatal("accepted a file without a setup header")
	}
	copy(bz[0x202:], "HdrS")
	bz[0x1f1] = 1
	binary.LittleEndian.PutUint32(bz[0x248:], 0)
	binary.LittleEndian.PutUint32(bz[0x24c:], 64)
	copy(bz[1024:], "\x1f\x8b") // gzip, not LZ4
	if _, err := ExtractVmlinux(bz); err == nil || !strings.Contains(err.Error(), "not LZ4") {
		t.Fatalf("gzip payload: %v", err)
	}
	binary.LittleEndian.PutUint32(bz[0x24c:], 1<<20)
	if _, err := ExtractVmlinux(bz); err == nil {
		t.Fatal("accepted a payload past the end")
	}
	if HasPVHEntry([]byte("not elf")) {
		t.Fatal("PVH entry in garbage")
	}
}

func TestNotesHave(t *testing.T) {
	note := func(name string, typ uint32, desc []byte) []byte {
		var b bytes.Buffer
		binary.Write(&b, binary.LittleEndian, uint32(len(name)+1))
		binary.Write(&b, binary.LittleEndian, uint32(len(desc)))
		binary.Write(&b, binary.LittleEndian, typ)
		n := append([]byte(name), 0)
		for len(n)%4 != 0 {
			n = append(n, 0)
		}
		b.Write(n)
		b.Write(desc)
		return b.Bytes()
	}
	data := append(note("GNU", 3, make([]byte, 20)), note("Xen", 18, make([]byte, 8))...)
	if !notesHave(data, binary.LittleEndian, "Xen", 18) {
		t.Fatal("PVH note not found")
	}
	if notesHave(data[:len(data)-4], binary.LittleEndian, "Xen", 17) {
		t.Fatal("found a note that is not there")
	}
}

// TestEnsureKernelAptErrors runs EnsureKernel against stand-in apt tools
// that fail the way apt does offline.
func TestEnsureKernelAptErrors(t *testing.T) {
	tests := []struct {
		name, aptCache, aptGet, want string
	}{
		{"no package lists", "echo 'E: No packages found' >&2; exit 100", "exit 0", "apt cannot resolve linux-image-cloud-amd64"},
		{"download fails", "echo 'linux-image-cloud-amd64'; echo '  Depends: linux-image-6.1.0-99-cloud-amd64'", "echo 'E: Failed to fetch http://deb.debian.org/...' >&2; exit 100", "apt-get download linux-image-6.1.0-99-cloud-amd64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bin := t.TempDir()
			os.WriteFile(filepath.Join(bin, "apt-cache"), []byte("#!/bin/sh\n"+tt.aptCache+"\n"), 0o755)
			os.WriteFile(filepath.Join(bin, "apt-get"), []byte("#!/bin/sh\n"+tt.aptGet+"\n"), 0o755)
			t.Setenv("PATH", bin+":/usr/bin:/bin")
			dir := t.TempDir()
			_, err := EnsureKernel(t.Context(), dir)
			if !errors.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want Unavailable containing %q", err, tt.want)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Fatalf("failed install left %v", ents)
			}
			// With a kernel already installed, an offline apt is fine.
			os.MkdirAll(filepath.Join(dir, "6.1.0-1-cloud-amd64"), 0o755)
			os.WriteFile(filepath.Join(dir, "6.1.0-1-cloud-amd64", "kernel.json"), []byte(`{"version":"6.1.0-1-cloud-amd64"}`), 0o644)
			if tt.name == "no package lists" {
				k, err := EnsureKernel(t.Context(), dir)
				if err != nil || k.Version != "6.1.0-1-cloud-amd64" || k.Path != k.BzImage {
					t.Fatalf("offline with cache: %+v, %v", k, err)
				}
			}
		})
	}
}

// debugfs runs one debugfs request on the ext4 image img and returns what
// it printed (its banner goes to stderr and is dropped).
func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).Output()
	if err != nil {
		t.Fatalf("debugfs %s: %v", request, err)
	}
	return string(out)
}
