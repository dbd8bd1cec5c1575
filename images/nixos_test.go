package images

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/nixstandin"
)

// needNix skips unless real nix is installed and can build as root without
// a network (test set-up installs nix-bin).
func needNix(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"nix-build", "nix-store", "nix-instantiate"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install nix-bin)", tool)
		}
	}
	t.Setenv("NIX_CONFIG", nixstandin.NixConfig)
}

// TestNixOSConfigEvaluates evaluates the configuration the build writes
// with real nix (stub config, lib and pkgs) and checks what it sets.
func TestNixOSConfigEvaluates(t *testing.T) {
	needNix(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "configuration.nix")
	if err := os.WriteFile(cfg, []byte(nixosConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	pkgs := "{"
	for _, p := range nixstandin.Packages {
		pkgs += " " + p + " = \"" + p + "\";"
	}
	pkgs += " }"
	expr := `(import ` + cfg + `) { config = { nix.package.out = "/nixpkg"; }; lib = { trivial.release = "99.99"; optional = c: x: if c then [ x ] else [ ]; }; pkgs = ` + pkgs + `; }`
	eval := func(e string) []byte {
		t.Helper()
		out, err := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "-E", e).CombinedOutput()
		if err != nil {
			t.Fatalf("nix-instantiate: %v\n%s", err, out)
		}
		return out
	}
	out := eval(expr)
	// A user's module (--nixos-config) is imported when it is there.
	if got := string(eval("(" + expr + ").imports")); got != "[]" {
		t.Errorf("imports without user.nix: %s", got)
	}
	os.WriteFile(filepath.Join(dir, "user.nix"), []byte("{ pkgs, ... }: { }\n"), 0o644)
	if got := string(eval("builtins.length (" + expr + ").imports")); got != "1" {
		t.Errorf("imports with user.nix: %s", got)
	}
	var c struct {
		Boot struct {
			Kernel, Initrd   struct{ Enable bool }
			PostBootCommands string
		}
		FileSystems map[string]struct{ Device, FsType string }
		Systemd     struct {
			Services map[string]struct {
				Before, WantedBy []string
				UnitConfig       map[string]any
				ServiceConfig    map[string]any
			}
		}
		Services struct {
			Openssh struct {
				Enable   bool
				Settings map[string]any
				HostKeys []struct{ Type string }
			}
		}
		Networking  struct{ UseDHCP bool }
		Environment struct{ SystemPackages []string }
		System      struct{ StateVersion string }
	}
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	agent := c.Systemd.Services["minions-agent"]
	if agent.ServiceConfig["ExecStart"] != AgentPath || !slices.Contains(agent.Before, "sshd.service") ||
		!slices.Contains(agent.WantedBy, "sysinit.target") || agent.UnitConfig["DefaultDependencies"] != false {
		t.Errorf("agent unit: %+v", agent)
	}
	if c.Boot.Kernel.Enable || c.Boot.Initrd.Enable {
		t.Error("the image must not carry its own kernel or initrd")
	}
	if !strings.Contains(c.Boot.PostBootCommands, "/nixpkg/bin/nix-store --load-db < /nix-path-registration") {
		t.Errorf("postBootCommands do not load the registration: %q", c.Boot.PostBootCommands)
	}
	if fs := c.FileSystems["/"]; fs.Device != "/dev/vda" || fs.FsType != "ext4" {
		t.Errorf("root filesystem %+v", fs)
	}
	ssh := c.Services.Openssh
	if !ssh.Enable || ssh.Settings["PermitRootLogin"] != "prohibit-password" || ssh.Settings["PasswordAuthentication"] != false {
		t.Errorf("openssh %+v", ssh)
	}
	for _, k := range ssh.HostKeys {
		if k.Type == "rsa" {
			t.Error("RSA host key: tens of seconds under TCG")
		}
	}
	for _, p := range []string{"curl", "git", "vim", "htop", "sudo", "gcc", "gnumake", "iproute2"} {
		if !slices.Contains(c.Environment.SystemPackages, p) {
			t.Errorf("package %s missing from %v", p, c.Environment.SystemPackages)
		}
	}
	if c.System.StateVersion != "99.99" || c.Networking.UseDHCP {
		t.Errorf("stateVersion %q, useDHCP %v", c.System.StateVersion, c.Networking.UseDHCP)
	}
}

// TestNixOSBuildStandin runs the whole NixOS build with real nix against
// the stand-in nixpkgs and checks the image: the closure, its
// registration, the system profile, /sbin/init, the agent and modules.
func TestNixOSBuildStandin(t *testing.T) {
	needNix(t)
	if err := checkStaticBusybox(BusyboxPath); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	nixpkgs := filepath.Join(dir, "nixpkgs")
	if err := nixstandin.Write(nixpkgs, BusyboxPath); err != nil {
		t.Fatal(err)
	}
	kver := "6.1.0-test-cloud-amd64"
	mods := filepath.Join(dir, "modules", kver)
	os.MkdirAll(filepath.Join(mods, "kernel"), 0o755)
	os.WriteFile(filepath.Join(mods, "modules.order"), nil, 0o644)
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("#!/bin/sh\necho agent\n"), 0o755)
	cat := &Catalog{Dir: filepath.Join(dir, "cat")}
	var steps []string
	im, err := cat.Build(context.Background(), BuildOptions{OS: OSNixOS, AgentBinary: agent, SizeMiB: 1024, Mirror: "file://" + nixpkgs,
		Kernel: &Kernel{Version: kver, ModulesDir: mods}, Progress: func(s string) { steps = append(steps, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if im.OS != OSNixOS || im.KernelVersion != kver {
		t.Fatalf("image %+v", im)
	}
	dbg := func(cmd string) string { return debugfs(t, im.Path, cmd) }
	// A store path is too long for a fast link: cat shows the target.
	system := dbg("cat /nix/var/nix/profiles/system-1-link")
	if !strings.HasPrefix(system, "/nix/store/") || !strings.HasSuffix(system, "-nixos-system-minion-standin") {
		t.Fatalf("system profile points at %q", system)
	}
	for _, c := range []struct{ cmd, want string }{
		{"stat /sbin/init", "Fast link dest: \"/nix/var/nix/profiles/system/init\""},
		{"stat /nix/var/nix/profiles/system", "Fast link dest: \"system-1-link\""},
		{"cat " + system + "/init", "exec " + AgentPath},
		{"cat " + system + "/agent-wanted-by", "sysinit.target"},
		{"cat /nix-path-registration", system},
		{"cat " + AgentPath, "echo agent"},
		{"ls /lib/modules/" + kver, "modules.dep"},
		{"ls /etc", "NIXOS"},
		{"stat /tmp", "Mode:  01777"},
	} {
		if got := dbg(c.cmd); !strings.Contains(got, c.want) {
			t.Errorf("%s: want %q in\n%s", c.cmd, c.want, got)
		}
	}
	if got := dbg("cat " + system + "/packages"); !strings.Contains(got, "stub-git") || !strings.Contains(got, "stub-gcc") {
		t.Errorf("system packages %q", got)
	}
	if !slices.ContainsFunc(steps, func(s string) bool { return strings.HasPrefix(s, "copy closure (") }) {
		t.Errorf("progress %q", steps)
	}
	if ents, _ := os.ReadDir(filepath.Join(cat.Dir, "tmp")); len(ents) != 0 {
		t.Errorf("build left %v", ents)
	}
}

// TestNixOSErrors checks the errors a NixOS build gives before it builds:
// a directory that is not nixpkgs, an unreachable tarball URL, a bad
// mirror, and a failing evaluation; none leaves anything behind.
func TestNixOSErrors(t *testing.T) {
	needNix(t)
	dir := t.TempDir()
	cat := &Catalog{Dir: filepath.Join(dir, "cat")}
	k := &Kernel{Version: "6.1.0-test-cloud-amd64", ModulesDir: dir}
	broken := filepath.Join(dir, "broken")
	os.MkdirAll(filepath.Join(broken, "nixos"), 0o755)
	os.WriteFile(filepath.Join(broken, "nixos", "default.nix"), []byte("{ configuration ? 1, system ? 2 }: throw \"stand-in evaluation error\"\n"), 0o644)
	dead := closedURL(t) + "/nixexprs.tar.xz"
	nixpkgs := filepath.Join(dir, "nixpkgs")
	if err := nixstandin.Write(nixpkgs, "/bin/true"); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.nix")
	os.WriteFile(bad, []byte("{ pkgs, ... }: { environment.systemPackages = [ pkgs.git ; }\n"), 0o644)
	for _, tt := range []struct {
		o     BuildOptions
		class *errs.Class
		want  string
	}{
		{BuildOptions{OS: OSNixOS, Mirror: nixpkgs, NixOSModule: filepath.Join(dir, "missing.nix")}, errs.NotFound, "nixos config " + filepath.Join(dir, "missing.nix")},
		{BuildOptions{OS: OSNixOS, Mirror: nixpkgs, NixOSModule: bad}, errs.InvalidArgument, "nixos config " + bad + " does not parse"},
		{BuildOptions{OS: OSDebian, NixOSModule: bad}, errs.InvalidArgument, "--nixos-config is for nixos only"},
	} {
		tt.o.AgentBinary, tt.o.Kernel = "/bin/true", k
		_, err := cat.Build(context.Background(), tt.o)
		if !errors.Is(err, tt.class) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: err = %v, want %v containing %q", tt.o, err, tt.class, tt.want)
		}
	}
	for _, tt := range []struct {
		mirror string
		class  *errs.Class
		want   string
	}{
		{dir, errs.FailedPrecondition, "nixpkgs " + dir + " has no nixos/default.nix: not a nixpkgs checkout"},
		{"relative/nixpkgs", errs.InvalidArgument, "is not an absolute path, file: URL or http(s) tarball URL"},
		{dead, errs.Unavailable, "unreachable"},
		{broken, errs.FailedPrecondition, "stand-in evaluation error"},
	} {
		_, err := cat.Build(context.Background(), BuildOptions{OS: OSNixOS, AgentBinary: "/bin/true", Mirror: tt.mirror, Kernel: k})
		if !errors.Is(err, tt.class) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %v containing %q", tt.mirror, err, tt.class, tt.want)
		}
	}
	assertNothingLeft(t, cat)
}
