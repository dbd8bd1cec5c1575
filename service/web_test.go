package service

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/proxytest"
	"github.com/minionsdev/minions/store"
)

const webDomain = "example.test"

// withWeb gives the fixture a real (never serving) proxy under webDomain
// whose domain checks ask a loopback DNS server.
func withWeb(t *testing.T, fx *fixture) *proxytest.DNS {
	t.Helper()
	dns := proxytest.StartDNS(t, "custom.org")
	key := make([]byte, proxy.SecretSize)
	rand.Read(key)
	p, err := proxy.New(proxy.Config{Domain: webDomain, StorageDir: t.TempDir(), HTTPSBind: "127.0.0.1:0", HTTPBind: "127.0.0.1:0",
		Secret: key, Resolver: dns.Resolver()}, proxytest.NewTable(), nil)
	if err != nil {
		t.Fatal(err)
	}
	fx.svc.SetWeb(func(context.Context) (Web, error) { return p, nil })
	return dns
}

func insertVM(t *testing.T, fx *fixture, id, name, ownerID string, n int) {
	t.Helper()
	err := store.InsertVM(context.Background(), fx.svc.DB, store.VM{ID: id, Name: name, OwnerID: ownerID, Image: "minimal@1", CPUs: 1, MemoryMiB: 256,
		DiskGiB: 1, IP: "10.210.0." + string(rune('0'+n)), MAC: "02:00:00:00:00:0" + string(rune('0'+n)), CID: uint32(n + 2), State: store.StateStopped, CreatedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
}

// share --private and rename move the VM's revocation counter in their
// own transaction; other web changes do not; links carry the counter.
func TestWebGenBumps(t *testing.T) {
	fx := newFixture(t)
	withWeb(t, fx)
	ctx := context.Background()
	insertVM(t, fx, "aaaaaaaaaaaa", "web", fx.user.UserID, 1)
	gen := func() int64 {
		t.Helper()
		g, err := store.WebGen(ctx, fx.svc.DB, "aaaaaaaaaaaa")
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	yes, no := true, false
	steps := []struct {
		name string
		do   func() error
		want int64
	}{
		{"share link", func() error { _, err := fx.svc.Share(ctx, fx.user, "web", ShareRequest{Link: true}); return err }, 0},
		{"expose", func() error { _, err := fx.svc.Expose(ctx, fx.user, "web", 8080); return err }, 0},
		{"share --public", func() error { _, err := fx.svc.Share(ctx, fx.user, "web", ShareRequest{Public: &yes}); return err }, 0},
		{"share --private", func() error { _, err := fx.svc.Share(ctx, fx.user, "web", ShareRequest{Public: &no}); return err }, 1},
		{"share --private again", func() error { _, err := fx.svc.Share(ctx, fx.user, "web", ShareRequest{Public: &no}); return err }, 2},
		{"rename", func() error { _, err := fx.svc.Rename(ctx, fx.user, "web", "prod"); return err }, 3},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if g := gen(); g != st.want {
			t.Fatalf("after %s: web gen %d, want %d", st.name, g, st.want)
		}
	}
	// A failed rename (name taken) changes nothing.
	insertVM(t, fx, "bbbbbbbbbbbb", "other", fx.user.UserID, 2)
	if _, err := fx.svc.Rename(ctx, fx.user, "prod", "other"); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("rename onto a taken name: %v", err)
	}
	if g := gen(); g != 3 {
		t.Fatalf("failed rename moved the counter to %d", g)
	}
	info, err := fx.svc.Share(ctx, fx.user, "prod", ShareRequest{})
	if err != nil || !strings.HasPrefix(info.LoginURL, "https://prod."+webDomain+"/__minions/login?token=") {
		t.Fatalf("login link: %+v %v", info, err)
	}
}

// Unverified claims block nobody and lapse; the first verified claim wins;
// the CNAME target is the VM's immutable ID host and the TXT value names
// the VM and its owner.
func TestDomainClaimsCountOnceVerified(t *testing.T) {
	fx := newFixture(t)
	dns := withWeb(t, fx)
	ctx := context.Background()
	bob, _ := fx.svc.EnsureUser(ctx, "bob", false)
	insertVM(t, fx, "aaaaaaaaaaaa", "web", fx.user.UserID, 1)
	insertVM(t, fx, "bbbbbbbbbbbb", "squat", bob.UserID, 2)
	const name = "www.custom.org"

	// Bob claims first and never verifies: Alice is not blocked.
	if d, err := fx.svc.AddDomain(ctx, bob, "squat", name); err != nil || d.Verified || d.ExpiresAt.IsZero() {
		t.Fatalf("bob claims: %+v %v", d, err)
	}
	d, err := fx.svc.AddDomain(ctx, fx.user, "web", name)
	if err != nil || d.Verified {
		t.Fatalf("alice claims a name bob claimed unverified: %+v %v", d, err)
	}
	if d.CNAMETarget != "aaaaaaaaaaaa."+webDomain || !strings.Contains(d.TXTValue, "vm:aaaaaaaaaaaa,owner:"+fx.user.UserID+",") {
		t.Fatalf("verification targets: %+v", d)
	}
	// A CNAME to the VM's (recyclable) name proves nothing.
	dns.SetCNAME(name, "web."+webDomain)
	if _, err := fx.svc.VerifyDomain(ctx, fx.user, "web", name); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("verify by a CNAME to the name: %v", err)
	}
	dns.SetCNAME(name, d.CNAMETarget)
	if d, err := fx.svc.VerifyDomain(ctx, fx.user, "web", name); err != nil || !d.Verified || !d.ExpiresAt.IsZero() {
		t.Fatalf("verify by a CNAME to the id host: %+v %v", d, err)
	}
	// Bob's unverified claim is gone; he cannot claim it now.
	if ds, err := fx.svc.ListDomains(ctx, bob, "squat"); err != nil || len(ds) != 0 {
		t.Fatalf("bob's claims after alice verified: %+v %v", ds, err)
	}
	if _, err := fx.svc.AddDomain(ctx, bob, "squat", name); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("bob claims a verified name: %v", err)
	}

	// A claim that lapsed unverified no longer counts.
	const other = "app.custom.org"
	if _, err := fx.svc.AddDomain(ctx, bob, "squat", other); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.svc.DB.Exec(`UPDATE domains SET expires_at = ? WHERE name = ?`, time.Now().Add(-time.Second).UnixMilli(), other); err != nil {
		t.Fatal(err)
	}
	if ds, _ := fx.svc.ListDomains(ctx, bob, "squat"); len(ds) != 0 {
		t.Fatalf("lapsed claim listed: %+v", ds)
	}
	if _, err := fx.svc.VerifyDomain(ctx, bob, "squat", other); !errors.Is(err, errs.NotFound) {
		t.Fatalf("verify a lapsed claim: %v", err)
	}
	// The TXT value is bound to VM, owner and name.
	ad, err := fx.svc.AddDomain(ctx, fx.user, "web", other)
	if err != nil || ad.Verified {
		t.Fatalf("alice claims %s: %+v %v", other, ad, err)
	}
	dns.SetTXT(txtPrefix+"."+other, ad.TXTValue)
	if ad, err := fx.svc.VerifyDomain(ctx, fx.user, "web", other); err != nil || !ad.Verified {
		t.Fatalf("verify by TXT: %+v %v", ad, err)
	}
}
