package images

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"golang.org/x/sys/unix"
)

// Fedora defaults.
const (
	DefaultFedoraMirror  = "https://dl.fedoraproject.org/pub/fedora/linux"
	DefaultFedoraRelease = "41"
)

// FedoraGPGKeys are where the Fedora release's package signing key is
// looked for on the host (first present wins) when dnf installs from
// scratch: Fedora's own location, then the distribution-gpg-keys package's.
var FedoraGPGKeys = []string{
	"/etc/pki/rpm-gpg/RPM-GPG-KEY-fedora-" + DefaultFedoraRelease + "-x86_64",
	"/usr/share/distribution-gpg-keys/fedora/RPM-GPG-KEY-fedora-" + DefaultFedoraRelease + "-primary",
}

// FedoraPackages are what the Fedora image holds besides the base system:
// the same set as DebianPackages under Fedora's names (gcc, gcc-c++, make
// and glibc-devel stand in for build-essential).
var FedoraPackages = []string{
	"fedora-release", "setup", "filesystem", "bash", "coreutils", "dnf", "rpm",
	"systemd", "systemd-udev", "dbus-broker", "kmod", "util-linux", "passwd", "shadow-utils",
	"openssh-server", "openssh-clients", "iproute", "iputils", "curl", "ca-certificates",
	"sudo", "git", "vim-enhanced", "htop", "less", "procps-ng",
	"gcc", "gcc-c++", "make", "glibc-devel",
	"python3", "rsync", "jq", "tmux", "unzip", "bind-utils",
}

// fedoraFiles are written into the Fedora image. sshd is sshd.service,
// Fedora's own snippet 50-redhat.conf would win over a later-sorting name
// (sshd keeps the first value it reads), and RSA host key generation
// (sshd-keygen@rsa, tens of seconds under TCG) is masked.
func fedoraFiles() map[string]string {
	files := map[string]string{}
	for k, v := range debianFiles {
		switch k {
		case "etc/ssh/sshd_config.d/minions.conf":
			k = "etc/ssh/sshd_config.d/00-minions.conf"
		case "etc/systemd/system/ssh.service.d/minions-hostkeys.conf":
			k = "etc/systemd/system/sshd.service.d/minions-hostkeys.conf"
		case "etc/systemd/system/minions-agent.service":
			v = strings.Replace(agentUnit, "ssh.service", "sshd.service", 1)
		}
		files[k] = v
	}
	// The Debian kernel boots without SELinux; say so to userspace too.
	files["etc/selinux/config"] = "# Minions: the guest kernel runs without SELinux.\nSELINUX=disabled\nSELINUXTYPE=targeted\n"
	return files
}

var fedoraLinks = map[string]string{
	"etc/systemd/system/sysinit.target.wants/minions-agent.service":    "/etc/systemd/system/minions-agent.service",
	"etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service": "/usr/lib/systemd/system/serial-getty@.service",
	"etc/systemd/system/multi-user.target.wants/sshd.service":          "/usr/lib/systemd/system/sshd.service",
	"etc/systemd/system/sshd-keygen@.service":                          "/dev/null",
}

// fedoraRepoArgs are dnf options that use only mirror's Fedora release
// and updates repositories, signature-checked with key (a path as dnf
// sees it).
func fedoraRepoArgs(mirror, release, key string) []string {
	m := strings.TrimRight(mirror, "/")
	args := []string{"--disablerepo=*",
		"--repofrompath=minions-fedora," + m + "/releases/" + release + "/Everything/x86_64/os/",
		"--repofrompath=minions-updates," + m + "/updates/" + release + "/Everything/x86_64/",
		"--enablerepo=minions-fedora", "--enablerepo=minions-updates"}
	for _, r := range []string{"minions-fedora", "minions-updates"} {
		args = append(args, "--setopt="+r+".gpgcheck=1", "--setopt="+r+".gpgkey=file://"+key)
	}
	return args
}

// fedoraDnfArgs is the host dnf command line that installs pkgs into root.
func fedoraDnfArgs(root, mirror, release, key string, pkgs []string) []string {
	args := []string{"-y", "--installroot=" + root, "--releasever=" + release}
	args = append(args, fedoraRepoArgs(mirror, release, key)...)
	args = append(args, "--setopt=install_weak_deps=False", "--setopt=tsflags=nodocs", "install")
	return append(args, pkgs...)
}

// fedoraGPGKey returns the first of FedoraGPGKeys present on the host.
func fedoraGPGKey() (string, error) {
	for _, k := range FedoraGPGKeys {
		if _, err := os.Stat(k); err == nil {
			return k, nil
		}
	}
	return "", errs.New(errs.FailedPrecondition, "fedora %s package signing key not found (looked for %s): copy it from a Fedora system (package fedora-gpg-keys) "+
		"or use --rootfs-tarball; the build does not skip signature checks", DefaultFedoraRelease, strings.Join(FedoraGPGKeys, ", "))
}

// buildFedora builds Fedora either from scratch with the host's dnf
// (--installroot) or from a root filesystem tarball, then installs
// FedoraPackages with dnf (the tarball's own, else the host's).
func (c *Catalog) buildFedora(ctx context.Context, o BuildOptions, progress func(string)) (Image, error) {
	started := time.Now()
	const what = "build fedora image"
	if o.SizeMiB == 0 {
		o.SizeMiB = DefaultDebianSizeMiB
	}
	if o.SizeMiB < 1024 {
		return Image{}, errs.New(errs.InvalidArgument, "%s: size %d MiB is below 1024 MiB", what, o.SizeMiB)
	}
	mirrorSet := o.Mirror != ""
	if !mirrorSet {
		o.Mirror = DefaultFedoraMirror
	}
	if !strings.HasPrefix(o.Mirror, "http://") && !strings.HasPrefix(o.Mirror, "https://") && !strings.HasPrefix(o.Mirror, "file:/") {
		return Image{}, errs.New(errs.InvalidArgument, "%s: mirror %q is not an http(s) or file URL", what, o.Mirror)
	}
	if os.Geteuid() != 0 {
		return Image{}, errs.New(errs.PermissionDenied, "%s: needs root (chroot, mounts, file owners)", what)
	}
	_, dnfErr := exec.LookPath("dnf")
	hostDnf := dnfErr == nil
	var key string
	if o.RootfsTarball == "" {
		if !hostDnf {
			return Image{}, errs.New(errs.FailedPrecondition, "%s: fedora needs dnf (not installed; apt-get install dnf) or a Fedora root filesystem tarball via --rootfs-tarball FILE", what)
		}
		var err error
		if key, err = fedoraGPGKey(); err != nil {
			return Image{}, fmt.Errorf("%s: %w", what, err)
		}
	} else if _, err := os.Stat(o.RootfsTarball); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Image{}, errs.New(errs.NotFound, "%s: rootfs tarball %s does not exist", what, o.RootfsTarball)
		}
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	sum, err := fileSHA256(o.AgentBinary)
	if err != nil {
		return Image{}, fmt.Errorf("%s: agent: %w", what, err)
	}
	if o.RootfsTarball == "" || mirrorSet {
		progress("probe mirror")
		rel := "releases/" + DefaultFedoraRelease + "/Everything/x86_64/os/repodata/repomd.xml"
		if err := probeMirror(ctx, o.Mirror, rel, "<repomd", "fedora"); err != nil {
			return Image{}, fmt.Errorf("%s: %w", what, err)
		}
	}
	k, err := c.buildKernel(ctx, o, progress)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	td, err := c.buildDir(OSFedora)
	if err != nil {
		return Image{}, err
	}
	defer td.Remove()
	root := filepath.Join(td.Path, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return Image{}, err
	}

	if o.RootfsTarball == "" {
		progress("dnf --installroot (minutes)")
		if _, err := run(ctx, "", "dnf", fedoraDnfArgs(root, o.Mirror, DefaultFedoraRelease, key, FedoraPackages)...); err != nil {
			unmountUnder(root)
			return Image{}, dnfError(what, o.Mirror, err)
		}
	} else {
		progress("unpack " + filepath.Base(o.RootfsTarball))
		if err := unpackFedoraTarball(ctx, o.RootfsTarball, root); err != nil {
			return Image{}, fmt.Errorf("%s: %w", what, err)
		}
		progress("dnf install (minutes)")
		if err := installInTree(ctx, root, o.Mirror, mirrorSet, hostDnf); err != nil {
			return Image{}, fmt.Errorf("%s: %w", what, err)
		}
	}
	unmountUnder(root)

	progress("configure")
	if err := configureTree(ctx, root, o.AgentBinary, *k, fedoraFiles(), fedoraLinks); err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	for _, d := range []string{"var/cache/dnf", "var/cache/libdnf5", "var/lib/dnf/repos"} {
		os.RemoveAll(filepath.Join(root, d))
	}
	out := filepath.Join(td.Path, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Image{}, err
	}
	progress("mkfs.ext4")
	if err := mkfsFromDir(ctx, root, filepath.Join(out, "rootfs.ext4"), int64(o.SizeMiB)<<20, "minions-root"); err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	progress("publish")
	return c.publish(out, Image{OS: OSFedora, AgentSHA256: sum, KernelVersion: k.Version}, started)
}

// dnfError classifies a failed dnf run: a missing tool keeps its class,
// anything else is Unavailable (almost always the network or the mirror).
func dnfError(what, mirror string, err error) error {
	if errs.ClassOf(err) != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return errs.New(errs.Unavailable, "%s: dnf from %s: %w", what, mirror, err)
}

// osRelease reads ID and VERSION_ID from the os-release file of root.
func osRelease(root string) (id, version string, err error) {
	var f *os.File
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		if f, err = os.Open(filepath.Join(root, p)); err == nil {
			break
		}
	}
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "ID":
			id = v
		case "VERSION_ID":
			version = v
		}
	}
	return id, version, sc.Err()
}

// unpackFedoraTarball extracts a Fedora root filesystem tar (GNU tar
// detects the compression) into root and checks it is Fedora.
func unpackFedoraTarball(ctx context.Context, tarball, root string) error {
	if _, err := run(ctx, "", "tar", "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*",
		"-f", tarball, "-C", root); err != nil {
		return errs.New(errs.InvalidArgument, "unpack %s: %w", tarball, err)
	}
	id, _, err := osRelease(root)
	if err != nil {
		for _, marker := range []string{"oci-layout", "index.json", "manifest.json"} {
			if _, serr := os.Stat(filepath.Join(root, marker)); serr == nil {
				return errs.New(errs.InvalidArgument, "%s is a container image archive (has %s), not a root filesystem tar: "+
					"pass its layer tar (the large file under blobs/), or the output of `podman export`", tarball, marker)
			}
		}
		return errs.New(errs.InvalidArgument, "%s is not a root filesystem tar: no etc/os-release in it", tarball)
	}
	if id != "fedora" {
		return errs.New(errs.InvalidArgument, "%s holds %q, not Fedora (os-release ID)", tarball, id)
	}
	return nil
}

// installInTree installs FedoraPackages into the unpacked tree root: with
// the tree's own dnf under chroot when it has one, else with the host's
// dnf --installroot. Repositories are the tree's own unless mirrorSet.
func installInTree(ctx context.Context, root, mirror string, mirrorSet, hostDnf bool) error {
	_, release, _ := osRelease(root)
	if release == "" {
		release = DefaultFedoraRelease
	}
	var chrootDnf string
	for _, p := range []string{"/usr/bin/dnf", "/usr/bin/dnf5"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			chrootDnf = p
			break
		}
	}
	inner := "/etc/pki/rpm-gpg/RPM-GPG-KEY-fedora-" + release + "-x86_64"
	var repo []string
	if mirrorSet {
		repo = fedoraRepoArgs(mirror, release, inner)
	}
	tail := append([]string{"--setopt=install_weak_deps=False", "--setopt=tsflags=nodocs", "install"}, FedoraPackages...)
	switch {
	case chrootDnf != "":
		if err := chrootMounts(root); err != nil {
			return err
		}
		defer unmountUnder(root)
		if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
			os.Remove(filepath.Join(root, "etc/resolv.conf"))
			os.WriteFile(filepath.Join(root, "etc/resolv.conf"), b, 0o644)
		}
		args := append([]string{root, chrootDnf, "-y", "--releasever=" + release}, repo...)
		if _, err := run(ctx, "", "chroot", append(args, tail...)...); err != nil {
			return dnfError("dnf in the tarball's tree", mirror, err)
		}
		return nil
	case hostDnf:
		if mirrorSet {
			// The host's dnf reads the key from the host.
			repo = fedoraRepoArgs(mirror, release, filepath.Join(root, inner))
		}
		args := append([]string{"-y", "--installroot=" + root, "--releasever=" + release}, repo...)
		if _, err := run(ctx, "", "dnf", append(args, tail...)...); err != nil {
			return dnfError("host dnf into the tarball's tree", mirror, err)
		}
		return nil
	}
	return errs.New(errs.FailedPrecondition, "the tarball has no dnf (/usr/bin/dnf or dnf5) and the host has none (apt-get install dnf): cannot install the image's packages")
}

// chrootMounts mounts /proc, /sys and /dev in root for package scripts;
// unmountUnder undoes it.
func chrootMounts(root string) error {
	for _, m := range []struct {
		src, dir, fstype string
		flags            uintptr
	}{
		{"proc", "proc", "proc", 0},
		{"sysfs", "sys", "sysfs", 0},
		{"/dev", "dev", "", unix.MS_BIND | unix.MS_REC},
	} {
		p := filepath.Join(root, m.dir)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, p, m.fstype, m.flags, ""); err != nil {
			unmountUnder(root)
			return fmt.Errorf("mount %s in %s: %w", m.dir, root, err)
		}
	}
	return nil
}
