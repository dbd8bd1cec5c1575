package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// TestHostRoutesAdminOnly: every /v1/hosts route refuses a user (403,
// PermissionDenied) and an anonymous caller (401) and changes nothing;
// DELETE is refused (409, FailedPrecondition) while a VM is on the host,
// which stays.
func TestHostRoutesAdminOnly(t *testing.T) {
	fx := newFixture(t)
	fx.svc.SetHosts(service.HostsConfig{JoinURL: "http://cp.example:3000"})
	ctx := context.Background()
	admin := fx.client("admin")
	inv, err := admin.HostAdd(ctx, "node1")
	if err != nil {
		t.Fatal(err)
	}
	const pub = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
	res, err := fx.svc.JoinHost(ctx, service.JoinRequest{Token: inv.Token, NKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	if err := fx.svc.RecordHeartbeat(ctx, res.HostID, service.Heartbeat{CPUs: 4, MemoryMiB: 4096}); err != nil {
		t.Fatal(err)
	}
	calls := map[string]func(c *api.Client) error{
		"list":     func(c *api.Client) error { _, err := c.HostList(ctx); return err },
		"add":      func(c *api.Client) error { _, err := c.HostAdd(ctx, "node2"); return err },
		"status":   func(c *api.Client) error { _, err := c.HostStatus(ctx, "node1"); return err },
		"cordon":   func(c *api.Client) error { _, err := c.HostCordon(ctx, "node1"); return err },
		"uncordon": func(c *api.Client) error { _, err := c.HostUncordon(ctx, "node1"); return err },
		"remove":   func(c *api.Client) error { return c.HostRemove(ctx, "node1") },
	}
	for _, who := range []struct {
		role string
		want error
	}{{"owner", errs.PermissionDenied}, {"other", errs.PermissionDenied}, {"anon", errs.Unauthenticated}} {
		c := fx.client(who.role)
		for name, call := range calls {
			if err := call(c); !errors.Is(err, who.want) {
				t.Errorf("%s as %s: %v, want %v", name, who.role, err, who.want)
			}
		}
	}
	hs, err := admin.HostList(ctx)
	if err != nil || len(hs) != 1 || hs[0].Name != "node1" || hs[0].State != "ready" {
		t.Fatalf("hosts after refused calls: %+v %v", hs, err)
	}

	v := store.VM{ID: vm.NewID(), Name: "web", OwnerID: fx.callers["owner"].UserID, Image: "minimal", CPUs: 2, MemoryMiB: 512, DiskGiB: 3,
		IP: "10.210.0.9", MAC: "02:00:00:00:00:09", CID: 9, State: store.StateRunning, CreatedAt: time.Now()}
	if err := store.InsertVM(ctx, fx.db, v); err != nil {
		t.Fatal(err)
	}
	if err := store.SetVMHost(ctx, fx.db, v.ID, res.HostID); err != nil {
		t.Fatal(err)
	}
	if err := admin.HostRemove(ctx, "node1"); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("remove with a vm: %v", err)
	}
	// On the wire: 409 with the class's code.
	req, _ := http.NewRequest(http.MethodDelete, fx.url+"/v1/hosts/node1", nil)
	req.Header.Set("Authorization", "Bearer "+fx.tokens["admin"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Error api.Error }
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || body.Error.Code != "failed_precondition" {
		t.Fatalf("DELETE with a vm: %d %+v", resp.StatusCode, body)
	}
	if h, err := admin.HostStatus(ctx, "node1"); err != nil || h.VMs != 1 {
		t.Fatalf("after the refused remove: %+v %v", h, err)
	}
}
