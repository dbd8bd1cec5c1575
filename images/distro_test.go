package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// fakeMirror serves the given paths with 200 (a body with a Release's
// Codename and a repomd tag), /portal/... with 200 and an HTML page,
// /broken/... with 500, /slow/ after a delay, and everything else with 404.
func fakeMirror(t *testing.T, paths ...string) *httptest.Server {
	t.Helper()
	ok := map[string]bool{}
	for _, p := range paths {
		ok[p] = true
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case ok[r.URL.Path]:
			w.Write([]byte("Origin: test\nCodename: noble\n<repomd xmlns=\"http://linux.duke.edu/metadata/repo\">\n"))
		case strings.HasPrefix(r.URL.Path, "/portal/"):
			w.Write([]byte("<html>Please log in to the hotel wifi</html>"))
		case strings.HasPrefix(r.URL.Path, "/broken/"):
			http.Error(w, "boom", http.StatusInternalServerError)
		case strings.HasPrefix(r.URL.Path, "/slow/"):
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// closedURL is an http URL on loopback where nothing listens.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/ubuntu"
}

func TestProbeMirror(t *testing.T) {
	srv := fakeMirror(t, "/ubuntu/dists/noble/Release")
	old := MirrorProbeTimeout
	MirrorProbeTimeout = 300 * time.Millisecond
	defer func() { MirrorProbeTimeout = old }()
	fileMirror := t.TempDir()
	os.MkdirAll(filepath.Join(fileMirror, "dists/noble"), 0o755)
	os.WriteFile(filepath.Join(fileMirror, "dists/noble/Release"), []byte("Origin: Ubuntu\nCodename: noble\n"), 0o644)
	os.MkdirAll(filepath.Join(fileMirror, "junk/dists/noble"), 0o755)
	os.WriteFile(filepath.Join(fileMirror, "junk/dists/noble/Release"), []byte("<html>"), 0o644)
	dead := closedURL(t)

	for _, tt := range []struct {
		name, mirror string
		class        *errs.Class
		want         string
	}{
		{"reachable", srv.URL + "/ubuntu", nil, ""},
		{"trailing slash", srv.URL + "/ubuntu/", nil, ""},
		{"404", srv.URL + "/debian", errs.FailedPrecondition, "mirror " + srv.URL + "/debian has no dists/noble/Release (HTTP 404): not a ubuntu mirror"},
		{"500", srv.URL + "/broken", errs.Unavailable, "mirror " + srv.URL + "/broken unreachable: GET dists/noble/Release: HTTP 500 Internal Server Error"},
		{"refused", dead, errs.Unavailable, "mirror " + dead + " unreachable: dial tcp"},
		{"timeout", srv.URL + "/slow", errs.Unavailable, "unreachable: no answer within 300ms"},
		{"portal", srv.URL + "/portal", errs.Unavailable, "mirror " + srv.URL + "/portal unreachable: GET dists/noble/Release answered 200 OK without \"Codename:\" in it"},
		{"file junk", "file://" + fileMirror + "/junk", errs.FailedPrecondition, "dists/noble/Release is not a Release file (no \"Codename:\" in it)"},
		{"file ok", "file://" + fileMirror, nil, ""},
		{"file missing", "file://" + fileMirror + "/nope", errs.FailedPrecondition, "has no dists/noble/Release: not a ubuntu mirror"},
		{"bad scheme", "ftp://example.invalid/ubuntu", errs.InvalidArgument, "not an http(s) or file URL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			err := probeMirror(context.Background(), tt.mirror, "dists/noble/Release", "Codename:", "ubuntu")
			if time.Since(start) > 3*time.Second {
				t.Errorf("probe took %v", time.Since(start))
			}
			if tt.class == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tt.class) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v (class %v), want %v containing %q", err, errs.ClassOf(err), tt.class, tt.want)
			}
		})
	}
}

// TestDebianUnchanged pins the Debian debootstrap command line and cache
// key: existing caches must stay valid across the ubuntu generalisation.
func TestDebianUnchanged(t *testing.T) {
	d := debianDistro()
	if err := d.resolve(); err != nil {
		t.Fatal(err)
	}
	want := []string{"--variant=minbase", "--components=main", "--include=" + strings.Join(DebianPackages, ","), "bookworm", "/r", DefaultDebianMirror}
	if got := d.debootstrapArgs("/r", DefaultDebianMirror); !reflect.DeepEqual(got, want) {
		t.Errorf("debian debootstrap args\n got %q\nwant %q", got, want)
	}
	// The original formula for the default mirror and packages, computed
	// apart: sha256 of "debootstrap-v1\n<mirror>\nbookworm\nminbase\n<sorted,pkgs>".
	sorted := append([]string(nil), DebianPackages...)
	sort.Strings(sorted)
	sum := sha256.Sum256([]byte("debootstrap-v1\n" + DefaultDebianMirror + "\nbookworm\nminbase\n" + strings.Join(sorted, ",")))
	if got := d.cacheKey(DefaultDebianMirror); got != hex.EncodeToString(sum[:8]) {
		t.Errorf("debian cache key changed: %s", got)
	}
	// The package list is part of the key: a tree cached before the
	// everyday tools joined the list (key 9b9d5db5b09ebb29, kept in CI's
	// /var/cache/minions-e2e) is not reused, nor one for a shorter list.
	if got := d.cacheKey(DefaultDebianMirror); got == "9b9d5db5b09ebb29" {
		t.Error("debian cache key is the one of the list without python3, rsync, jq, tmux, unzip and dig")
	}
	short := d
	short.Packages = DebianPackages[:len(DebianPackages)-1]
	if short.cacheKey(DefaultDebianMirror) == d.cacheKey(DefaultDebianMirror) {
		t.Error("dropping a package keeps the debian cache key")
	}
	for _, p := range []string{"python3", "rsync", "jq", "tmux", "unzip", "bind9-dnsutils"} {
		for _, list := range [][]string{DebianPackages, UbuntuPackages} {
			if !slices.Contains(list, p) {
				t.Errorf("%s is not in %q", p, list)
			}
		}
	}
	if d.cacheKey(DefaultDebianMirror) != debootstrapKey(DefaultDebianMirror, "bookworm", DebianPackages) {
		t.Error("debian key differs from debootstrapKey without extras")
	}
	if d.Files["etc/systemd/system/minions-agent.service"] != agentUnit {
		t.Error("debian agent unit changed")
	}
	u := ubuntuDistro()
	if unit := u.Files["etc/systemd/system/minions-agent.service"]; !strings.Contains(unit, "Before=sysinit.target network-pre.target systemd-networkd.service ssh.socket ssh.service\n") {
		t.Errorf("ubuntu agent unit does not order itself before ssh.socket:\n%s", unit)
	}
	u.Script = "/s/gutsy"
	if u.cacheKey(DefaultDebianMirror) == d.cacheKey(DefaultDebianMirror) {
		t.Error("ubuntu and debian share a cache key")
	}
}

func TestUbuntuResolve(t *testing.T) {
	dir := t.TempDir()
	keyring := filepath.Join(dir, "ubuntu-archive-keyring.gpg")
	os.WriteFile(keyring, []byte("k"), 0o644)
	withScripts := func(names ...string) string {
		d, _ := os.MkdirTemp(dir, "scripts-")
		for _, n := range names {
			os.WriteFile(filepath.Join(d, n), []byte("#"), 0o644)
		}
		return d
	}
	oldK, oldS := UbuntuKeyring, DebootstrapScripts
	defer func() { UbuntuKeyring, DebootstrapScripts = oldK, oldS }()
	for _, tt := range []struct {
		name, keyring, scripts string
		wantScript, wantErr    string
	}{
		{"noble script", keyring, withScripts("noble", "gutsy"), "noble", ""},
		{"gutsy fallback", keyring, withScripts("gutsy", "jammy"), "gutsy", ""},
		{"no script", keyring, withScripts("bookworm"), "", "debootstrap has no script for noble in "},
		{"no keyring", filepath.Join(dir, "absent.gpg"), withScripts("gutsy"), "",
			"ubuntu archive keyring " + filepath.Join(dir, "absent.gpg") + " is missing (no such file or directory): install the ubuntu-keyring package"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			UbuntuKeyring, DebootstrapScripts = tt.keyring, tt.scripts
			d := ubuntuDistro()
			err := d.resolve()
			if tt.wantErr != "" {
				if !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want FailedPrecondition containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Script != filepath.Join(tt.scripts, tt.wantScript) {
				t.Fatalf("script %s, want %s", d.Script, tt.wantScript)
			}
		})
	}
}

// fakeTool writes an executable shell script name into dir that records
// its arguments (one a line) in argsFile, runs extra, prints msg on file
// descriptor fd (debootstrap reports on stdout, dnf on stderr) and exits
// with status 1.
func fakeTool(t *testing.T, dir, name, argsFile, extra, msg string, fd int) {
	t.Helper()
	script := fmt.Sprintf("#!/bin/sh\nfor a in \"$@\"; do printf '%%s\\n' \"$a\"; done > %s\n%s\necho '%s' >&%d\nexit 1\n", argsFile, extra, msg, fd)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

func readArgs(t *testing.T, p string) []string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("tool was not run: %v", err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// assertNothingLeft fails if a failed build left an image, a temp
// directory or a mount in cat.
func assertNothingLeft(t *testing.T, cat *Catalog) {
	t.Helper()
	if l, _ := cat.List(); len(l) != 0 {
		t.Errorf("failed build left images: %+v", l)
	}
	for _, d := range []string{filepath.Join(cat.Dir, "tmp"), filepath.Join(cat.Dir, "cache", "debootstrap")} {
		ents, _ := os.ReadDir(d)
		if len(ents) != 0 {
			t.Errorf("failed build left %v in %s", ents, d)
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), cat.Dir) {
		t.Errorf("failed build left mounts under %s", cat.Dir)
	}
}

// TestUbuntuDebootstrapArgv runs the ubuntu build against a fake
// debootstrap and a local mirror and checks the command line it gets.
func TestUbuntuDebootstrapArgv(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	argsFile := filepath.Join(dir, "args")
	// Like debootstrap: messages on stdout, details in the target's log.
	fakeTool(t, bin, "debootstrap", argsFile, `mkdir -p "$6/debootstrap" && printf 'fetching\nfailed: Connection refused.\n' > "$6/debootstrap/debootstrap.log"`,
		"E: fake debootstrap stops here", 1)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	keyring := filepath.Join(dir, "ubuntu-archive-keyring.gpg")
	os.WriteFile(keyring, []byte("k"), 0o644)
	scripts := filepath.Join(dir, "scripts")
	os.Mkdir(scripts, 0o755)
	os.WriteFile(filepath.Join(scripts, "gutsy"), []byte("#"), 0o644)
	oldK, oldS := UbuntuKeyring, DebootstrapScripts
	UbuntuKeyring, DebootstrapScripts = keyring, scripts
	defer func() { UbuntuKeyring, DebootstrapScripts = oldK, oldS }()
	srv := fakeMirror(t, "/ubuntu/dists/noble/Release")
	mirror := srv.URL + "/ubuntu"

	cat := &Catalog{Dir: filepath.Join(dir, "cat")}
	k := &Kernel{Version: "6.1.0-test-cloud-amd64", ModulesDir: dir}
	_, err := cat.Build(context.Background(), BuildOptions{OS: OSUbuntu, AgentBinary: "/bin/true", Mirror: mirror, Kernel: k})
	if !errors.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "build ubuntu image: debootstrap noble from "+mirror) ||
		!strings.Contains(err.Error(), "E: fake debootstrap stops here") ||
		!strings.Contains(err.Error(), "(debootstrap.log: fetching; failed: Connection refused.)") {
		t.Fatalf("err = %v", err)
	}
	got := readArgs(t, argsFile)
	if len(got) != 8 {
		t.Fatalf("debootstrap argv %q", got)
	}
	root := got[5]
	if !strings.HasPrefix(root, filepath.Join(cat.Dir, "cache", "debootstrap")) || filepath.Base(root) != "root" {
		t.Errorf("target %s not in the debootstrap cache", root)
	}
	want := []string{"--variant=minbase", "--components=main,universe", "--keyring=" + keyring,
		"--include=" + strings.Join(UbuntuPackages, ","), "noble", root, mirror, filepath.Join(scripts, "gutsy")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("debootstrap argv\n got %q\nwant %q", got, want)
	}
	assertNothingLeft(t, cat)

	// An unreachable mirror stops the build before debootstrap runs.
	os.Remove(argsFile)
	dead := closedURL(t)
	_, err = cat.Build(context.Background(), BuildOptions{OS: OSUbuntu, AgentBinary: "/bin/true", Mirror: dead, Kernel: k})
	if !errors.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "build ubuntu image: mirror "+dead+" unreachable: dial tcp") {
		t.Fatalf("unreachable mirror: %v", err)
	}
	if _, err := os.Stat(argsFile); err == nil {
		t.Error("debootstrap ran although the mirror is unreachable")
	}
	// A Debian mirror is not an Ubuntu mirror.
	_, err = cat.Build(context.Background(), BuildOptions{OS: OSUbuntu, AgentBinary: "/bin/true", Mirror: srv.URL + "/debian", Kernel: k})
	if !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "has no dists/noble/Release (HTTP 404)") {
		t.Fatalf("wrong mirror: %v", err)
	}
	assertNothingLeft(t, cat)
}

func TestFedoraDnfArgv(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	argsFile := filepath.Join(dir, "args")
	fakeTool(t, bin, "dnf", argsFile, "", "Error: fake dnf: Cannot download repomd.xml", 2)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	key := filepath.Join(dir, "RPM-GPG-KEY-fedora-41-x86_64")
	oldKeys := FedoraGPGKeys
	defer func() { FedoraGPGKeys = oldKeys }()
	FedoraGPGKeys = []string{filepath.Join(dir, "absent"), key}
	srv := fakeMirror(t, "/fedora/releases/41/Everything/x86_64/os/repodata/repomd.xml")
	mirror := srv.URL + "/fedora"
	cat := &Catalog{Dir: filepath.Join(dir, "cat")}
	k := &Kernel{Version: "6.1.0-test-cloud-amd64", ModulesDir: dir}
	ctx := context.Background()

	// No key: the error names every place looked at.
	_, err := cat.Build(ctx, BuildOptions{OS: OSFedora, AgentBinary: "/bin/true", Mirror: mirror, Kernel: k})
	if !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "fedora 41 package signing key not found (looked for "+filepath.Join(dir, "absent")+", "+key+")") {
		t.Fatalf("no key: %v", err)
	}
	os.WriteFile(key, []byte("k"), 0o644)

	_, err = cat.Build(ctx, BuildOptions{OS: OSFedora, AgentBinary: "/bin/true", Mirror: mirror, Kernel: k})
	if !errors.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "build fedora image: dnf from "+mirror) ||
		!strings.Contains(err.Error(), "fake dnf: Cannot download repomd.xml") {
		t.Fatalf("err = %v", err)
	}
	got := readArgs(t, argsFile)
	if len(got) < 3 || !strings.HasPrefix(got[1], "--installroot="+filepath.Join(cat.Dir, "tmp")) {
		t.Fatalf("dnf argv %q", got)
	}
	root := strings.TrimPrefix(got[1], "--installroot=")
	want := append([]string{"-y", "--installroot=" + root, "--releasever=41", "--disablerepo=*",
		"--repofrompath=minions-fedora," + mirror + "/releases/41/Everything/x86_64/os/",
		"--repofrompath=minions-updates," + mirror + "/updates/41/Everything/x86_64/",
		"--enablerepo=minions-fedora", "--enablerepo=minions-updates",
		"--setopt=minions-fedora.gpgcheck=1", "--setopt=minions-fedora.gpgkey=file://" + key,
		"--setopt=minions-updates.gpgcheck=1", "--setopt=minions-updates.gpgkey=file://" + key,
		"--setopt=install_weak_deps=False", "--setopt=tsflags=nodocs", "install"}, FedoraPackages...)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("dnf argv\n got %q\nwant %q", got, want)
	}
	// Unreachable mirror: dnf never runs.
	os.Remove(argsFile)
	dead := closedURL(t)
	_, err = cat.Build(ctx, BuildOptions{OS: OSFedora, AgentBinary: "/bin/true", Mirror: dead, Kernel: k})
	if !errors.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "build fedora image: mirror "+dead+" unreachable") {
		t.Fatalf("unreachable: %v", err)
	}
	if _, err := os.Stat(argsFile); err == nil {
		t.Error("dnf ran although the mirror is unreachable")
	}
	assertNothingLeft(t, cat)
}

// TestMissingToolsExplain checks the errors of a host without the tools
// (PATH emptied): each names what is missing and how to get it.
func TestMissingToolsExplain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	t.Setenv("PATH", t.TempDir())
	cat := &Catalog{Dir: t.TempDir()}
	oldK := UbuntuKeyring
	defer func() { UbuntuKeyring = oldK }()
	UbuntuKeyring = filepath.Join(cat.Dir, "ubuntu-archive-keyring.gpg")
	for _, tt := range []struct {
		o     BuildOptions
		class *errs.Class
		want  string
	}{
		{BuildOptions{OS: OSUbuntu}, errs.FailedPrecondition, "build ubuntu image: ubuntu archive keyring " + UbuntuKeyring + " is missing"},
		{BuildOptions{OS: OSFedora}, errs.FailedPrecondition,
			"build fedora image: fedora needs dnf (not installed; apt-get install dnf) or a Fedora root filesystem tarball via --rootfs-tarball FILE"},
		{BuildOptions{OS: OSFedora, RootfsTarball: "/nonexistent/f.tar"}, errs.NotFound, "build fedora image: rootfs tarball /nonexistent/f.tar does not exist"},
		{BuildOptions{OS: OSNixOS}, errs.FailedPrecondition,
			"build nixos image: nixos needs nix (nix-build, nix-store, nix-instantiate not found; apt-get install nix-bin nix-setup-systemd)"},
		{BuildOptions{OS: OSUbuntu, RootfsTarball: "/x.tar"}, errs.InvalidArgument, "--rootfs-tarball is for fedora only"},
		{BuildOptions{OS: OSFedora, Mirror: "ftp://x"}, errs.InvalidArgument, "mirror \"ftp://x\" is not an http(s) or file URL"},
	} {
		tt.o.AgentBinary = "/bin/true"
		_, err := cat.Build(context.Background(), tt.o)
		if !errors.Is(err, tt.class) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %v containing %q", tt.o.OS, err, tt.class, tt.want)
		}
	}
}

// makeTar packs dir into a tar file (with GNU tar, as a user would).
func makeTar(t *testing.T, dir, out string) {
	t.Helper()
	if b, err := exec.Command("tar", "-C", dir, "-cf", out, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, b)
	}
}

func TestFedoraTarballRejects(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	oci := filepath.Join(dir, "oci")
	os.MkdirAll(filepath.Join(oci, "blobs/sha256"), 0o755)
	os.WriteFile(filepath.Join(oci, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	os.WriteFile(filepath.Join(oci, "index.json"), []byte(`{}`), 0o644)
	deb := filepath.Join(dir, "deb")
	os.MkdirAll(filepath.Join(deb, "etc"), 0o755)
	os.WriteFile(filepath.Join(deb, "etc/os-release"), []byte("ID=debian\nVERSION_ID=\"12\"\n"), 0o644)
	empty := filepath.Join(dir, "empty")
	os.MkdirAll(filepath.Join(empty, "usr"), 0o755)
	garbage := filepath.Join(dir, "garbage.tar")
	os.WriteFile(garbage, []byte("this is not a tar file at all"), 0o644)
	for name, src := range map[string]string{"oci": oci, "deb": deb, "empty": empty} {
		makeTar(t, src, filepath.Join(dir, name+".tar"))
	}
	cat := &Catalog{Dir: filepath.Join(dir, "cat")}
	k := &Kernel{Version: "6.1.0-test-cloud-amd64", ModulesDir: dir}
	for _, tt := range []struct{ tar, want string }{
		{"oci.tar", "is a container image archive (has oci-layout), not a root filesystem tar"},
		{"deb.tar", "holds \"debian\", not Fedora"},
		{"empty.tar", "is not a root filesystem tar: no etc/os-release in it"},
		{"garbage.tar", "unpack " + garbage},
	} {
		_, err := cat.Build(context.Background(), BuildOptions{OS: OSFedora, AgentBinary: "/bin/true", Kernel: k, RootfsTarball: filepath.Join(dir, tt.tar)})
		if !errors.Is(err, errs.InvalidArgument) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want InvalidArgument containing %q", tt.tar, err, tt.want)
		}
	}
	assertNothingLeft(t, cat)
}

// TestFedoraFromTarball builds a Fedora image from a tiny stand-in root
// filesystem (static busybox as shell and depmod, a dnf script that
// records its arguments) and checks the published image's configuration
// with debugfs.
func TestFedoraFromTarball(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if err := checkStaticBusybox(BusyboxPath); err != nil {
		t.Skip(err)
	}
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Skip("no debugfs")
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	for _, d := range []string{"etc/ssh/sshd_config.d", "usr/bin", "usr/sbin", "usr/lib/systemd/system", "proc", "sys", "dev"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}
	os.Symlink("usr/bin", filepath.Join(tree, "bin"))
	os.Symlink("usr/sbin", filepath.Join(tree, "sbin"))
	os.Symlink("usr/lib", filepath.Join(tree, "lib"))
	if err := copyFile(BusyboxPath, filepath.Join(tree, "usr/bin/busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Symlink("busybox", filepath.Join(tree, "usr/bin/sh"))
	os.Symlink("../bin/busybox", filepath.Join(tree, "usr/sbin/depmod"))
	os.WriteFile(filepath.Join(tree, "etc/os-release"), []byte("NAME=\"Fedora Linux\"\nID=fedora\nVERSION_ID=41\n"), 0o644)
	os.WriteFile(filepath.Join(tree, "etc/ssh/ssh_host_rsa_key"), []byte("secret"), 0o600)
	// The stand-in dnf records its arguments and whether /proc was mounted.
	os.WriteFile(filepath.Join(tree, "usr/bin/dnf5"), []byte("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > /dnf-args\ntest -r /proc/self/stat && echo proc-mounted >> /dnf-args\nexit 0\n"), 0o755)
	os.Symlink("dnf5", filepath.Join(tree, "usr/bin/dnf"))
	tarball := filepath.Join(dir, "fedora-rootfs.tar")
	makeTar(t, tree, tarball)

	kver := "6.1.0-test-cloud-amd64"
	mods := filepath.Join(dir, "modules", kver)
	os.MkdirAll(filepath.Join(mods, "kernel"), 0o755)
	os.WriteFile(filepath.Join(mods, "modules.order"), nil, 0o644)
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("#!/bin/sh\necho agent\n"), 0o755)
	cat := &Catalog{Dir: filepath.Join(dir, "cat")}
	// No network is needed: the tarball's own repositories are used and
	// no mirror is probed.
	im, err := cat.Build(context.Background(), BuildOptions{OS: OSFedora, AgentBinary: agent, SizeMiB: 1024,
		Kernel: &Kernel{Version: kver, ModulesDir: mods}, RootfsTarball: tarball})
	if err != nil {
		t.Fatal(err)
	}
	if im.OS != OSFedora || im.KernelVersion != kver || im.SizeBytes != 1024<<20 {
		t.Fatalf("image %+v", im)
	}
	dbg := func(cmd string) string { return debugfs(t, im.Path, cmd) }
	args := dbg("cat /dnf-args")
	wantArgs := "-y\n--releasever=41\n--setopt=install_weak_deps=False\n--setopt=tsflags=nodocs\ninstall\n" + strings.Join(FedoraPackages, "\n") + "\nproc-mounted\n"
	if args != wantArgs {
		t.Errorf("chroot dnf args:\n%s\nwant:\n%s", args, wantArgs)
	}
	for _, c := range []struct{ cmd, want string }{
		{"cat /etc/ssh/sshd_config.d/00-minions.conf", "PermitRootLogin prohibit-password"},
		{"cat /etc/systemd/system/minions-agent.service", "Before=sysinit.target network-pre.target systemd-networkd.service sshd.service"},
		{"cat /etc/systemd/system/sshd.service.d/minions-hostkeys.conf", "/usr/lib/minions/ssh-hostkeys.sh"},
		{"stat /etc/systemd/system/sshd-keygen@.service", "Fast link dest: \"/dev/null\""},
		{"stat /etc/systemd/system/sysinit.target.wants/minions-agent.service", "/etc/systemd/system/minions-agent.service"},
		{"stat /etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service", "/usr/lib/systemd/system/serial-getty@.service"},
		{"cat /etc/selinux/config", "SELINUX=disabled"},
		{"cat " + AgentPath, "echo agent"},
		{"ls /usr/lib/modules/" + kver, "modules.dep"},
	} {
		if got := dbg(c.cmd); !strings.Contains(got, c.want) {
			t.Errorf("%s: want %q in\n%s", c.cmd, c.want, got)
		}
	}
	if got := dbg("ls /etc/ssh"); strings.Contains(got, "ssh_host_") {
		t.Errorf("image ships ssh host keys: %s", got)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), cat.Dir) {
		t.Errorf("build left mounts under %s", cat.Dir)
	}
	if ents, _ := os.ReadDir(filepath.Join(cat.Dir, "tmp")); len(ents) != 0 {
		t.Errorf("build left %v", ents)
	}
}
