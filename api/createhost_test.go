package api_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// TestCreateHostField: create's host pins the VM to a cluster host over
// the API: an unknown host is 404 (nothing made), a cordoned one 409, a
// malformed name 400, and the local host creates the VM there, which
// show and list name.
func TestCreateHostField(t *testing.T) {
	fx := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	owner := fx.client("owner")
	if _, err := owner.Create(ctx, service.CreateRequest{Name: "pinned", Image: "minimal", Host: "nowhere"}, nil); !errors.Is(err, errs.NotFound) {
		t.Fatalf("no cluster, pin: %v", err)
	}
	if _, err := owner.Create(ctx, service.CreateRequest{Name: "pinned", Image: "minimal", Host: "Not_A_Name"}, nil); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("bad host name: %v", err)
	}
	pub := "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
	id, err := fx.svc.EnsureLocalHost(ctx, "cp", pub, "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := fx.svc.RecordHeartbeat(ctx, id, service.Heartbeat{CPUs: 8, MemoryMiB: 16384, DiskFreeMiB: 100 << 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.svc.HostCordon(ctx, fx.callers["admin"], "cp"); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Create(ctx, service.CreateRequest{Name: "pinned", Image: "minimal", Host: "cp"}, nil); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("pin on a cordoned host: %v", err)
	}
	if l, _ := owner.List(ctx); len(l) != 0 {
		t.Fatalf("refused creates left %+v", l)
	}
	if _, err := fx.svc.HostUncordon(ctx, fx.callers["admin"], "cp"); err != nil {
		t.Fatal(err)
	}
	v, err := owner.Create(ctx, service.CreateRequest{Name: "pinned", Image: "minimal", Host: "cp"}, nil)
	if err != nil || v.Host != "cp" {
		t.Fatalf("pin on the local host: %+v, %v", v, err)
	}
	if g, err := owner.Get(ctx, "pinned"); err != nil || g.Host != "cp" {
		t.Fatalf("show: %+v, %v", g, err)
	}
	if _, err := fx.client("other").Get(ctx, "pinned"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("another user sees it: %v", err)
	}
}
