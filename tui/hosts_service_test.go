package tui_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/tui"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

type nopNet struct{}

func (nopNet) AddPort(context.Context, string, netip.Addr, string) error { return nil }
func (nopNet) RemovePort(context.Context, string) error                  { return nil }

type noImages struct{}

func (noImages) Resolve(context.Context, string) (service.Image, error) {
	return service.Image{}, errs.New(errs.NotFound, "no images in this test")
}

type noDisks struct{}

func (noDisks) CreateOverlay(context.Context, string, string, string, int64) error { return nil }
func (noDisks) Clone(context.Context, string, string) error                        { return nil }
func (noDisks) Grow(context.Context, string, int64) error                          { return nil }

// TestHostsViewRealService runs the hosts view on the real service
// (SQLite, the host registry as `host add`, a node's join and its
// heartbeat leave it): the admin sees the joined node with the capacity
// it reported, cordons it from the dashboard and the registry says
// cordoned; a user's dashboard makes no host call, and a user's session
// that claims to be an admin is refused by the service and shows no host.
func TestHostsViewRealService(t *testing.T) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("/tmp", "tuih")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewSignerFromKey(priv)
	svc, err := service.New(service.Config{StateDir: dir, Log: slog.New(slog.DiscardHandler)},
		service.Deps{DB: db, Driver: fake.New(fake.Config{}), Network: nopNet{}, Images: noImages{}, Disks: noDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	svc.SetHosts(service.HostsConfig{JoinURL: "http://192.0.2.1:3000", Now: clock})
	root, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := svc.EnsureUser(ctx, "bob", false)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := svc.HostAdd(ctx, root, "node1")
	if err != nil {
		t.Fatal(err)
	}
	const pub = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
	res, err := svc.JoinHost(ctx, service.JoinRequest{Token: inv.Token, NKey: pub, Version: "v7", Address: "192.0.2.11"})
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(-3 * time.Second)
	if err := svc.RecordHeartbeat(ctx, res.HostID, service.Heartbeat{CPUs: 12, MemoryMiB: 32768, DiskMiB: 204800,
		MemoryFreeMiB: 30000, DiskFreeMiB: 190000, Version: "v7"}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(3 * time.Second)
	if _, err := svc.HostAdd(ctx, root, "node2"); err != nil {
		t.Fatal(err)
	}

	dash := func(c service.Caller, admin bool) *driver {
		opts := tui.Options{Backend: svc.As(c), Renderer: asciiRenderer(), User: c.Name, Admin: admin, Width: 160, Height: 20,
			Refresh: -1, Now: clock}
		m, err := tui.New(opts)
		if err != nil {
			t.Fatal(err)
		}
		return newDriver(t, m)
	}

	d := dash(root, true)
	d.keys("h")
	v := d.view()
	for _, w := range []string{"Hosts  (2)", "node1", "ready", "192.0.2.11", "0/12", "0/32G", "0/200G", "3s ago", "v7",
		"node2", "joining", "never"} {
		if !strings.Contains(v, w) {
			t.Errorf("admin's hosts view lacks %q:\n%s", w, v)
		}
	}
	d.keys("c", "y")
	if h, err := svc.HostStatus(ctx, root, "node1"); err != nil || h.State != "cordoned" {
		t.Fatalf("node1 after c y: %+v %v", h, err)
	}
	if v := d.view(); !strings.Contains(v, "cordoned host node1") || !strings.Contains(v, "node1 · cordoned") {
		t.Errorf("after cordon:\n%s", v)
	}
	d.keys("u", "y")
	if h, err := svc.HostStatus(ctx, root, "node1"); err != nil || h.State != "ready" {
		t.Fatalf("node1 after u y: %+v %v", h, err)
	}
	d.keys("j", "c", "y") // node2 has not joined: the service says so
	if v := d.view(); !strings.Contains(v, "cordon host node2: not now:") || !strings.Contains(v, "not joined") {
		t.Errorf("cordon of a joining host:\n%s", v)
	}

	u := dash(bob, false)
	u.keys("h")
	if v := u.view(); !strings.Contains(v, "only admins") || strings.Contains(v, "node1") {
		t.Errorf("a user's dashboard after h:\n%s", v)
	}
	// A session wrongly built as an admin's still gets nothing: the
	// service decides.
	w := dash(bob, true)
	w.keys("h")
	if v := w.view(); !strings.Contains(v, "not allowed") || strings.Contains(v, "node1") {
		t.Errorf("a user's session marked admin:\n%s", v)
	}
}
