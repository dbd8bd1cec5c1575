package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/service"
)

// TestSharePublicIP: the proxy a CLI builds from the daemon's recorded
// endpoint carries --public-ip for a domain (so `share` can say where DNS
// must point) and not in local mode.
func TestSharePublicIP(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	svc := testService(t, dir)
	paths := local.Paths{State: dir, Run: filepath.Join(dir, "run")}
	web := func(ep proxyEndpoint) service.Web {
		t.Helper()
		b, _ := json.Marshal(ep)
		if err := svc.SetWebEndpoint(ctx, string(b)); err != nil {
			t.Fatal(err)
		}
		w, err := storedWeb(svc, paths, slog.New(slog.DiscardHandler))(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	w := web(proxyEndpoint{Domain: "example.com", HTTPSPort: 443, HTTPPort: 80, PublicIP: "203.0.113.7"})
	p, ok := w.(service.PublicIPWeb)
	if !ok || p.PublicIP() != "203.0.113.7" || w.URL("web") != "https://web.example.com/" {
		t.Fatalf("domain proxy: %T %v", w, w.URL("web"))
	}
	if w := web(proxyEndpoint{HTTPPort: 8080, PublicIP: "203.0.113.7"}); w.URL("web") != "http://web.localhost:8080/" {
		t.Fatalf("local proxy URL %s", w.URL("web"))
	} else if _, ok := w.(service.PublicIPWeb); ok {
		t.Fatalf("a *.localhost proxy claims a DNS target")
	}
}
