package service

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/scheduler"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

const testNKey = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4" // the nkeys README's example user key

func hostFixture(t *testing.T) (*fixture, *fakeClock, Caller) {
	t.Helper()
	fx := newFixture(t)
	clk := &fakeClock{t: time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)}
	fx.svc.SetHosts(HostsConfig{JoinURL: "http://203.0.113.7:3000", NATSURLs: []string{"nats://203.0.113.7:4222"}, Now: clk.Now})
	root, err := fx.svc.EnsureUser(context.Background(), "root", true)
	if err != nil {
		t.Fatal(err)
	}
	return fx, clk, root
}

func hostState(t *testing.T, s *Service, c Caller, name string) Host {
	t.Helper()
	h, err := s.HostStatus(context.Background(), c, name)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestHostJoinHeartbeatUnreachable walks a host through add, join,
// heartbeats, silence (unreachable after 10 s), cordon and back.
func TestHostJoinHeartbeatUnreachable(t *testing.T) {
	ctx := context.Background()
	fx, clk, root := hostFixture(t)
	s := fx.svc

	inv, err := s.HostAdd(ctx, root, "node1")
	if err != nil {
		t.Fatal(err)
	}
	if want := "minions node join http://203.0.113.7:3000 --token " + inv.Token; inv.Command != want {
		t.Fatalf("command %q, want %q", inv.Command, want)
	}
	if inv.Host.State != store.HostJoining {
		t.Fatalf("new host state %q", inv.Host.State)
	}
	if _, err := s.HostAdd(ctx, root, "node1"); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("second add: %v", err)
	}
	// A wrong token, a malformed key: refused, the token unspent.
	if _, err := s.JoinHost(ctx, JoinRequest{Token: "mjt_guess", NKey: testNKey}); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("wrong token: %v", err)
	}
	if _, err := s.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: "not-a-key"}); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("bad key: %v", err)
	}
	res, err := s.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: testNKey, Version: "v1", Address: "198.51.100.2"})
	if err != nil {
		t.Fatal(err)
	}
	if res.HostID != inv.Host.ID || res.Name != "node1" || len(res.NATS) != 1 {
		t.Fatalf("join result %+v", res)
	}
	// One time only.
	if _, err := s.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: testNKey}); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("token reused: %v", err)
	}
	if id, ok := s.NodeKey(ctx, testNKey); !ok || id != res.HostID {
		t.Fatalf("NodeKey = %q %v", id, ok)
	}
	if _, ok := s.NodeKey(ctx, ""); ok {
		t.Fatal("empty key maps to a host")
	}
	if h := hostState(t, s, root, "node1"); h.State != store.HostJoining || h.Address != "198.51.100.2" {
		t.Fatalf("after join: %+v", h)
	}

	hb := Heartbeat{CPUs: 8, MemoryMiB: 16384, DiskMiB: 100000, MemoryFreeMiB: 12000, DiskFreeMiB: 90000, Version: "v2"}
	if err := s.RecordHeartbeat(ctx, res.HostID, hb); err != nil {
		t.Fatal(err)
	}
	h := hostState(t, s, root, "node1")
	if h.State != store.HostReady || h.CPUs != 8 || h.MemoryFreeMiB != 12000 || h.Version != "v2" || !h.LastHeartbeat.Equal(clk.Now()) {
		t.Fatalf("after heartbeat: %+v", h)
	}
	clk.Add(10 * time.Second)
	if h := hostState(t, s, root, "node1"); h.State != store.HostReady {
		t.Fatalf("10 s after the heartbeat: %q", h.State)
	}
	clk.Add(time.Second)
	if h := hostState(t, s, root, "node1"); h.State != HostUnreachable {
		t.Fatalf("11 s after the heartbeat: %q", h.State)
	}
	s.RecordHeartbeat(ctx, res.HostID, hb)
	if h := hostState(t, s, root, "node1"); h.State != store.HostReady {
		t.Fatalf("heard again: %q", h.State)
	}

	h, err = s.HostCordon(ctx, root, "node1")
	if err != nil || h.State != store.HostCordoned || !h.Cordoned {
		t.Fatalf("cordon: %+v %v", h, err)
	}
	clk.Add(time.Minute)
	if h := hostState(t, s, root, "node1"); h.State != HostUnreachable || !h.Cordoned {
		t.Fatalf("cordoned and silent: %+v", h)
	}
	s.RecordHeartbeat(ctx, res.HostID, hb)
	if h, err := s.HostUncordon(ctx, root, "node1"); err != nil || h.State != store.HostReady || h.Cordoned {
		t.Fatalf("uncordon: %+v %v", h, err)
	}
	if err := s.RecordHeartbeat(ctx, "nosuchhost", hb); !errors.Is(err, errs.NotFound) {
		t.Fatalf("heartbeat of an unknown host: %v", err)
	}
	if err := s.RecordHeartbeat(ctx, res.HostID, Heartbeat{CPUs: -1}); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("negative heartbeat: %v", err)
	}
}

func TestHostJoinTokenExpires(t *testing.T) {
	ctx := context.Background()
	fx, clk, root := hostFixture(t)
	inv, err := fx.svc.HostAdd(ctx, root, "late")
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour + time.Second)
	if _, err := fx.svc.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: testNKey}); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("expired token: %v", err)
	}
	if _, ok := fx.svc.NodeKey(ctx, testNKey); ok {
		t.Fatal("an expired token gave a credential")
	}
}

// TestHostAdminOnly: users other than admins can do nothing with hosts,
// and nothing changes.
func TestHostAdminOnly(t *testing.T) {
	ctx := context.Background()
	fx, _, root := hostFixture(t)
	if _, err := fx.svc.HostAdd(ctx, root, "node1"); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func(Caller) error{
		"add":      func(c Caller) error { _, err := fx.svc.HostAdd(ctx, c, "node2"); return err },
		"list":     func(c Caller) error { _, err := fx.svc.HostList(ctx, c); return err },
		"status":   func(c Caller) error { _, err := fx.svc.HostStatus(ctx, c, "node1"); return err },
		"cordon":   func(c Caller) error { _, err := fx.svc.HostCordon(ctx, c, "node1"); return err },
		"uncordon": func(c Caller) error { _, err := fx.svc.HostUncordon(ctx, c, "node1"); return err },
		"remove":   func(c Caller) error { return fx.svc.HostRemove(ctx, c, "node1") },
	} {
		if err := call(fx.user); !errors.Is(err, errs.PermissionDenied) {
			t.Errorf("%s as a user: %v", name, err)
		}
		if err := call(Caller{}); !errors.Is(err, errs.Unauthenticated) {
			t.Errorf("%s anonymous: %v", name, err)
		}
	}
	hs, err := fx.svc.HostList(ctx, root)
	if err != nil || len(hs) != 1 || hs[0].Name != "node1" {
		t.Fatalf("hosts after refused calls: %+v %v", hs, err)
	}
}

// TestHostRemove: refused while a VM is on the host, and for the local
// host; afterwards the node's key no longer maps to a host.
func TestHostRemove(t *testing.T) {
	ctx := context.Background()
	fx, _, root := hostFixture(t)
	s := fx.svc
	inv, _ := s.HostAdd(ctx, root, "node1")
	res, err := s.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: testNKey})
	if err != nil {
		t.Fatal(err)
	}
	v := store.VM{ID: vm.NewID(), Name: "web", OwnerID: fx.user.UserID, Image: "minimal", CPUs: 2, MemoryMiB: 512, DiskGiB: 3,
		IP: "10.210.0.9", MAC: "02:00:00:00:00:09", CID: 9, State: store.StateRunning, CreatedAt: time.Now()}
	if err := store.InsertVM(ctx, s.DB, v); err != nil {
		t.Fatal(err)
	}
	if err := store.SetVMHost(ctx, s.DB, v.ID, res.HostID); err != nil {
		t.Fatal(err)
	}
	h := hostState(t, s, root, "node1")
	if h.VMs != 1 || h.UsedCPUs != 2 || h.UsedMemoryMiB != 512 || h.UsedDiskGiB != 3 {
		t.Fatalf("use: %+v", h)
	}
	err = s.HostRemove(ctx, root, "node1")
	if !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "1 vm") {
		t.Fatalf("remove with a vm: %v", err)
	}
	if _, ok := s.NodeKey(ctx, testNKey); !ok {
		t.Fatal("a refused remove changed the host")
	}
	// The local host: VMs with no host are its; it cannot be removed.
	localID, err := s.EnsureLocalHost(ctx, "cp", "", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := s.EnsureLocalHost(ctx, "cp", "", "v2"); again != localID {
		t.Fatalf("local host registered twice: %s, %s", localID, again)
	}
	if err := s.HostRemove(ctx, root, "cp"); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("remove the local host: %v", err)
	}
	store.SetVMHost(ctx, s.DB, v.ID, "")
	if h := hostState(t, s, root, "cp"); h.VMs != 1 || !h.Local {
		t.Fatalf("local host: %+v", h)
	}
	if err := s.HostRemove(ctx, root, "node1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.NodeKey(ctx, testNKey); ok {
		t.Fatal("a removed host's key still maps")
	}
	if err := s.HostRemove(ctx, root, "node1"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("remove twice: %v", err)
	}
}

// TestHostAddNeedsAddress: without a join URL, add says what to set.
func TestHostAddNeedsAddress(t *testing.T) {
	fx, _, root := hostFixture(t)
	fx.svc.SetHosts(HostsConfig{})
	_, err := fx.svc.HostAdd(context.Background(), root, "node1")
	if !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "advertise") {
		t.Fatalf("add without an address: %v", err)
	}
	if hs, _ := fx.svc.HostList(context.Background(), root); len(hs) != 0 {
		t.Fatalf("hosts: %+v", hs)
	}
}

// TestPlaceVM: placement over the registry skips cordoned, joining and
// unreachable hosts, counts the VMs already there, and honours a pin.
func TestPlaceVM(t *testing.T) {
	ctx := context.Background()
	fx, clk, root := hostFixture(t)
	s := fx.svc
	join := func(name, key string, cpus int, mem int64) string {
		inv, err := s.HostAdd(ctx, root, name)
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: key})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RecordHeartbeat(ctx, res.HostID, Heartbeat{CPUs: cpus, MemoryMiB: mem, DiskFreeMiB: 100000}); err != nil {
			t.Fatal(err)
		}
		return res.HostID
	}
	big := join("big", testNKey, 16, 65536)
	join("small", "UAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 2, 2048)
	if _, err := s.HostAdd(ctx, root, "pending"); err != nil { // joining: never chosen
		t.Fatal(err)
	}
	req := scheduler.Request{CPUs: 1, MemoryMiB: 1024, DiskMiB: 2048}
	if h, err := s.PlaceVM(ctx, req, scheduler.Config{}); err != nil || h.Name != "big" {
		t.Fatalf("spread: %+v %v", h, err)
	}
	if h, err := s.PlaceVM(ctx, req, scheduler.Config{Policy: scheduler.Binpack}); err != nil || h.Name != "small" {
		t.Fatalf("binpack: %+v %v", h, err)
	}
	// 60,000 MiB of running VMs on big (ratio 1.5: 96 GiB) leave small's
	// share larger: spread now picks small.
	v := store.VM{ID: vm.NewID(), Name: "fat", OwnerID: fx.user.UserID, Image: "minimal", CPUs: 1, MemoryMiB: 60000, DiskGiB: 1,
		IP: "10.210.0.9", MAC: "02:00:00:00:00:09", CID: 9, State: store.StateRunning, CreatedAt: time.Now()}
	store.InsertVM(ctx, s.DB, v)
	store.SetVMHost(ctx, s.DB, v.ID, big)
	if h, err := s.PlaceVM(ctx, req, scheduler.Config{}); err != nil || h.Name != "small" {
		t.Fatalf("spread with big full: %+v %v", h, err)
	}
	if _, err := s.HostCordon(ctx, root, "small"); err != nil {
		t.Fatal(err)
	}
	if h, err := s.PlaceVM(ctx, req, scheduler.Config{}); err != nil || h.Name != "big" {
		t.Fatalf("small cordoned: %+v %v", h, err)
	}
	if _, err := s.PlaceVM(ctx, scheduler.Request{CPUs: 1, MemoryMiB: 1024, Host: "small"}, scheduler.Config{}); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("pinned on a cordoned host: %v", err)
	}
	clk.Add(11 * time.Second) // nobody heard from: nothing to place on
	_, err := s.PlaceVM(ctx, req, scheduler.Config{})
	if !errors.Is(err, errs.ResourceExhausted) || !strings.Contains(err.Error(), "big: unreachable") {
		t.Fatalf("all unreachable: %v", err)
	}
}
