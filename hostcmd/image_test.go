package hostcmd

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/daemon"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"golang.org/x/crypto/ssh"
)

type nopNet struct{}

func (nopNet) AddPort(context.Context, string, netip.Addr, string) error { return nil }
func (nopNet) RemovePort(context.Context, string) error                  { return nil }

type nopDisks struct{}

func (nopDisks) CreateOverlay(context.Context, string, string, string, int64) error { return nil }
func (nopDisks) Clone(context.Context, string, string) error                        { return nil }
func (nopDisks) Grow(context.Context, string, int64) error                          { return nil }

// putImage writes one catalogue entry as images/ publishes it.
func putImage(t *testing.T, dir string, im images.Image) {
	t.Helper()
	d := filepath.Join(dir, "rootfs", im.OS, im.Version)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(im)
	if err := os.WriteFile(filepath.Join(d, "image.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "rootfs.ext4"), nil, 0o444); err != nil {
		t.Fatal(err)
	}
}

// imageService is a real service (SQLite) over a real catalogue holding
// minimal@..aaaa, debian@..bbbb and debian@..cccc, with an admin and a
// user.
func imageService(t *testing.T) (svc *service.Service, root, bob service.Caller) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	cat := &images.Catalog{Dir: filepath.Join(dir, "images")}
	now := time.Now().UTC()
	putImage(t, cat.Dir, images.Image{OS: "minimal", Version: "20261201-000000-aaaa", Created: now})
	putImage(t, cat.Dir, images.Image{OS: "debian", Version: "20261201-000000-bbbb", Created: now})
	putImage(t, cat.Dir, images.Image{OS: "debian", Version: "20261202-000000-cccc", Created: now})
	db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewSignerFromKey(priv)
	svc, err = service.New(service.Config{StateDir: dir, Log: slog.New(slog.DiscardHandler)},
		service.Deps{DB: db, Driver: fake.New(fake.Config{}), Network: nopNet{}, Images: service.NewHostCatalog(cat, local.AgentBinary), Disks: nopDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if root, err = svc.EnsureUser(ctx, "root", true); err != nil {
		t.Fatal(err)
	}
	if bob, err = svc.EnsureUser(ctx, "bob", false); err != nil {
		t.Fatal(err)
	}
	return svc, root, bob
}

// TestImageCommandsRemote: `minions --host URL image ...` manages the
// images of that daemon through its API, as the caller the token names.
func TestImageCommandsRemote(t *testing.T) {
	ctx := context.Background()
	svc, root, _ := imageService(t)
	const adminToken = "admin-token-for-image-commands"
	ts := httptest.NewServer(api.NewHandler(api.Config{Service: svc, AdminTokens: []string{adminToken}}))
	defer ts.Close()
	tok, err := svc.CreateToken(ctx, root, "bob", "t", 0)
	if err != nil {
		t.Fatal(err)
	}
	run := func(token string, args ...string) (string, string, int) {
		t.Helper()
		var out, errOut bytes.Buffer
		env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" },
			Open: daemon.OpenLocal, Extra: Commands()}
		code := cli.Run(ctx, env, append([]string{"--host", ts.URL, "--api-key", token}, args...))
		return out.String(), errOut.String(), code
	}
	// A warm template of minimal, as the engine records one.
	tdir := filepath.Join(svc.Config().StateDir, "templates", "0123456789abcdef")
	os.MkdirAll(tdir, 0o700)
	os.WriteFile(filepath.Join(tdir, "manifest.json"), []byte(`{"key":"0123456789abcdef","image":"minimal@20261201-000000-aaaa","image_path":"/x","cpus":1,"memory_mib":256,"disk_gib":1,"disk":"/secret/t.qcow2"}`), 0o600)
	out, errOut, code := run(tok.Secret, "image", "list", "--json")
	var ims []service.ImageInfo
	if code != 0 || json.Unmarshal([]byte(out), &ims) != nil || len(ims) != 3 || !ims[2].Default || ims[2].Ref != "minimal@20261201-000000-aaaa" {
		t.Fatalf("image list as bob: %d %s %s", code, out, errOut)
	}
	if ts := ims[2].Templates; len(ts) != 1 || ts[0].Key != "0123456789abcdef" || ts[0].MemoryMiB != 256 || len(ims[0].Templates)+len(ims[1].Templates) != 0 || strings.Contains(out, "/secret") {
		t.Fatalf("image list as bob: templates %+v %+v %+v, want minimal's one (no host paths):\n%s", ims[0].Templates, ims[1].Templates, ims[2].Templates, out)
	}
	if out, _, _ := run(tok.Secret, "image", "list"); !strings.Contains(out, "warm templates:\n  minimal@20261201-000000-aaaa  1 cpus, 256 MiB, 1 GiB  (0123456789abcdef)") {
		t.Fatalf("image list (text) as bob:\n%s", out)
	}
	// Warming is for admins; this service's fake driver keeps no templates.
	if _, errOut, code := run(tok.Secret, "image", "warm", "minimal"); code != 6 || !strings.Contains(errOut, "admin") {
		t.Fatalf("image warm as bob: %d %s", code, errOut)
	}
	if _, errOut, code := run(adminToken, "image", "warm", "minimal", "--memory", "-1"); code != 2 || !strings.Contains(errOut, "positive") {
		t.Fatalf("image warm --memory -1: %d %s", code, errOut)
	}
	if _, errOut, code := run(adminToken, "image", "warm", "minimal"); code == 0 || !strings.Contains(errOut, "warm templates are off on this host") {
		t.Fatalf("image warm as admin on a host without templates: %d %s", code, errOut)
	}
	if _, errOut, code := run(tok.Secret, "image", "default", "debian"); code != 6 || !strings.Contains(errOut, "admin") {
		t.Fatalf("image default as bob: %d %s", code, errOut)
	}
	out, errOut, code = run(adminToken, "image", "default", "debian", "--json")
	var d service.ImageDefault
	if code != 0 || json.Unmarshal([]byte(out), &d) != nil || d != (service.ImageDefault{Image: "debian", Source: "setting", ResolvesTo: "debian@20261202-000000-cccc"}) {
		t.Fatalf("image default debian as admin: %d %s %s", code, out, errOut)
	}
	if out, _, code := run(tok.Secret, "image", "list"); code != 0 || !regexp.MustCompile(`debian@20261202-000000-cccc .*\*`).MatchString(out) {
		t.Fatalf("image list after the default changed: %d\n%s", code, out)
	}
	if out, errOut, code := run(adminToken, "image", "rm", "debian@20261201-000000-bbbb"); code != 0 || out != "removed debian@20261201-000000-bbbb\n" {
		t.Fatalf("image rm as admin: %d %s %s", code, out, errOut)
	}
	if _, errOut, code := run(adminToken, "image", "build", "--os", "fedora", "--rootfs-tarball", "/tmp/x.tar"); code != 2 || !strings.Contains(errOut, "not with --host") {
		t.Fatalf("image build with a local file over --host: %d %s", code, errOut)
	}
	if _, _, code := run(adminToken, "image", "bake", "minimal"); code != 2 {
		t.Fatalf("image bake over --host: %d", code)
	}
}

// TestImageCommandsLocalMatchRemote: on the host, the image commands go
// through the same service methods as over --host (in-process, as root),
// so both print the same thing and see each other's changes.
func TestImageCommandsLocalMatchRemote(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the local image commands need root")
	}
	ctx := context.Background()
	svc, _, _ := imageService(t)
	dir := svc.Config().StateDir
	const adminToken = "admin-token-for-image-commands"
	ts := httptest.NewServer(api.NewHandler(api.Config{Service: svc, AdminTokens: []string{adminToken}}))
	defer ts.Close()
	run := func(remote bool, args ...string) (string, string, int) {
		t.Helper()
		var out, errOut bytes.Buffer
		env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" },
			Open: daemon.OpenLocal, Extra: Commands()}
		g := []string{"--state-dir", dir, "--run-dir", filepath.Join(dir, "run")}
		if remote {
			g = []string{"--host", ts.URL, "--api-key", adminToken}
		}
		code := cli.Run(ctx, env, append(g, args...))
		return out.String(), errOut.String(), code
	}
	local, errOut, code := run(false, "image", "list", "--json")
	if code != 0 {
		t.Fatalf("local image list: %d %s", code, errOut)
	}
	remote, errOut, code := run(true, "image", "list", "--json")
	if code != 0 || local != remote {
		t.Fatalf("image list differs:\nlocal:\n%s\nremote (%d %s):\n%s", local, code, errOut, remote)
	}
	var ims []service.ImageInfo
	if json.Unmarshal([]byte(local), &ims) != nil || len(ims) != 3 || ims[0].Path == "" || !ims[2].Default {
		t.Fatalf("local image list: %s", local)
	}

	// A default set on the host is the daemon's default, and the other way.
	if out, errOut, code := run(false, "image", "default", "debian"); code != 0 || out != "default image: debian (setting), now debian@20261202-000000-cccc\n" {
		t.Fatalf("local image default debian: %d %q %s", code, out, errOut)
	}
	if out, _, _ := run(true, "image", "default"); out != "default image: debian (setting), now debian@20261202-000000-cccc\n" {
		t.Fatalf("remote image default after the local change: %q", out)
	}
	if _, errOut, code := run(false, "image", "default", "fedora"); code != 3 || !strings.Contains(errOut, "no image fedora is built") {
		t.Fatalf("local image default of an unbuilt image: %d %s", code, errOut)
	}
	if out, errOut, code := run(false, "image", "rm", "debian@20261201-000000-bbbb"); code != 0 || out != "removed debian@20261201-000000-bbbb\n" {
		t.Fatalf("local image rm: %d %q %s", code, out, errOut)
	}
	if out, _, _ := run(true, "image", "list"); strings.Contains(out, "bbbb") {
		t.Fatalf("remote list still shows the removed version:\n%s", out)
	}
}
