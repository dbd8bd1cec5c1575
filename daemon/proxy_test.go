package daemon

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/proxy/serviceweb"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

type nopNet struct{}

func (nopNet) AddPort(context.Context, string, netip.Addr, string) error { return nil }
func (nopNet) RemovePort(context.Context, string) error                  { return nil }

// testService is a real service (SQLite in dir) over the fake driver and
// the catalogue in dir/images.
func testService(t *testing.T, dir string) *service.Service {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewSignerFromKey(priv)
	cat := &images.Catalog{Dir: filepath.Join(dir, "images")}
	svc, err := service.New(service.Config{StateDir: dir, Log: slog.New(slog.DiscardHandler)},
		service.Deps{DB: db, Driver: fake.New(fake.Config{}), Network: nopNet{}, Images: service.NewHostCatalog(cat, local.AgentBinary), Disks: engine.HostDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// The proxy's route table is the service's: <vm>.<domain> is the VM by
// name, another host a verified custom domain, and an unknown host is
// NotFound naming the host; one-time links are the service's ledger.
func TestProxyRoutesAskTheService(t *testing.T) {
	ctx := context.Background()
	svc := testService(t, t.TempDir())
	db := svc.DB
	if err := store.InsertUser(ctx, db, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertVM(ctx, db, store.VM{ID: "aaa", Name: "web", OwnerID: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.0.0.2", MAC: "52:54:00:00:00:01", CID: 3, State: store.StateRunning, Port: 8080, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	wr, err := svc.WebRoutes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer wr.Close()
	r := serviceweb.Routes{Domain: "example.test", R: wr}
	rt, err := r.Route(ctx, "web.example.test")
	if err != nil || rt.VMID != "aaa" || rt.Owner != "u1" || rt.Gen != 0 || rt.Upstream != "10.0.0.2:8080" || !rt.Running {
		t.Fatalf("route = %+v, %v", rt, err)
	}
	if err := db.Tx(ctx, func(q store.Q) error { return store.BumpWebGen(ctx, q, "aaa") }); err != nil {
		t.Fatal(err)
	}
	if rt, err := r.Route(ctx, "web.example.test"); err != nil || rt.Gen != 1 {
		t.Fatalf("route after a bump = %+v, %v", rt, err)
	}
	for _, host := range []string{"aaa.example.test", "web.other.test", "web.localhost"} {
		if _, err := r.Route(ctx, host); errs.ClassOf(err) != errs.NotFound || err.Error() != "no vm serves "+host {
			t.Fatalf("route %s: %v", host, err)
		}
	}
	if err := r.AllowCertificate(ctx, "web.other.test"); errs.ClassOf(err) != errs.PermissionDenied {
		t.Fatalf("certificate for an unclaimed domain: %v", err)
	}
	links := serviceweb.Links{Svc: svc}
	exp := time.Now().Add(time.Minute)
	if fresh, err := links.Use(ctx, "l1", exp); !fresh || err != nil {
		t.Fatalf("first use: %v %v", fresh, err)
	}
	if fresh, err := links.Use(ctx, "l1", exp); fresh || err != nil {
		t.Fatalf("second use: %v %v", fresh, err)
	}
}
