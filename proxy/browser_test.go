package proxy_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/proxytest"
	"github.com/minionsdev/minions/store"
)

// storeLedger is the daemon's LinkLedger: used links in real SQLite.
type storeLedger struct{ db *store.DB }

func (l storeLedger) Use(ctx context.Context, id string, exp time.Time) (bool, error) {
	return store.UseLink(ctx, l.db, id, exp, time.Now())
}

// TestBrowserLinks is what people meet in a browser, in a real headless
// Chromium (each profile directory is one person's browser) against the
// real proxy in local mode, with used links in a real SQLite store and a
// real HTTP server standing in for the VM's web server:
//   - the owner opens a sign-in link and lands on the VM's page;
//   - the same link opened again, in a fresh profile, shows "already used";
//   - a private VM opened without a cookie shows the private page;
//   - a share link admits a second profile, whose cookie then opens the
//     plain URL, also after that browser is restarted.
func TestBrowserLinks(t *testing.T) {
	proxytest.ChromiumPath(t)
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l := startLocal(t, func(c *proxy.Config) { c.Links = storeLedger{db} })
	up := proxytest.StartUpstream(t, "priv")
	l.table.Set("priv.localhost", proxy.Route{VMID: "vm4", VMName: "priv", Owner: "alice", Upstream: up.Addr, Running: true, Gen: 2})
	home := l.url("priv", "/")
	const vmPage = "hello from priv"
	profiles := t.TempDir()
	profile := func(name string) string { return filepath.Join(profiles, name) }

	link := l.p.LoginLink("priv", "vm4", "alice", 2, time.Minute)
	t.Run("sign-in link lands on the vm", func(t *testing.T) {
		owner := proxytest.StartBrowser(t, profile("owner"))
		if pg := owner.Open(link); pg.URL != home || pg.Text != vmPage {
			t.Fatalf("owner after the sign-in link: %v; want %s showing %q", pg, home, vmPage)
		}
		if pg := owner.Open(home); pg.Text != vmPage {
			t.Fatalf("owner on the plain url: %v", pg)
		}
	})
	t.Run("replayed link is already used", func(t *testing.T) {
		other := proxytest.StartBrowser(t, profile("replay"))
		pg := other.Open(link)
		if pg.Title != "Sign-in link already used" || !strings.Contains(pg.Text, "Each sign-in link works once") {
			t.Fatalf("replayed link: %v", pg)
		}
		if pg := other.Open(home); pg.Title != "This VM is private" {
			t.Fatalf("replaying browser got in: %v", pg)
		}
	})
	t.Run("private vm without a cookie", func(t *testing.T) {
		anon := proxytest.StartBrowser(t, profile("anon"))
		pg := anon.Open(home)
		if pg.Title != "This VM is private" || !strings.Contains(pg.Text, "Only its owner can open priv.localhost") ||
			strings.Contains(pg.Text, vmPage) {
			t.Fatalf("private vm, no cookie: %v", pg)
		}
	})
	t.Run("share link admits a second profile", func(t *testing.T) {
		share := l.p.ShareLink("priv", "vm4", "alice", 2, time.Hour)
		guest := proxytest.StartBrowser(t, profile("guest"))
		if pg := guest.Open(home); pg.Title != "This VM is private" {
			t.Fatalf("guest before the share link: %v", pg)
		}
		if pg := guest.Open(share); pg.URL != home || pg.Text != vmPage {
			t.Fatalf("guest after the share link: %v", pg)
		}
		if pg := guest.Open(l.url("priv", "/again")); pg.Text != vmPage {
			t.Fatalf("guest on a plain url: %v", pg)
		}
		// The session cookie is persistent: it is in the profile when the
		// same person opens the browser again.
		guest.Close()
		again := proxytest.StartBrowser(t, profile("guest"))
		if pg := again.Open(home); pg.Text != vmPage {
			t.Fatalf("guest after restarting the browser: %v", pg)
		}
	})
}
