package api_test

import (
	"context"
	"crypto/rand"
	"testing"

	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/proxytest"
	"github.com/minionsdev/minions/service"
)

// ipWeb is a proxy that knows its DNS target, as the daemon's is when
// started with --domain and --public-ip.
type ipWeb struct {
	*proxy.Proxy
	ip string
}

func (w ipWeb) PublicIP() string { return w.ip }

// TestSharePublicIP: share and expose say where DNS must point a VM's host
// name when the Web knows it, through the API and its typed client.
func TestSharePublicIP(t *testing.T) {
	fx := newFixture(t)
	fx.seed()
	secret := make([]byte, proxy.SecretSize)
	rand.Read(secret)
	p, err := proxy.New(proxy.Config{Domain: "example.org", StorageDir: t.TempDir(), HTTPSBind: "127.0.0.1:443", HTTPBind: "127.0.0.1:80",
		Secret: secret, Resolver: proxytest.StartDNS(t, "example.org").Resolver()}, proxytest.NewTable(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	owner := fx.client("owner")
	fx.svc.SetWeb(func(context.Context) (service.Web, error) { return ipWeb{p, "203.0.113.7"}, nil })
	yes := true
	info, err := owner.Share(ctx, "web", service.ShareRequest{Public: &yes})
	if err != nil || info.URL != "https://web.example.org/" || info.PublicIP != "203.0.113.7" {
		t.Fatalf("share: %+v %v", info, err)
	}
	if info, err := owner.Expose(ctx, "web", 8080); err != nil || info.PublicIP != "203.0.113.7" {
		t.Fatalf("expose: %+v %v", info, err)
	}
	fx.svc.SetWeb(func(context.Context) (service.Web, error) { return p, nil })
	if info, err := owner.Share(ctx, "web", service.ShareRequest{Public: &yes}); err != nil || info.PublicIP != "" {
		t.Fatalf("share without a public ip: %+v %v", info, err)
	}
}
