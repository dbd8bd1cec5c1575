package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/nixstandin"
)

// TestNixOSImage drives `minions image build --os nixos` with real nix
// against a stand-in nixpkgs (nixpkgs and its binary cache cannot be
// downloaded here) and boots the result: nix-build, the closure copy, the
// registration, the system profile and /sbin/init are the real pipeline;
// the stand-in system's init starts the agent unit's ExecStart as PID 1
// instead of systemd.
func TestNixOSImage(t *testing.T) {
	setup(t)
	for _, tool := range []string{"nix-build", "nix-store", "nix-instantiate"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/test.sh installs nix-bin)", tool)
		}
	}
	nixpkgs := filepath.Join(t.TempDir(), "nixpkgs")
	if err := nixstandin.Write(nixpkgs, "/bin/busybox"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NIX_CONFIG", nixstandin.NixConfig)

	start := time.Now()
	var im struct{ OS, Version string }
	mustJSON(t, &im, "image", "build", "--os", "nixos", "--mirror", nixpkgs, "--size", "1024")
	build := time.Since(start)
	if im.OS != "nixos" || im.Version == "" {
		t.Fatalf("image build: %+v", im)
	}
	defer minions(t, "", "image", "rm", "nixos@"+im.Version)

	// `image default` makes a create without --os use this image.
	var def struct{ Image, Source, Resolves_To string }
	mustJSON(t, &def, "image", "default", "nixos")
	defer must(t, "image", "default", "--reset")
	if def.Image != "nixos" || def.Source != "setting" || def.Resolves_To != "nixos@"+im.Version {
		t.Fatalf("image default nixos: %+v", def)
	}
	var list []struct {
		Ref     string
		Default bool
	}
	mustJSON(t, &list, "image", "list")
	for _, l := range list {
		if l.Default != (l.Ref == "nixos@"+im.Version) {
			t.Errorf("image list: %s default=%v", l.Ref, l.Default)
		}
	}
	if r := minions(t, "", "image", "default", "nosuch"); r.code == 0 || !strings.Contains(r.stderr, "no image nosuch") {
		t.Errorf("image default nosuch: %s", r)
	}
	start = time.Now()
	var v vmJSON
	mustJSON(t, &v, "create", "nix")
	ready := time.Since(start)
	defer minions(t, "", "destroy", "nix", "--yes")
	if !strings.HasPrefix(v.Image, "nixos@") {
		t.Fatalf("create without --os used %q, want the default nixos", v.Image)
	}

	bb := "/nix/var/nix/profiles/system/bin/busybox"
	system := strings.TrimSpace(must(t, "exec", "nix", "--", bb, "readlink", "/nix/var/nix/profiles/system-1-link"))
	if !strings.HasPrefix(system, "/nix/store/") || !strings.HasSuffix(system, "-nixos-system-minion-standin") {
		t.Fatalf("system profile -> %q", system)
	}
	if got := strings.TrimSpace(must(t, "exec", "nix", "--", bb, "readlink", "-f", "/sbin/init")); got != system+"/init" {
		t.Errorf("/sbin/init resolves to %q, want %s/init", got, system)
	}
	if got := strings.TrimSpace(must(t, "exec", "nix", "--", bb, "readlink", "/proc/1/exe")); got != "/usr/sbin/minions-agent" {
		t.Errorf("PID 1 is %q, want the agent started by the system's init", got)
	}
	if got := must(t, "exec", "nix", "--", bb, "cat", "/nix-path-registration"); !strings.Contains(got, system) {
		t.Errorf("registration does not name the system: %q", got)
	}
	// The image is in use: rm refuses.
	if r := minions(t, "", "image", "rm", "nixos@"+im.Version); r.code == 0 {
		t.Error("image rm succeeded while a VM uses the image")
	}
	t.Logf("nixos (stand-in nixpkgs): image build %s, create -> agent ready %s", build.Round(time.Millisecond), ready.Round(time.Millisecond))
	if os.Getenv("MINIONS_E2E_VERBOSE") != "" {
		t.Log(must(t, "logs", "nix"))
	}
}
