package images

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// DefaultNixpkgs is the nixpkgs a NixOS build evaluates when neither
// BuildOptions.Mirror nor the host's nix channels name one: the channel
// tarball of a NixOS stable release.
const DefaultNixpkgs = "https://channels.nixos.org/nixos-25.05/nixexprs.tar.xz"

// DefaultNixOSSizeMiB is the default apparent size of a NixOS image: its
// closure with a compiler is larger than Debian's tree.
const DefaultNixOSSizeMiB = 8192

// nixosConfig is the NixOS configuration the image is built from. Minions
// boots its own kernel and initramfs (the agent's stage 1 mounts /dev/vda
// and executes /sbin/init), so the system has neither; the agent is an
// early unit, ready before sshd, and configures eth0, the hostname, DNS and
// root's keys itself.
const nixosConfig = `# Written by minions image build --os nixos.
{ config, lib, pkgs, ... }:
{
  imports = lib.optional (builtins.pathExists ./user.nix) ./user.nix;

  boot.kernel.enable = false;
  boot.initrd.enable = false;
  boot.loader.grub.enable = false;
  fileSystems."/" = { device = "/dev/vda"; fsType = "ext4"; };

  # The image carries its store paths' registration; load it on first boot.
  boot.postBootCommands = ''
    if [ -f /nix-path-registration ]; then
      ${config.nix.package.out}/bin/nix-store --load-db < /nix-path-registration
      ${config.nix.package.out}/bin/nix-env -p /nix/var/nix/profiles/system --set /run/current-system
      rm -f /nix-path-registration
    fi
  '';

  systemd.services.minions-agent = {
    description = "Minions guest agent";
    unitConfig.DefaultDependencies = false;
    before = [ "sysinit.target" "network-pre.target" "sshd.service" ];
    wants = [ "network-pre.target" ];
    wantedBy = [ "sysinit.target" ];
    serviceConfig = {
      Type = "simple";
      ExecStart = "/usr/sbin/minions-agent";
      Restart = "always";
      RestartSec = "500ms";
    };
  };

  # The agent sets eth0's address, the hostname and /etc/resolv.conf from
  # the kernel command line; the host filters traffic.
  networking.hostName = "";
  networking.useDHCP = false;
  networking.usePredictableInterfaceNames = false;
  networking.resolvconf.enable = false;
  networking.firewall.enable = false;

  services.openssh = {
    enable = true;
    settings.PermitRootLogin = "prohibit-password";
    settings.PasswordAuthentication = false;
    settings.KbdInteractiveAuthentication = false;
    # Per-VM host keys made on first boot; no RSA (tens of seconds under TCG).
    hostKeys = [
      { type = "ed25519"; path = "/etc/ssh/ssh_host_ed25519_key"; }
      { type = "ecdsa"; bits = 256; path = "/etc/ssh/ssh_host_ecdsa_key"; }
    ];
  };
  # The serial console (reachable only from the host) logs root in.
  services.getty.autologinUser = "root";
  security.sudo.enable = true;

  environment.systemPackages = with pkgs; [
    iproute2 iputils curl cacert sudo git vim htop less procps
    gcc gnumake binutils pkg-config
  ];
  documentation.enable = false;
  system.stateVersion = lib.trivial.release;
}
`

// buildNixOS builds a NixOS image: nix-build evaluates nixosConfig against
// nixpkgs (BuildOptions.Mirror: a nixpkgs directory or tarball URL; else
// the host's <nixpkgs> channel; else DefaultNixpkgs) to a system closure,
// which is copied into the tree with its registration, a system profile
// and /sbin/init pointing at the system's stage-2 init.
func (c *Catalog) buildNixOS(ctx context.Context, o BuildOptions, progress func(string)) (Image, error) {
	started := time.Now()
	const what = "build nixos image"
	if o.RootfsTarball != "" {
		return Image{}, errs.New(errs.InvalidArgument, "%s: --rootfs-tarball is for fedora only", what)
	}
	if o.SizeMiB == 0 {
		o.SizeMiB = DefaultNixOSSizeMiB
	}
	if o.NixOSModule != "" {
		if _, err := os.Stat(o.NixOSModule); err != nil {
			return Image{}, errs.New(errs.NotFound, "%s: nixos config %s: %v", what, o.NixOSModule, errors.Unwrap(err))
		}
	}
	if o.SizeMiB < 1024 {
		return Image{}, errs.New(errs.InvalidArgument, "%s: size %d MiB is below 1024 MiB", what, o.SizeMiB)
	}
	progress("check nix")
	var missing []string
	for _, tool := range []string{"nix-build", "nix-store", "nix-instantiate"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return Image{}, errs.New(errs.FailedPrecondition, "%s: nixos needs nix (%s not found; apt-get install nix-bin nix-setup-systemd)",
			what, strings.Join(missing, ", "))
	}
	if os.Geteuid() != 0 {
		return Image{}, errs.New(errs.PermissionDenied, "%s: needs root (file owners in the image)", what)
	}
	nixpkgs, err := resolveNixpkgs(ctx, o.Mirror)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	sum, err := fileSHA256(o.AgentBinary)
	if err != nil {
		return Image{}, fmt.Errorf("%s: agent: %w", what, err)
	}
	k, err := c.buildKernel(ctx, o, progress)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	td, err := c.buildDir(OSNixOS)
	if err != nil {
		return Image{}, err
	}
	defer td.Remove()
	cfg := filepath.Join(td.Path, "configuration.nix")
	if err := os.WriteFile(cfg, []byte(nixosConfig), 0o644); err != nil {
		return Image{}, err
	}
	if o.NixOSModule != "" {
		user := filepath.Join(td.Path, "user.nix")
		if err := copyFile(o.NixOSModule, user, 0o644); err != nil {
			return Image{}, fmt.Errorf("%s: %w", what, err)
		}
		if _, err := run(ctx, "", "nix-instantiate", "--parse", user); err != nil {
			return Image{}, errs.New(errs.InvalidArgument, "%s: nixos config %s does not parse: %w", what, o.NixOSModule, err)
		}
	}

	progress("nix-build " + nixpkgs + " (minutes the first time; nix caches)")
	result := filepath.Join(td.Path, "result") // a GC root while we copy
	if _, err := run(ctx, td.Path, "nix-build", nixBuildArgs(nixpkgs, cfg, result)...); err != nil {
		return Image{}, nixError(what, err)
	}
	system, err := os.Readlink(result)
	if err != nil {
		return Image{}, fmt.Errorf("%s: nix-build made no result: %w", what, err)
	}
	if _, err := os.Stat(filepath.Join(result, "init")); err != nil {
		return Image{}, errs.New(errs.FailedPrecondition, "%s: %s is not a NixOS system (no init in it)", what, system)
	}
	out, err := run(ctx, "", "nix-store", "--query", "--requisites", result)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	closure := strings.Fields(string(out))

	root := filepath.Join(td.Path, "root")
	progress(fmt.Sprintf("copy closure (%d store paths)", len(closure)))
	if err := nixosTree(ctx, root, system, closure); err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	progress("configure")
	if err := configureTree(ctx, root, o.AgentBinary, *k, nil, nil); err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	img := filepath.Join(td.Path, "out")
	if err := os.Mkdir(img, 0o755); err != nil {
		return Image{}, err
	}
	progress("mkfs.ext4")
	if err := mkfsFromDir(ctx, root, filepath.Join(img, "rootfs.ext4"), int64(o.SizeMiB)<<20, "minions-root"); err != nil {
		return Image{}, fmt.Errorf("%s: %w", what, err)
	}
	progress("publish")
	return c.publish(img, Image{OS: OSNixOS, AgentSHA256: sum, KernelVersion: k.Version}, started)
}

// nixBuildArgs builds nixpkgs' NixOS system (config.system.build.toplevel)
// from the configuration file cfg, linking it as result.
func nixBuildArgs(nixpkgs, cfg, result string) []string {
	return []string{"<nixpkgs/nixos>", "-A", "config.system.build.toplevel",
		"-I", "nixpkgs=" + nixpkgs, "-I", "nixos-config=" + cfg, "-o", result}
}

// resolveNixpkgs picks the nixpkgs to evaluate and checks it is there: the
// mirror if given (a directory, file: URL or http(s) tarball URL), else the
// host's <nixpkgs>, else DefaultNixpkgs. A URL is probed first, so an
// unreachable one fails in seconds (Unavailable).
func resolveNixpkgs(ctx context.Context, mirror string) (string, error) {
	if mirror == "" {
		if out, err := exec.CommandContext(ctx, "nix-instantiate", "--find-file", "nixpkgs").Output(); err == nil {
			if p := strings.TrimSpace(string(out)); p != "" {
				mirror = p
			}
		}
	}
	if mirror == "" {
		mirror = DefaultNixpkgs
	}
	if strings.HasPrefix(mirror, "file:") {
		u, err := url.Parse(mirror)
		if err != nil {
			return "", errs.New(errs.InvalidArgument, "nixpkgs %q: %v", mirror, err)
		}
		mirror = u.Path
	}
	if strings.HasPrefix(mirror, "http://") || strings.HasPrefix(mirror, "https://") {
		u, err := url.Parse(mirror)
		if err != nil {
			return "", errs.New(errs.InvalidArgument, "nixpkgs %q: %v", mirror, err)
		}
		dir, base := path.Split(u.Path)
		u.Path = strings.TrimSuffix(dir, "/")
		if err := probeMirror(ctx, u.String(), base, "", "nixpkgs"); err != nil {
			return "", err
		}
		return mirror, nil
	}
	if !filepath.IsAbs(mirror) {
		return "", errs.New(errs.InvalidArgument, "nixpkgs %q is not an absolute path, file: URL or http(s) tarball URL", mirror)
	}
	if _, err := os.Stat(filepath.Join(mirror, "nixos", "default.nix")); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", errs.New(errs.FailedPrecondition, "nixpkgs %s has no nixos/default.nix: not a nixpkgs checkout", mirror)
		}
		return "", err
	}
	return mirror, nil
}

// nixError classifies a failed nix-build: a download failure is
// Unavailable (the network, the channel or the binary cache), anything
// else FailedPrecondition (an evaluation or build error, shown).
func nixError(what string, err error) error {
	if errs.ClassOf(err) != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	msg := err.Error()
	if strings.Contains(msg, "build-users-group") {
		return errs.New(errs.FailedPrecondition, "%s: nix has no build users (apt-get install nix-setup-systemd, which makes the nixbld group and the nix daemon): %w", what, err)
	}
	for _, s := range []string{"unable to download", "Couldn't resolve host", "unable to fetch", "Could not resolve host", "Connection refused", "timed out"} {
		if strings.Contains(msg, s) {
			return errs.New(errs.Unavailable, "%s: nix could not download: %w", what, err)
		}
	}
	return errs.New(errs.FailedPrecondition, "%s: %w", what, err)
}

// nixosTree lays out a NixOS root in root: the closure's store paths, their
// registration for the guest's nix database (loaded by the system on first
// boot), the system profile and /sbin/init (the agent's stage 1 executes
// it).
func nixosTree(ctx context.Context, root, system string, closure []string) error {
	for _, d := range []string{"nix/store", "nix/var/nix/profiles", "nix/var/nix/gcroots", "etc", "sbin", "usr/sbin", "root", "var", "dev", "proc", "sys", "run", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), os.ModeSticky|0o777); err != nil {
		return err
	}
	for _, p := range closure {
		if filepath.Dir(p) != "/nix/store" {
			return fmt.Errorf("closure path %q is not in /nix/store", p)
		}
	}
	// One cp for the whole closure (a NixOS system has hundreds of paths).
	args := append([]string{"-a", "--reflink=auto"}, closure...)
	if _, err := run(ctx, "", "cp", append(args, filepath.Join(root, "nix", "store")+"/")...); err != nil {
		return err
	}
	reg, err := run(ctx, "", "nix-store", append([]string{"--dump-db"}, closure...)...)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "nix-path-registration"), reg, 0o644); err != nil {
		return err
	}
	links := map[string]string{
		"nix/var/nix/profiles/system-1-link": system,
		"nix/var/nix/profiles/system":        "system-1-link",
		"sbin/init":                          "/nix/var/nix/profiles/system/init",
	}
	for link, target := range links {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(root, "etc", "NIXOS"), nil, 0o644)
}
