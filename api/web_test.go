package api_test

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/proxytest"
	"github.com/minionsdev/minions/service"
)

// TestWebThroughAPI drives the web routes with the typed client against a
// real service whose links and domain checks come from a real proxy (local
// mode, never serving) and a loopback DNS server.
func TestWebThroughAPI(t *testing.T) {
	fx := newFixture(t)
	fx.seed()
	dns := proxytest.StartDNS(t, "example.org")
	secret := make([]byte, proxy.SecretSize)
	rand.Read(secret)
	p, err := proxy.New(proxy.Config{HTTPBind: "127.0.0.1:8080", Secret: secret, Resolver: dns.Resolver()}, proxytest.NewTable(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	owner, other := fx.client("owner"), fx.client("other")

	// Without a proxy, link minting says so.
	if _, err := owner.Share(ctx, "web", service.ShareRequest{}); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("share without a proxy: %v", err)
	}
	fx.svc.SetWeb(func(context.Context) (service.Web, error) { return p, nil })

	info, err := owner.Expose(ctx, "web", 8081)
	if err != nil || info.Port != 8081 || info.URL != "http://web.localhost:8080/" || info.Public {
		t.Fatalf("expose: %+v %v", info, err)
	}
	for _, port := range []int{0, -1, 65536} {
		if _, err := owner.Expose(ctx, "web", port); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("expose port %d: %v", port, err)
		}
	}
	info, err = owner.Share(ctx, "web", service.ShareRequest{})
	if err != nil || !strings.HasPrefix(info.LoginURL, "http://web.localhost:8080/__minions/login?token=") || info.ShareURL != "" || info.ExpiresAt.IsZero() {
		t.Fatalf("share: %+v %v", info, err)
	}
	yes := true
	info, err = owner.Share(ctx, "web", service.ShareRequest{Public: &yes})
	if err != nil || !info.Public || info.LoginURL != "" {
		t.Fatalf("share public: %+v %v", info, err)
	}
	info, err = owner.Share(ctx, "web", service.ShareRequest{Link: true, TTLSeconds: 3600})
	if err != nil || info.ShareURL == "" || info.LoginURL != "" {
		t.Fatalf("share link: %+v %v", info, err)
	}
	if _, err := owner.Share(ctx, "web", service.ShareRequest{TTLSeconds: 7200}); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("sign-in link for 2h: %v", err)
	}
	// An admin may change another's VM but gets no sign-in link for it.
	no := false
	if info, err := fx.client("admin").Share(ctx, "web", service.ShareRequest{Public: &no}); err != nil || info.Public || info.LoginURL != "" {
		t.Fatalf("admin makes alice's vm private: %+v %v", info, err)
	}
	if _, err := fx.client("admin").Share(ctx, "web", service.ShareRequest{}); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("admin sign-in link to alice's vm: %v", err)
	}

	// Custom domains: unverified until the TXT record is published.
	d, err := owner.AddDomain(ctx, "web", "WWW.Example.org.")
	if err != nil || d.Name != "www.example.org" || d.Verified || d.TXTName != "_minions-verify.www.example.org" ||
		d.TXTValue != p.DomainToken(mustID(t, fx, "web"), fx.callers["owner"].UserID, "www.example.org") || !strings.Contains(d.Problem, d.TXTValue) {
		t.Fatalf("add domain: %+v %v", d, err)
	}
	if _, err := owner.VerifyDomain(ctx, "web", "www.example.org"); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("verify without a record: %v", err)
	}
	dns.SetTXT(d.TXTName, d.TXTValue)
	if d, err = owner.VerifyDomain(ctx, "web", "www.example.org"); err != nil || !d.Verified {
		t.Fatalf("verify: %+v %v", d, err)
	}
	if _, err := owner.AddDomain(ctx, "db", "www.example.org"); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("same domain on another vm: %v", err)
	}
	for _, bad := range []string{"localhost", "x.localhost", "nodot", "a..b", "-a.org"} {
		if _, err := owner.AddDomain(ctx, "web", bad); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("add domain %q: %v", bad, err)
		}
	}
	ds, err := owner.ListDomains(ctx, "web")
	if err != nil || len(ds) != 1 || !ds[0].Verified || ds[0].VM != "web" {
		t.Fatalf("list domains: %+v %v", ds, err)
	}
	// Others see nothing, change nothing.
	if _, err := other.ListDomains(ctx, "web"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("other lists domains: %v", err)
	}
	if err := other.RemoveDomain(ctx, "web", "www.example.org"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("other removes a domain: %v", err)
	}
	if err := owner.RemoveDomain(ctx, "web", "www.example.org"); err != nil {
		t.Fatal(err)
	}
	if err := owner.RemoveDomain(ctx, "web", "www.example.org"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("remove twice: %v", err)
	}
	// Domains go with their VM.
	if _, err := owner.AddDomain(ctx, "web", "app.example.org"); err != nil {
		t.Fatal(err)
	}
	if err := owner.Destroy(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := fx.db.QueryRow(`SELECT count(*) FROM domains`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("domains after destroying their vm: %d %v", n, err)
	}
}

func mustID(t *testing.T, fx *fixture, name string) string {
	t.Helper()
	v, err := fx.svc.Get(context.Background(), fx.callers["owner"], name)
	if err != nil {
		t.Fatal(err)
	}
	return v.ID
}
