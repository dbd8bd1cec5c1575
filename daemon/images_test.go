package daemon

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

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

// TestDashboardImages is issue 12 item 8 for the dashboard's backend (the
// same for `minions tui`, `--host` and `ssh host`): the create form gets
// the images of the catalogue with the service's default preselected, not
// a fixed "minimal".
func TestDashboardImages(t *testing.T) {
	ctx := context.Background()
	svc, root, bob := imageService(t)
	form := func(c service.Caller) []tui.ImageChoice {
		t.Helper()
		ims, err := svc.As(c).ListImages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return tui.ImageChoices(ims)
	}
	want := []tui.ImageChoice{
		{Name: "debian"},
		{Name: "minimal", Default: true},
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
	want = append(want, tui.ImageChoice{Name: "debian@20261201-000000-bbbb", Default: true})
	if got := form(root); !equalImages(got, want) {
		t.Fatalf("form images with a pinned default:\n got %+v\nwant %+v", got, want)
	}
}

func equalImages(a, b []tui.ImageChoice) bool {
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
