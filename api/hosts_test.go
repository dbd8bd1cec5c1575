package api_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// TestHostsOverAPI: an admin adds a host, a node joins with the token
// alone (no caller credential), the admin sees, cordons and removes it;
// a user gets PermissionDenied (403) and sees nothing, an anonymous
// caller Unauthenticated.
func TestHostsOverAPI(t *testing.T) {
	fx := newFixture(t)
	fx.svc.SetHosts(service.HostsConfig{JoinURL: "http://cp.example:3000", NATSURLs: []string{"nats://cp.example:4222"}})
	ctx := context.Background()
	admin, user, anon := fx.client("admin"), fx.client("other"), fx.client("anon")

	inv, err := admin.HostAdd(ctx, "node1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(inv.Command, "minions node join http://cp.example:3000 --token mjt_") || inv.Host.State != "joining" {
		t.Fatalf("invite %+v", inv)
	}
	if _, err := user.HostAdd(ctx, "node2"); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("user add: %v", err)
	}
	if _, err := user.HostList(ctx); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("user list: %v", err)
	}
	if _, err := anon.HostStatus(ctx, "node1"); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("anonymous status: %v", err)
	}
	if err := user.HostRemove(ctx, "node1"); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("user remove: %v", err)
	}

	const pub = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
	res, err := anon.JoinHost(ctx, service.JoinRequest{Token: inv.Token, NKey: pub, Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.HostID != inv.Host.ID || res.Name != "node1" || len(res.NATS) != 1 || res.NATS[0] != "nats://cp.example:4222" {
		t.Fatalf("join %+v", res)
	}
	if _, err := anon.JoinHost(ctx, service.JoinRequest{Token: inv.Token, NKey: pub}); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("token reused: %v", err)
	}
	h, err := admin.HostStatus(ctx, "node1")
	if err != nil || h.Address != "127.0.0.1" || h.Version != "v1" {
		t.Fatalf("status %+v %v", h, err)
	}
	if err := fx.svc.RecordHeartbeat(ctx, res.HostID, service.Heartbeat{CPUs: 4, MemoryMiB: 8192}); err != nil {
		t.Fatal(err)
	}
	if h, err := admin.HostCordon(ctx, "node1"); err != nil || h.State != "cordoned" {
		t.Fatalf("cordon %+v %v", h, err)
	}
	if h, err := admin.HostUncordon(ctx, "node1"); err != nil || h.State != "ready" {
		t.Fatalf("uncordon %+v %v", h, err)
	}
	hs, err := admin.HostList(ctx)
	if err != nil || len(hs) != 1 || hs[0].CPUs != 4 {
		t.Fatalf("list %+v %v", hs, err)
	}
	if err := admin.HostRemove(ctx, "node1"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.HostStatus(ctx, "node1"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("after remove: %v", err)
	}
}
