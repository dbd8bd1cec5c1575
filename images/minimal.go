package images

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// BusyboxPath is the static busybox the minimal image is made of (Debian
// package busybox-static).
var BusyboxPath = "/bin/busybox"

// checkStaticBusybox fails unless path is a statically linked busybox.
func checkStaticBusybox(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return errs.New(errs.FailedPrecondition, "minimal image needs a static busybox at %s (apt-get install busybox-static): %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errs.New(errs.FailedPrecondition, "%s is dynamically linked; the minimal image needs busybox-static (apt-get install busybox-static)", path)
		}
	}
	return nil
}

// minimalFiles are the configuration files of the minimal image.
func minimalFiles() map[string]string {
	return map[string]string{
		"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":       "root:x:0:\nnogroup:x:65534:\n",
		"etc/shadow":      "root:!:19000:0:99999:7:::\nnobody:!:19000:0:99999:7:::\n", // root locked: keys only
		"etc/hostname":    "minion\n",
		"etc/hosts":       "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
		"etc/resolv.conf": "# rewritten by minions-agent from minions.dns\nnameserver 1.1.1.1\n",
		"etc/profile": `export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PS1='\u@\h:\w\$ '
export HOME=${HOME:-/root}
umask 022
`,
		"etc/os-release": "NAME=\"Minions minimal\"\nID=minions-minimal\nID_LIKE=busybox\nPRETTY_NAME=\"Minions minimal (busybox)\"\n",
		"etc/fstab":      "/dev/vda / ext4 rw,relatime 0 1\n",
		"etc/shells":     "/bin/sh\n/bin/ash\n",
	}
}

func (c *Catalog) buildMinimal(ctx context.Context, o BuildOptions, progress func(string)) (Image, error) {
	started := time.Now()
	if o.SizeMiB == 0 {
		o.SizeMiB = DefaultMinimalSizeMiB
	}
	if o.SizeMiB < 16 {
		return Image{}, errs.New(errs.InvalidArgument, "build minimal image: size %d MiB is below 16 MiB", o.SizeMiB)
	}
	progress("check busybox")
	if err := checkStaticBusybox(BusyboxPath); err != nil {
		return Image{}, err
	}
	sum, err := fileSHA256(o.AgentBinary)
	if err != nil {
		return Image{}, fmt.Errorf("build minimal image: agent: %w", err)
	}
	td, err := c.buildDir(OSMinimal)
	if err != nil {
		return Image{}, err
	}
	defer td.Remove()
	bd := td.Path

	progress("stage root filesystem")
	root := filepath.Join(bd, "root")
	if err := stageMinimal(ctx, root, o.AgentBinary, progress); err != nil {
		return Image{}, fmt.Errorf("build minimal image: %w", err)
	}
	out := filepath.Join(bd, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Image{}, err
	}
	progress("mkfs.ext4")
	if err := mkfsFromDir(ctx, root, filepath.Join(out, "rootfs.ext4"), int64(o.SizeMiB)<<20, "minions-root"); err != nil {
		return Image{}, fmt.Errorf("build minimal image: %w", err)
	}
	progress("publish")
	kver := ""
	if o.Kernel != nil {
		kver = o.Kernel.Version
	}
	return c.publish(out, Image{OS: OSMinimal, AgentSHA256: sum, KernelVersion: kver}, started)
}

// stageMinimal lays out the minimal root filesystem in root.
func stageMinimal(ctx context.Context, root, agent string, progress func(string)) error {
	dirs := map[string]os.FileMode{
		"bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "usr/local/bin": 0o755,
		"etc/minions": 0o755, "root": 0o700, "root/.ssh": 0o700, "tmp": os.ModeSticky | 0o777, "dev": 0o755,
		"proc": 0o555, "sys": 0o555, "run": 0o755, "mnt": 0o755, "home": 0o755,
		"var/log": 0o755, "var/tmp": os.ModeSticky | 0o777, "lib/modules": 0o755,
	}
	for d, m := range dirs {
		p := filepath.Join(root, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(p, m); err != nil {
			return err
		}
	}
	if err := installBusybox(ctx, root, progress); err != nil {
		return err
	}
	for name, content := range minimalFiles() {
		mode := os.FileMode(0o644)
		if name == "etc/shadow" {
			mode = 0o640
		}
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), mode); err != nil {
			return err
		}
		if err := os.Chmod(filepath.Join(root, name), mode); err != nil {
			return err
		}
	}
	if err := copyFile(agent, filepath.Join(root, AgentPath), 0o755); err != nil {
		return err
	}
	return os.Symlink(AgentPath, filepath.Join(root, "sbin/init"))
}

// mkfsFromDir makes a sparse ext4 image of size bytes at img holding the
// tree at dir (owners and modes as on disk).
func mkfsFromDir(ctx context.Context, dir, img string, size int64, label string) error {
	f, err := os.OpenFile(img, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", label, "-m", "1",
		"-E", "lazy_itable_init=1,lazy_journal_init=1", "-d", dir, img)
	cmd.Stderr = &stderr
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return errs.New(errs.FailedPrecondition, "mkfs.ext4 not found (apt-get install e2fsprogs)")
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("mkfs.ext4 -d (%s bytes): %w: %s", strconv.FormatInt(size, 10), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
