package service

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

// webFixture is a service whose store holds user u1's running VM web
// (aaa, 10.0.0.2:8080) with the verified custom domain web.example.org.
func webFixture(t *testing.T) (*Service, *WebRoutes) {
	t.Helper()
	ctx := context.Background()
	fx := newFixture(t)
	db := fx.svc.DB
	if err := store.InsertUser(ctx, db, store.User{ID: "u1", Name: "carol", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertVM(ctx, db, store.VM{ID: "aaa", Name: "web", OwnerID: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.0.0.2", MAC: "52:54:00:00:00:01", CID: 3, State: store.StateRunning, Port: 8080, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []store.Domain{
		{Name: "web.example.org", VMID: "aaa", Token: "t1", CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)},
		{Name: "x.example.org", VMID: "aaa", Token: "t2", CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)},
	} {
		if err := store.ClaimDomain(ctx, db, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.VerifyDomainClaim(ctx, db, "web.example.org", "aaa"); err != nil {
		t.Fatal(err)
	}
	r, err := fx.svc.WebRoutes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return fx.svc, r
}

// The route table hands the proxy the VM's ID, owner and revocation
// counter from the store, and a bump reaches the very next request (the
// cache follows commits). Custom domains route only when verified, and
// only verified ones may get a certificate.
func TestWebRoutesCarryRevocationCounter(t *testing.T) {
	ctx := context.Background()
	svc, r := webFixture(t)
	rt, err := r.ByName(ctx, "web")
	if err != nil || rt.VMID != "aaa" || rt.VMName != "web" || rt.Owner != "u1" || rt.Gen != 0 || rt.Upstream != "10.0.0.2:8080" || !rt.Running || rt.Public {
		t.Fatalf("route = %+v, %v", rt, err)
	}
	if err := svc.DB.Tx(ctx, func(q store.Q) error { return store.BumpWebGen(ctx, q, "aaa") }); err != nil {
		t.Fatal(err)
	}
	if rt, err := r.ByName(ctx, "web"); err != nil || rt.Gen != 1 {
		t.Fatalf("route after a bump = %+v, %v", rt, err)
	}
	if _, err := r.ByName(ctx, "aaa"); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("the id is not a route: %v", err)
	}
	if rt, err := r.ByDomain(ctx, "web.example.org"); err != nil || rt.VMID != "aaa" || rt.Gen != 1 {
		t.Fatalf("custom domain route = %+v, %v", rt, err)
	}
	if _, err := r.ByDomain(ctx, "x.example.org"); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("an unverified domain routes: %v", err)
	}
	if _, err := r.ByDomain(ctx, "web"); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("a VM name is not a custom domain: %v", err)
	}
	if err := r.AllowCertificate(ctx, "web.example.org"); err != nil {
		t.Fatalf("verified domain refused a certificate: %v", err)
	}
	for _, name := range []string{"x.example.org", "other.example.org"} {
		if err := r.AllowCertificate(ctx, name); errs.ClassOf(err) != errs.PermissionDenied {
			t.Fatalf("certificate for %s: %v, want PermissionDenied", name, err)
		}
	}
}

// Even when the write-ahead log looks unchanged (two commits within one
// tick of the file system clock after a checkpoint), a cached route, and
// so a revoked session, lives at most RouteCacheTTL.
func TestWebRouteCacheBoundedWhenWALLooksUnchanged(t *testing.T) {
	ctx := context.Background()
	svc, r := webFixture(t)
	// Stamp a file that never changes: the cache cannot see commits.
	frozen := filepath.Join(t.TempDir(), "frozen-wal")
	if err := os.WriteFile(frozen, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.wal = frozen
	now := time.Unix(1_000_000, 0)
	r.now = func() time.Time { return now }
	if rt, err := r.ByName(ctx, "web"); err != nil || rt.Gen != 0 {
		t.Fatalf("route = %+v, %v", rt, err)
	}
	if err := svc.DB.Tx(ctx, func(q store.Q) error { return store.BumpWebGen(ctx, q, "aaa") }); err != nil {
		t.Fatal(err)
	}
	now = now.Add(RouteCacheTTL / 2)
	if rt, _ := r.ByName(ctx, "web"); rt.Gen != 0 {
		t.Fatalf("within the bound the cache answers (the test's premise): gen %d", rt.Gen)
	}
	now = now.Add(RouteCacheTTL / 2)
	if rt, err := r.ByName(ctx, "web"); err != nil || rt.Gen != 1 {
		t.Fatalf("route %s after the bump = %+v, %v; want gen 1", RouteCacheTTL, rt, err)
	}
}

// The proxy's secret is made once and kept; one-time links are used once;
// the endpoint document round-trips.
func TestWebSecretLinksAndEndpoint(t *testing.T) {
	ctx := context.Background()
	svc, _ := webFixture(t)
	a, err := svc.WebSecret(ctx, 32)
	if err != nil || len(a) != 32 {
		t.Fatalf("secret %x, %v", a, err)
	}
	if b, err := svc.WebSecret(ctx, 32); err != nil || string(a) != string(b) {
		t.Fatalf("second secret %x differs from %x (%v)", b, a, err)
	}
	exp := time.Now().Add(time.Minute)
	if fresh, err := svc.UseLink(ctx, "l1", exp); !fresh || err != nil {
		t.Fatalf("first use: %v %v", fresh, err)
	}
	if fresh, err := svc.UseLink(ctx, "l1", exp); fresh || err != nil {
		t.Fatalf("second use: %v %v", fresh, err)
	}
	if v, err := svc.WebEndpoint(ctx); v != "" || err != nil {
		t.Fatalf("endpoint before any = %q, %v", v, err)
	}
	if err := svc.SetWebEndpoint(ctx, `{"http_port":80}`); err != nil {
		t.Fatal(err)
	}
	if v, err := svc.WebEndpoint(ctx); v != `{"http_port":80}` || err != nil {
		t.Fatalf("endpoint = %q, %v", v, err)
	}
}
