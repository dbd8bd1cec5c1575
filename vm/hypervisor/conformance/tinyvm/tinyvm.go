package tinyvm

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ReadyMarker is printed by the fixture's init once per boot.
const ReadyMarker = "minions-tinyvm: ready"

// TickPrefix starts the line the init prints every half second after the
// marker, followed by a counter that starts at 0 on every boot.
const TickPrefix = "minions-tinyvm: tick "

// Cmdline is a kernel command line for the fixture; extra parameters are
// appended.
func Cmdline(extra ...string) string {
	return strings.Join(append([]string{"console=ttyS0", "quiet", "panic=-1"}, extra...), " ")
}

//go:embed init.go.txt
var initSource []byte

// KernelPackage is the Debian package that names the current cloud kernel.
const KernelPackage = "linux-image-cloud-amd64"

// Kernel returns the path of a Debian cloud kernel (bzImage) in cacheDir,
// downloading it with apt-get download and extracting it with dpkg-deb when
// it is not there yet. It needs apt-get, apt-cache and dpkg-deb, and network
// access to the Debian archive the first time.
func Kernel(ctx context.Context, cacheDir string) (string, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("tinyvm kernel: %w", err)
	}
	if m, _ := filepath.Glob(filepath.Join(cacheDir, "vmlinuz-*-cloud-amd64")); len(m) > 0 {
		return m[len(m)-1], nil
	}
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", KernelPackage).Output()
	if err != nil {
		return "", fmt.Errorf("tinyvm kernel: apt-cache depends %s: %w", KernelPackage, err)
	}
	pkg := regexp.MustCompile(`Depends: (linux-image-[0-9][^\s]*-cloud-amd64)`).FindSubmatch(out)
	if pkg == nil {
		return "", fmt.Errorf("tinyvm kernel: no kernel package in %q", out)
	}
	tmp, err := os.MkdirTemp(cacheDir, "download-")
	if err != nil {
		return "", fmt.Errorf("tinyvm kernel: %w", err)
	}
	defer os.RemoveAll(tmp)
	dl := exec.CommandContext(ctx, "apt-get", "download", string(pkg[1]))
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return "", fmt.Errorf("tinyvm kernel: apt-get download %s: %w: %s", pkg[1], err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("tinyvm kernel: want one .deb, got %v", debs)
	}
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], filepath.Join(tmp, "x")).CombinedOutput(); err != nil {
		return "", fmt.Errorf("tinyvm kernel: dpkg-deb -x: %w: %s", err, out)
	}
	k, _ := filepath.Glob(filepath.Join(tmp, "x", "boot", "vmlinuz-*"))
	if len(k) != 1 {
		return "", fmt.Errorf("tinyvm kernel: want one vmlinuz in the package, got %v", k)
	}
	dst := filepath.Join(cacheDir, filepath.Base(k[0]))
	if err := os.Rename(k[0], dst); err != nil {
		return "", fmt.Errorf("tinyvm kernel: %w", err)
	}
	return dst, nil
}

// Initramfs builds the fixture's init (go build, CGO_ENABLED=0) and writes
// a newc cpio archive with it as /init to dir/initramfs.cpio.
func Initramfs(ctx context.Context, dir string) (string, error) {
	src := filepath.Join(dir, "initsrc")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", fmt.Errorf("tinyvm initramfs: %w", err)
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), initSource, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module tinyinit\n\ngo 1.22\n"), 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "init")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("tinyvm initramfs: go build init: %w: %s", err, out)
	}
	initBin, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	var w cpioWriter
	w.dir("dev")
	w.node("dev/console", 0o020600, 5, 1) // character device 5:1
	w.dir("proc")
	w.file("init", 0o100755, initBin)
	w.trailer()
	out := filepath.Join(dir, "initramfs.cpio")
	if err := os.WriteFile(out, w.buf.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("tinyvm initramfs: %w", err)
	}
	return out, nil
}

// cpioWriter writes the "newc" format the kernel unpacks.
type cpioWriter struct {
	buf bytes.Buffer
	ino uint32
}

func (w *cpioWriter) dir(name string) { w.entry(name, 0o040755, 0, 0, nil) }
func (w *cpioWriter) node(name string, mode, major, minor uint32) {
	w.entry(name, mode, major, minor, nil)
}
func (w *cpioWriter) file(name string, mode uint32, data []byte) { w.entry(name, mode, 0, 0, data) }
func (w *cpioWriter) trailer()                                   { w.entry("TRAILER!!!", 0, 0, 0, nil) }

func (w *cpioWriter) entry(name string, mode, rmajor, rminor uint32, data []byte) {
	w.ino++
	nlink := uint32(1)
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	fields := []uint32{w.ino, mode, 0, 0, nlink, 0, uint32(len(data)), 0, 0, rmajor, rminor, uint32(len(name) + 1), 0}
	w.buf.WriteString("070701")
	for _, f := range fields {
		fmt.Fprintf(&w.buf, "%08x", f)
	}
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
	w.buf.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}

// Count returns how many times marker occurs in the file at path (0 when
// the file does not exist).
func Count(path, marker string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte(marker))
}

// WaitFor polls the console log at path until marker has appeared at least
// n times, or ctx ends.
func WaitFor(ctx context.Context, path, marker string, n int) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if c := Count(path, marker); c >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %q x%d in %s (seen %d): %w", marker, n, path, Count(path, marker), ctx.Err())
		case <-t.C:
		}
	}
}

// LastTick returns the highest tick counter in the console log after the
// last ready marker, or -1.
func LastTick(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	if i := bytes.LastIndex(b, []byte(ReadyMarker)); i >= 0 {
		b = b[i:]
	}
	last := -1
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), TickPrefix); ok {
			if n, err := strconv.Atoi(rest); err == nil && n > last {
				last = n
			}
		}
	}
	return last
}
