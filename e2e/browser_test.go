package e2e

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minionsdev/minions/proxy/proxytest"
)

// TestBrowserLinksRealVM is issue 12's browser check on a real VM behind
// the real daemon's local proxy, in real headless Chromium (one profile
// directory per person): the owner's sign-in link from `minions share`
// lands on the VM's page; the same link in a fresh profile says "already
// used"; the private VM without a cookie shows the private page; a share
// link admits a second profile, which then opens the plain URL.
func TestBrowserLinksRealVM(t *testing.T) {
	proxytest.ChromiumPath(t)
	setup(t)
	dir := t.TempDir()
	t.Cleanup(func() { minions(t, "", "destroy", "bweb", "--yes") })
	httpAddr := freePort(t)
	d := startDaemon(t, dir, "", "--http-bind", httpAddr)
	t.Cleanup(func() { d.stop(t) })
	_, port, _ := net.SplitHostPort(httpAddr)
	home := "http://bweb.localhost:" + port + "/"

	var vm vmJSON
	mustJSON(t, &vm, "create", "bweb")
	page := "page of bweb " + vm.ID
	must(t, "exec", "bweb", "--", "sh", "-c", "mkdir -p /www && echo '"+page+"' > /www/index.html && httpd -p 80 -h /www")
	waitHTTP(t, "http://"+vm.IP+"/", page)
	profile := func(name string) string { return filepath.Join(dir, "chromium-"+name) }

	var w webJSON
	mustJSON(t, &w, "share", "bweb")
	if !strings.HasPrefix(w.LoginURL, home) {
		t.Fatalf("share: login url %q, want it under %s", w.LoginURL, home)
	}
	owner := proxytest.StartBrowser(t, profile("owner"))
	if pg := owner.Open(w.LoginURL); pg.URL != home || pg.Text != page {
		t.Fatalf("owner after the sign-in link: %v; want %s showing %q", pg, home, page)
	}
	replay := proxytest.StartBrowser(t, profile("replay"))
	if pg := replay.Open(w.LoginURL); pg.Title != "Sign-in link already used" || strings.Contains(pg.Text, page) {
		t.Fatalf("replayed sign-in link: %v", pg)
	}
	guest := proxytest.StartBrowser(t, profile("guest"))
	if pg := guest.Open(home); pg.Title != "This VM is private" || strings.Contains(pg.Text, page) {
		t.Fatalf("private vm without a cookie: %v", pg)
	}
	mustJSON(t, &w, "share", "bweb", "--link", "--ttl", "1h")
	if pg := guest.Open(w.ShareURL); pg.URL != home || pg.Text != page {
		t.Fatalf("guest after the share link: %v", pg)
	}
	if pg := guest.Open(home); pg.Text != page {
		t.Fatalf("guest on the plain url: %v", pg)
	}
}
