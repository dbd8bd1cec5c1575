package images

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/minionsdev/minions/internal/errs"
	"golang.org/x/sys/unix"
)

// KernelMetaPackage is the Debian meta package whose dependency names the
// current cloud kernel.
const KernelMetaPackage = "linux-image-cloud-amd64"

// Kernel is an installed guest kernel.
type Kernel struct {
	Version    string `json:"version"` // uname -r, e.g. "6.1.0-56-cloud-amd64"
	Path       string `json:"-"`       // what to boot: Vmlinux if present, else BzImage
	BzImage    string `json:"-"`       // the compressed kernel as Debian ships it
	Vmlinux    string `json:"-"`       // uncompressed ELF with a PVH entry, "" if none
	ModulesDir string `json:"-"`       // holds modules.dep and kernel/...
	Package    string `json:"package"` // the Debian package it came from
}

var abiRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`Depends:\s*linux-image-(\S+-cloud-amd64)\b`) })

// parseKernelDepends extracts the kernel release from the output of
// "apt-cache depends linux-image-cloud-amd64".
func parseKernelDepends(out []byte) (string, bool) {
	m := abiRe().FindSubmatch(out)
	if m == nil {
		return "", false
	}
	return string(m[1]), true
}

// EnsureKernel installs Debian's current cloud kernel under dir/<version>/
// and returns it. It runs no maintainer scripts and touches nothing outside
// dir: the package is fetched with "apt-get download" and unpacked with
// "dpkg-deb -x". The bzImage is kept, an uncompressed vmlinux with a PVH
// entry is extracted next to it when possible (it boots about 0.2 s faster),
// and modules.dep is generated for the modules tree.
//
// It is idempotent: an installed version is returned as is. When apt cannot
// say which version is current (offline, no package lists) the newest
// installed kernel is returned; with none installed the error is
// Unavailable and says what apt reported. Concurrent calls, even from
// different processes, are safe: each installs into a private directory
// and the first rename wins.
func EnsureKernel(ctx context.Context, dir string) (Kernel, error) {
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return Kernel{}, fmt.Errorf("ensure kernel: %w", err)
	}
	out, aptErr := run(ctx, "", "apt-cache", "depends", KernelMetaPackage)
	kver, ok := parseKernelDepends(out)
	if aptErr != nil || !ok {
		if k, err := NewestKernel(dir); err == nil {
			return k, nil
		}
		if aptErr == nil {
			aptErr = errors.New("no kernel dependency listed")
		}
		return Kernel{}, errs.New(errs.Unavailable, "ensure kernel: apt cannot resolve %s (run apt-get update, check the Debian mirror): %v", KernelMetaPackage, aptErr)
	}
	if k, err := LoadKernel(dir, kver); err == nil {
		return k, nil
	}
	if err := installKernel(ctx, dir, kver); err != nil {
		return Kernel{}, fmt.Errorf("ensure kernel %s: %w", kver, err)
	}
	return LoadKernel(dir, kver)
}

func installKernel(ctx context.Context, dir, kver string) error {
	pkg := "linux-image-" + kver
	td, err := newTempDir(dir, ".tmp-"+kver+"-")
	if err != nil {
		return err
	}
	defer td.Remove()
	tmp := td.Path
	dl := filepath.Join(tmp, "dl")
	if err := os.Mkdir(dl, 0o755); err != nil {
		return err
	}
	if _, err := run(ctx, dl, "apt-get", "download", "-q", pkg); err != nil {
		return errs.New(errs.Unavailable, "apt-get download %s: %w", pkg, err)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s produced %d .deb files", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if _, err := run(ctx, "", "dpkg-deb", "-x", debs[0], root); err != nil {
		return err
	}
	stage := filepath.Join(tmp, kver)
	if err := os.Mkdir(stage, DirMode); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(root, "boot", "vmlinuz-"+kver), filepath.Join(stage, "vmlinuz")); err != nil {
		return fmt.Errorf("package %s has no /boot/vmlinuz-%s: %w", pkg, kver, err)
	}
	_ = os.Rename(filepath.Join(root, "boot", "config-"+kver), filepath.Join(stage, "config"))
	if err := os.Rename(filepath.Join(root, "lib", "modules", kver), filepath.Join(stage, "modules")); err != nil {
		return fmt.Errorf("package %s has no /lib/modules/%s: %w", pkg, kver, err)
	}
	if _, err := os.Stat(filepath.Join(stage, "modules", "modules.dep")); err != nil {
		if err := GenerateModulesDep(filepath.Join(stage, "modules")); err != nil {
			return err
		}
	}
	bz, err := os.ReadFile(filepath.Join(stage, "vmlinuz"))
	if err != nil {
		return err
	}
	if vm, err := ExtractVmlinux(bz); err == nil && HasPVHEntry(vm) {
		if err := os.WriteFile(filepath.Join(stage, "vmlinux"), vm, 0o644); err != nil {
			return err
		}
	}
	meta, _ := json.MarshalIndent(Kernel{Version: kver, Package: pkg}, "", "  ")
	if err := os.WriteFile(filepath.Join(stage, "kernel.json"), meta, 0o644); err != nil {
		return err
	}
	err = unix.Renameat2(unix.AT_FDCWD, stage, unix.AT_FDCWD, filepath.Join(dir, kver), unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
		return nil // another installer won the race
	}
	return err
}

// LoadKernel returns the kernel version installed under dir by
// EnsureKernel, without asking apt (NotFound if it is not installed).
func LoadKernel(dir, version string) (Kernel, error) {
	kd := filepath.Join(dir, version)
	b, err := os.ReadFile(filepath.Join(kd, "kernel.json"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Kernel{}, errs.New(errs.NotFound, "kernel %s is not installed in %s", version, dir)
		}
		return Kernel{}, fmt.Errorf("load kernel %s: %w", version, err)
	}
	var k Kernel
	if err := json.Unmarshal(b, &k); err != nil {
		return Kernel{}, fmt.Errorf("load kernel %s: %w", version, err)
	}
	k.BzImage = filepath.Join(kd, "vmlinuz")
	k.ModulesDir = filepath.Join(kd, "modules")
	k.Path = k.BzImage
	if _, err := os.Stat(filepath.Join(kd, "vmlinux")); err == nil {
		k.Vmlinux = filepath.Join(kd, "vmlinux")
		k.Path = k.Vmlinux
	}
	return k, nil
}

// NewestKernel returns the newest kernel installed under dir (by version
// order), NotFound if there is none.
func NewestKernel(dir string) (Kernel, error) {
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Kernel{}, fmt.Errorf("list kernels: %w", err)
	}
	var vers []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			if _, err := os.Stat(filepath.Join(dir, e.Name(), "kernel.json")); err == nil {
				vers = append(vers, e.Name())
			}
		}
	}
	if len(vers) == 0 {
		return Kernel{}, errs.New(errs.NotFound, "no kernel installed in %s", dir)
	}
	sort.Slice(vers, func(i, j int) bool { return versionLess(vers[i], vers[j]) })
	return LoadKernel(dir, vers[len(vers)-1])
}

// versionLess compares dotted/dashed versions numerically where both parts
// are numbers ("6.1.0-9" < "6.1.0-56").
func versionLess(a, b string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' })
	}
	as, bs := split(a), split(b)
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] == bs[i] {
			continue
		}
		var x, y int
		_, e1 := fmt.Sscanf(as[i], "%d", &x)
		_, e2 := fmt.Sscanf(bs[i], "%d", &y)
		if e1 == nil && e2 == nil && x != y {
			return x < y
		}
		return as[i] < bs[i]
	}
	return len(as) < len(bs)
}

// run runs a command and returns its standard output; standard error is
// part of the error.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	if _, err := exec.LookPath(name); err != nil {
		return nil, errs.New(errs.Unavailable, "%s is not installed", name)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", name, ctx.Err())
		}
		msg := strings.TrimSpace(stderr.String())
		if msg == "" { // some tools (debootstrap) report on stdout
			msg = strings.TrimSpace(stdout.String())
		}
		if len(msg) > 2000 {
			msg = "..." + msg[len(msg)-2000:]
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}
