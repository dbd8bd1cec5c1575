package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/tui"
)

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
	svc = testService(t, dir)
	var err error
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
			Open: OpenLocal, Extra: Commands()}
		code := cli.Run(ctx, env, append([]string{"--host", ts.URL, "--api-key", token}, args...))
		return out.String(), errOut.String(), code
	}
	out, errOut, code := run(tok.Secret, "image", "list", "--json")
	var ims []service.ImageInfo
	if code != 0 || json.Unmarshal([]byte(out), &ims) != nil || len(ims) != 3 || !ims[2].Default || ims[2].Ref != "minimal@20261201-000000-aaaa" {
		t.Fatalf("image list as bob: %d %s %s", code, out, errOut)
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

// TestDashboardImages is issue 12 item 8 for the dashboard's backend (the
// same for `minions tui`, `--host` and `ssh host`): the create form gets
// the images of the catalogue with the service's default preselected, not
// a fixed "minimal".
func TestDashboardImages(t *testing.T) {
	ctx := context.Background()
	svc, root, bob := imageService(t)
	form := func(c service.Caller) []tui.Image {
		t.Helper()
		ims, err := dashBackend{be: &cli.Local{Svc: svc, Caller: c}}.Images(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ims
	}
	want := []tui.Image{
		{Name: "debian", Description: "newest debian@20261202-000000-cccc"},
		{Name: "minimal", Description: "newest minimal@20261201-000000-aaaa", Default: true},
	}
	if got := form(bob); !equalImages(got, want) {
		t.Fatalf("form images with the built-in default:\n got %+v\nwant %+v", got, want)
	}
	if _, err := svc.SetDefaultImage(ctx, root, "debian"); err != nil {
		t.Fatal(err)
	}
	want[0].Default, want[1].Default = true, false
	if got := form(bob); !equalImages(got, want) {
		t.Fatalf("form images with debian the default:\n got %+v\nwant %+v", got, want)
	}
	// A default pinned to an older version is offered as that version.
	if _, err := svc.SetDefaultImage(ctx, root, "debian@20261201-000000-bbbb"); err != nil {
		t.Fatal(err)
	}
	want[0].Default = false
	want = append(want, tui.Image{Name: "debian@20261201-000000-bbbb", Description: "the default, pinned", Default: true})
	if got := form(root); !equalImages(got, want) {
		t.Fatalf("form images with a pinned default:\n got %+v\nwant %+v", got, want)
	}
}

func equalImages(a, b []tui.Image) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
