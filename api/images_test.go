package api_test

import (
	"errors"
	"testing"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// TestClientImages is issue 12 item 8 over HTTP: a remote user lists the
// images that exist with the default marked; only an admin changes them.
func TestClientImages(t *testing.T) {
	fx := newFixture(t)
	fx.seed() // alice's VMs use minimal@1
	ctx := testCtx(t)
	alice, admin := fx.client("owner"), fx.client("admin")

	defaultOf := func(ims []service.ImageInfo) string {
		t.Helper()
		def := ""
		for _, im := range ims {
			if im.Default {
				if def != "" {
					t.Fatalf("two defaults: %+v", ims)
				}
				def = im.Ref
			}
		}
		return def
	}
	ims, err := alice.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ims) != 2 || ims[0].OS != "debian" || ims[1].Ref != "minimal@1" || defaultOf(ims) != "minimal@1" {
		t.Fatalf("images as alice: %+v", ims)
	}
	d, err := alice.DefaultImage(ctx)
	if err != nil || d != (service.ImageDefault{Image: "minimal", Source: "config", ResolvesTo: "minimal@1"}) {
		t.Fatalf("default as alice: %+v, %v", d, err)
	}

	// Users may not change images.
	if _, err := alice.SetDefaultImage(ctx, "debian"); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("alice sets the default: %v", err)
	}
	if _, err := alice.BuildImage(ctx, service.ImageBuildRequest{OS: "debian"}, nil); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("alice builds: %v", err)
	}
	if _, err := alice.RemoveImage(ctx, "debian"); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("alice removes: %v", err)
	}

	// An admin sets the default; everyone sees it. Bad input changes nothing.
	if _, err := admin.SetDefaultImage(ctx, "fedora"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("default to an image not built: %v", err)
	}
	if _, err := admin.SetDefaultImage(ctx, "Bad Name"); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("default to a bad name: %v", err)
	}
	if d, err := admin.SetDefaultImage(ctx, "debian"); err != nil || d.Image != "debian" || d.Source != "setting" || d.ResolvesTo != "debian@20261201-000000-dddd" {
		t.Fatalf("set default: %+v, %v", d, err)
	}
	if ims, err := alice.ListImages(ctx); err != nil || defaultOf(ims) != "debian@20261201-000000-dddd" {
		t.Fatalf("images after the default changed: %+v, %v", ims, err)
	}
	if d, err := admin.SetDefaultImage(ctx, ""); err != nil || d.Image != "minimal" || d.Source != "config" {
		t.Fatalf("reset default: %+v, %v", d, err)
	}

	// Build streams its steps; remove refuses an image a VM uses.
	var steps []string
	im, err := admin.BuildImage(ctx, service.ImageBuildRequest{OS: "debian"}, func(s string) { steps = append(steps, s) })
	if err != nil || im.OS != "debian" || len(steps) == 0 {
		t.Fatalf("build: %+v, steps %v, %v", im, steps, err)
	}
	if _, err := admin.BuildImage(ctx, service.ImageBuildRequest{OS: "../etc"}, nil); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("build a bad os: %v", err)
	}
	if _, err := admin.RemoveImage(ctx, "minimal"); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("remove the image in use: %v", err)
	}
	removed, err := admin.RemoveImage(ctx, "debian")
	if err != nil || len(removed) != 2 {
		t.Fatalf("remove debian: %+v, %v", removed, err)
	}
	if ims, err := alice.ListImages(ctx); err != nil || len(ims) != 1 || defaultOf(ims) != "minimal@1" {
		t.Fatalf("images after remove: %+v, %v", ims, err)
	}
}

var _ service.ImageBackend = (*api.Client)(nil)
