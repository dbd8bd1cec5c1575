package images

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"golang.org/x/sys/unix"
)

// DebianPackages are installed on top of debootstrap's minbase variant
// (debootstrap installs dependencies, not recommendations). DevTools are
// among them. The debootstrap cache key covers this list: changing it
// rebuilds the tree.
var DebianPackages = append([]string{
	"systemd", "systemd-sysv", "dbus", "udev", "kmod",
	"openssh-server", "iproute2", "iputils-ping", "netbase", "curl", "ca-certificates",
	"sudo", "git", "vim", "htop", "less", "procps", "build-essential",
}, debianDevTools...)

// debianDevTools are the everyday tools the Debian and Ubuntu images
// promise besides the compiler: python3 (python3 -m http.server), rsync,
// jq, tmux, unzip and dig (bind9-dnsutils; dnsutils is only its
// transitional name).
var debianDevTools = []string{"python3", "rsync", "jq", "tmux", "unzip", "bind9-dnsutils"}

// agentUnit starts the agent before everything else systemd starts.
const agentUnit = `[Unit]
Description=Minions guest agent
Documentation=https://github.com/minionsdev/minions
DefaultDependencies=no
Before=sysinit.target network-pre.target systemd-networkd.service ssh.service
Wants=network-pre.target

[Service]
Type=simple
ExecStart=/usr/sbin/minions-agent
Restart=always
RestartSec=500ms

[Install]
WantedBy=sysinit.target
`

// debianFiles are written into the Debian image (path -> content).
var debianFiles = map[string]string{
	"etc/hostname": "minion\n",
	"etc/hosts":    "127.0.0.1\tlocalhost\n127.0.1.1\tminion\n::1\tlocalhost ip6-localhost ip6-loopback\n",
	"etc/fstab":    "/dev/vda / ext4 rw,relatime,errors=remount-ro 0 1\n",
	"etc/ssh/sshd_config.d/minions.conf": "# Minions: key-only root login.\nPermitRootLogin prohibit-password\n" +
		"PasswordAuthentication no\nKbdInteractiveAuthentication no\n" +
		"HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n",
	// Host keys are per VM, made on first boot. Only ed25519 and ECDSA:
	// an RSA key takes tens of seconds to generate under TCG.
	// sshd checks its configuration itself when it starts; a separate
	// `sshd -t` first costs about half a second under TCG.
	"etc/systemd/system/ssh.service.d/minions-hostkeys.conf": "[Service]\nExecStartPre=\n" +
		"ExecStartPre=/bin/sh /usr/lib/minions/ssh-hostkeys.sh\n",
	// The agent makes them when it starts (before sshd); this is the
	// fallback should it not have.
	"usr/lib/minions/ssh-hostkeys.sh": "#!/bin/sh\n# Make the VM's own SSH host keys on first boot.\nset -e\n" +
		"for t in ed25519 ecdsa; do\n\tf=/etc/ssh/ssh_host_${t}_key\n\ttest -s \"$f\" || ssh-keygen -q -t \"$t\" -N '' -f \"$f\"\ndone\n",
	// The serial console (reachable only from the host) logs root in.
	"etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf": "[Service]\nExecStart=\n" +
		"ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM\n",
	"etc/systemd/system/minions-agent.service": agentUnit,
	"etc/resolv.conf":                          "# rewritten by minions-agent from minions.dns\nnameserver 1.1.1.1\n",
	"etc/machine-id":                           "", // empty: set from the VM ID by the agent, else by systemd
	// A clone of a warm template wakes with the template's clock, which
	// re-identification moves on by hours or days: systemd then starts
	// every calendar timer whose time passed meanwhile. Those without a
	// random delay of their own (dpkg's daily database backup, at
	// midnight) would all run in the clone's first seconds.
	"etc/systemd/system/dpkg-db-backup.timer.d/minions.conf": "[Timer]\nRandomizedDelaySec=6h\n",
}

// debianLinks enable units the way systemctl enable would, and mask
// (link to /dev/null) what a micro-VM does not need at boot: the LVM
// scrubber (no LVM), modules for hardware it does not have (DRM, EFI,
// device-mapper; they load on demand if ever used) and generators.
var debianLinks = map[string]string{
	"etc/systemd/system/e2scrub_reap.service":        "/dev/null",
	"etc/systemd/system/e2scrub_all.timer":           "/dev/null",
	"etc/systemd/system/modprobe@drm.service":        "/dev/null",
	"etc/systemd/system/modprobe@efi_pstore.service": "/dev/null",
	"etc/systemd/system/modprobe@dm_mod.service":     "/dev/null",
	// Generators for what a micro-VM has not got (encrypted, integrity
	// or verity volumes, GPT auto-discovery, hibernation, offline
	// updates, debug shells, systemd.run=): each is a process systemd
	// waits for before it starts any unit, about 2 s together under TCG.
	"etc/systemd/system-generators/systemd-cryptsetup-generator":       "/dev/null",
	"etc/systemd/system-generators/systemd-gpt-auto-generator":         "/dev/null",
	"etc/systemd/system-generators/systemd-hibernate-resume-generator": "/dev/null",
	"etc/systemd/system-generators/systemd-integritysetup-generator":   "/dev/null",
	"etc/systemd/system-generators/systemd-veritysetup-generator":      "/dev/null",
	"etc/systemd/system-generators/systemd-system-update-generator":    "/dev/null",
	"etc/systemd/system-generators/systemd-debug-generator":            "/dev/null",
	"etc/systemd/system-generators/systemd-run-generator":              "/dev/null",
	"etc/systemd/system/sysinit.target.wants/minions-agent.service":    "/etc/systemd/system/minions-agent.service",
	"etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service": "/lib/systemd/system/serial-getty@.service",
}

// debootstrapKey names a cached debootstrap tree. Debian's key has no
// extra fields (it must not change: existing caches stay valid); other
// distributions add theirs (components, keyring, script).
func debootstrapKey(mirror, suite string, pkgs []string, extra ...string) string {
	p := append([]string(nil), pkgs...)
	sort.Strings(p)
	s := "debootstrap-v1\n" + mirror + "\n" + suite + "\nminbase\n" + strings.Join(p, ",")
	for _, e := range extra {
		s += "\n" + e
	}
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

// debianDistro is Debian bookworm as debootstrap builds it.
func debianDistro() debootstrapDistro {
	return debootstrapDistro{
		OS: OSDebian, Suite: DefaultDebianSuite, DefaultMirror: DefaultDebianMirror,
		Components: []string{"main"}, Packages: DebianPackages,
		Files: debianFiles, Links: debianLinks,
	}
}

func (c *Catalog) buildDebian(ctx context.Context, o BuildOptions, progress func(string)) (Image, error) {
	return c.buildDebootstrap(ctx, debianDistro(), o, progress)
}

// buildDebootstrap builds an image of a debootstrap-able distribution d.
func (c *Catalog) buildDebootstrap(ctx context.Context, d debootstrapDistro, o BuildOptions, progress func(string)) (Image, error) {
	started := time.Now()
	what := "build " + d.OS + " image"
	if o.SizeMiB == 0 {
		o.SizeMiB = DefaultDebianSizeMiB
	}
	if o.SizeMiB < 1024 {
		return Image{}, errs.New(errs.InvalidArgument, "%s: size %d MiB is below 1024 MiB", what, o.SizeMiB)
	}
	if o.Mirror == "" {
		o.Mirror = d.DefaultMirror
	}
	if !strings.HasPrefix(o.Mirror, "http://") && !strings.HasPrefix(o.Mirror, "https://") && !strings.HasPrefix(o.Mirror, "file:/") {
		return Image{}, errs.New(errs.InvalidArgument, "%s: mirror %q is not an http(s) or file URL", what, o.Mirror)
	}
	if o.RootfsTarball != "" {
		return Image{}, errs.New(errs.InvalidArgument, "%s: --rootfs-tarball is for fedora only", what)
	}
	if os.Geteuid() != 0 {
		return Image{}, errs.New(errs.PermissionDenied, "%s: debootstrap needs root", what)
	}
	if err := d.resolve(); err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	sum, err := fileSHA256(o.AgentBinary)
	if err != nil {
		return Image{}, fmt.Errorf("%s: agent: %w", what, err)
	}
	if d.ProbeMirror {
		progress("probe mirror")
		if err := probeMirror(ctx, o.Mirror, "dists/"+d.Suite+"/Release", "Codename:", d.OS); err != nil {
			return Image{}, fmt.Errorf("%s: %w", what, err)
		}
	}
	k, err := c.buildKernel(ctx, o, progress)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}

	progress("debootstrap (cached per mirror and package list)")
	base, err := c.debootstrapCache(ctx, d, o.Mirror, progress)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	td, err := c.buildDir(d.OS)
	if err != nil {
		return Image{}, err
	}
	defer td.Remove()
	bd := td.Path

	progress("overlay base tree")
	root, err := writableCopy(ctx, base, bd)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	progress("configure")
	if err := configureTree(ctx, root, o.AgentBinary, *k, d.Files, d.Links); err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	cleanAptCaches(root)
	out := filepath.Join(bd, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Image{}, err
	}
	progress("mkfs.ext4")
	if err := mkfsFromDir(ctx, root, filepath.Join(out, "rootfs.ext4"), int64(o.SizeMiB)<<20, "minions-root"); err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	unmountUnder(root)
	progress("publish")
	return c.publish(out, Image{OS: d.OS, AgentSHA256: sum, KernelVersion: k.Version}, started)
}

// debootstrapCache returns a directory holding a finished debootstrap of
// d from mirror, running debootstrap only when no such tree is cached. The
// tree is never modified after it is published. d must be resolved.
func (c *Catalog) debootstrapCache(ctx context.Context, d debootstrapDistro, mirror string, progress func(string)) (string, error) {
	cacheDir := filepath.Join(c.Dir, "cache", "debootstrap")
	final := filepath.Join(cacheDir, d.cacheKey(mirror))
	if _, err := os.Stat(filepath.Join(final, "root", "etc", "os-release")); err == nil {
		progress("debootstrap: cached")
		return filepath.Join(final, "root"), nil
	}
	td, err := newTempDir(cacheDir, ".tmp-")
	if err != nil {
		return "", err
	}
	defer td.Remove()
	tmp := filepath.Join(td.Path, "out")
	root := filepath.Join(tmp, "root")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return "", err
	}
	start := time.Now()
	_, err = run(ctx, "", "debootstrap", d.debootstrapArgs(root, mirror)...)
	unmountUnder(root)
	if err != nil {
		if errs.ClassOf(err) != nil {
			return "", err
		}
		if log := lastLines(filepath.Join(root, "debootstrap", "debootstrap.log"), 5); log != "" {
			err = fmt.Errorf("%w (debootstrap.log: %s)", err, log)
		}
		return "", errs.New(errs.Unavailable, "debootstrap %s from %s: %w", d.Suite, mirror, err)
	}
	progress(fmt.Sprintf("debootstrap: done in %.0fs", time.Since(start).Seconds()))
	// Shrink: downloaded packages are not needed in the image.
	debs, _ := filepath.Glob(filepath.Join(root, "var/cache/apt/archives/*.deb"))
	for _, d := range debs {
		os.Remove(d)
	}
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	if err != nil && !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.ENOTEMPTY) {
		return "", err
	}
	return filepath.Join(final, "root"), nil
}

// lastLines returns the last n non-empty lines of the file p joined by
// "; ", or "" if it cannot be read.
func lastLines(p string, n int) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

// writableCopy returns a directory in work that shows the tree base and
// takes writes without changing base: an overlayfs mount (instant) where
// the kernel allows, else a copy (cp -a, reflinks where it can).
func writableCopy(ctx context.Context, base, work string) (string, error) {
	merged := filepath.Join(work, "root")
	upper, wdir := filepath.Join(work, "upper"), filepath.Join(work, "work")
	for _, d := range []string{merged, upper, wdir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", err
		}
	}
	opts := "lowerdir=" + base + ",upperdir=" + upper + ",workdir=" + wdir
	if !strings.ContainsAny(base+work, ",:") {
		if err := unix.Mount("overlay", merged, "overlay", 0, opts); err == nil {
			return merged, nil
		}
	}
	os.Remove(merged)
	if _, err := run(ctx, "", "cp", "-a", "--reflink=auto", base, merged); err != nil {
		return "", err
	}
	return merged, nil
}

// configureTree turns an installed distribution tree into a Minions image:
// files and links (systemd units enabled as systemctl enable would), no
// SSH host keys, the agent, and k's modules indexed by the tree's own
// depmod.
func configureTree(ctx context.Context, root, agent string, k Kernel, files, links map[string]string) error {
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		os.Remove(p) // resolv.conf may be a symlink
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	for link, target := range links {
		p := filepath.Join(root, link)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			return err
		}
	}
	// Per-VM machine ID (written from the VM's ID at boot): D-Bus's copy,
	// made when the image was built, would give every VM the same one.
	dbusID := filepath.Join(root, "var/lib/dbus/machine-id")
	if _, err := os.Lstat(dbusID); err == nil {
		if err := os.Remove(dbusID); err != nil {
			return err
		}
		if err := os.Symlink("/etc/machine-id", dbusID); err != nil {
			return err
		}
	}
	// Per-VM host keys: none in the image.
	keys, _ := filepath.Glob(filepath.Join(root, "etc/ssh/ssh_host_*"))
	for _, kf := range keys {
		os.Remove(kf)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/minions"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(root, "root/.ssh"), 0o700); err != nil {
		return err
	}
	if err := copyFile(agent, filepath.Join(root, AgentPath), 0o755); err != nil {
		return err
	}
	// The kernel's modules, indexed by the image's own depmod.
	mods := filepath.Join(root, "lib/modules", k.Version)
	os.RemoveAll(mods)
	if err := os.MkdirAll(filepath.Dir(mods), 0o755); err != nil {
		return err
	}
	if _, err := run(ctx, "", "cp", "-a", k.ModulesDir, mods); err != nil {
		return err
	}
	// Trees without /sbin/depmod (NixOS) are indexed by the host's.
	if _, err := os.Lstat(filepath.Join(root, "sbin/depmod")); err != nil {
		if _, err := run(ctx, "", "depmod", "-b", root, "-a", k.Version); err != nil {
			return fmt.Errorf("depmod for image: %w", err)
		}
		return nil
	}
	if _, err := run(ctx, "", "chroot", root, "/sbin/depmod", "-a", k.Version); err != nil {
		return fmt.Errorf("depmod in image: %w", err)
	}
	return nil
}

// cleanAptCaches empties apt's package lists and caches in root.
func cleanAptCaches(root string) {
	for _, d := range []string{"var/lib/apt/lists", "var/cache/apt"} {
		ents, _ := os.ReadDir(filepath.Join(root, d))
		for _, e := range ents {
			if e.Name() != "partial" && e.Name() != "archives" {
				os.RemoveAll(filepath.Join(root, d, e.Name()))
			}
		}
	}
}

// unmountUnder lazily unmounts every mount point at or below dir (deepest
// first); debootstrap can leave /proc and /sys mounted in its target when
// it fails.
func unmountUnder(dir string) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == abs || strings.HasPrefix(mp, abs+"/") {
			mps = append(mps, mp)
		}
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	for _, mp := range mps {
		unix.Unmount(mp, unix.MNT_DETACH)
	}
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
