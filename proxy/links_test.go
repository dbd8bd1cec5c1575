package proxy_test

import (
	"context"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/proxytest"
)

// visitor is a browser with its own cookie jar.
func visitor(l *local) *http.Client {
	jar, _ := cookiejar.New(nil)
	c := clientTo(l.addr, nil)
	c.Jar = jar
	return c
}

// The reproduced bug: A shares web, destroys it, B creates a private web;
// the old link must not open B's VM, and sessions from it neither.
func TestShareLinkDoesNotOutliveItsVM(t *testing.T) {
	l := startLocal(t, nil)
	up := proxytest.StartUpstream(t, "web")
	l.table.Set("web.localhost", proxy.Route{VMID: "vm-a", VMName: "web", Owner: "alice", Upstream: up.Addr, Running: true})
	link := l.p.ShareLink("web", "vm-a", "alice", 0, time.Hour)
	early := visitor(l)
	if status, _, _ := get(t, early, link); status != http.StatusSeeOther {
		t.Fatalf("share link: %d", status)
	}
	if status, _, _ := get(t, early, l.url("web", "/")); status != 200 {
		t.Fatalf("shared vm: %d", status)
	}
	// A destroys web; B creates a private web (new ID, new owner).
	l.table.Set("web.localhost", proxy.Route{VMID: "vm-b", VMName: "web", Owner: "bob", Upstream: up.Addr, Running: true})
	late := visitor(l)
	if status, body, _ := get(t, late, link); status != http.StatusForbidden || !strings.Contains(body, "destroyed") {
		t.Fatalf("old link on the new vm: %d %q", status, body)
	}
	for name, c := range map[string]*http.Client{"early": early, "late": late} {
		if status, _, _ := get(t, c, l.url("web", "/")); status != http.StatusUnauthorized {
			t.Fatalf("%s visitor reaches the new vm: %d", name, status)
		}
	}
	// Same ID, other owner (the VM changed hands): the link ends too.
	l.table.Set("web.localhost", proxy.Route{VMID: "vm-a", VMName: "web", Owner: "bob", Upstream: up.Addr, Running: true})
	if status, _, _ := get(t, visitor(l), link); status != http.StatusForbidden {
		t.Fatalf("link after a change of owner: %d", status)
	}
}

// Moving the revocation counter ends outstanding links and the sessions
// they made, owner's and share visitors' alike; links minted afterwards
// work.
func TestRevocationCounterEndsLinksAndSessions(t *testing.T) {
	l := startLocal(t, nil)
	up := proxytest.StartUpstream(t, "web")
	route := proxy.Route{VMID: "vm1", VMName: "web", Owner: "alice", Upstream: up.Addr, Running: true, Gen: 4}
	l.table.Set("web.localhost", route)
	share := l.p.ShareLink("web", "vm1", "alice", 4, time.Hour)
	owner, guest := visitor(l), visitor(l)
	if status, _, _ := get(t, owner, l.p.LoginLink("web", "vm1", "alice", 4, time.Minute)); status != http.StatusSeeOther {
		t.Fatalf("login: %d", status)
	}
	if status, _, _ := get(t, guest, share); status != http.StatusSeeOther {
		t.Fatalf("share: %d", status)
	}
	unused := l.p.LoginLink("web", "vm1", "alice", 4, time.Minute)
	for _, c := range []*http.Client{owner, guest} {
		if status, _, _ := get(t, c, l.url("web", "/")); status != 200 {
			t.Fatalf("before revocation: %d", status)
		}
	}
	route.Gen = 5 // share --private, rename or destroy
	l.table.Set("web.localhost", route)
	for _, c := range []*http.Client{owner, guest} {
		if status, _, _ := get(t, c, l.url("web", "/")); status != http.StatusUnauthorized {
			t.Fatalf("session after revocation: %d", status)
		}
	}
	for _, link := range []string{share, unused} {
		if status, _, _ := get(t, visitor(l), link); status != http.StatusForbidden {
			t.Fatalf("link after revocation: %d", status)
		}
	}
	fresh := visitor(l)
	if status, _, _ := get(t, fresh, l.p.ShareLink("web", "vm1", "alice", 5, time.Hour)); status != http.StatusSeeOther {
		t.Fatalf("new share link: %d", status)
	}
	if status, _, _ := get(t, fresh, l.url("web", "/")); status != 200 {
		t.Fatalf("new share session: %d", status)
	}
}

// mapLedger is a LinkLedger that outlives the proxies using it, as the
// store does.
type mapLedger struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (m *mapLedger) Use(_ context.Context, id string, _ time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ids[id] {
		return false, nil
	}
	m.ids[id] = true
	return true, nil
}

// The proxy asks its LinkLedger, so a used one-time link stays used across
// a restart when the ledger is durable (the daemon's is the store).
func TestLoginLinkUsedAcrossRestart(t *testing.T) {
	ledger := &mapLedger{ids: map[string]bool{}}
	key := secret(t)
	up := proxytest.StartUpstream(t, "web")
	route := proxy.Route{VMID: "vm1", VMName: "web", Owner: "alice", Upstream: up.Addr, Running: true}
	first := startLocal(t, func(c *proxy.Config) { c.Secret, c.Links = key, ledger })
	first.table.Set("web.localhost", route)
	link := first.p.LoginLink("web", "vm1", "alice", 0, time.Minute)
	if status, _, _ := get(t, visitor(first), link); status != http.StatusSeeOther {
		t.Fatalf("login: %d", status)
	}
	first.stop()
	second := startLocal(t, func(c *proxy.Config) { c.Secret, c.Links = key, ledger })
	second.table.Set("web.localhost", route)
	link = strings.Replace(link, ":"+first.port+"/", ":"+second.port+"/", 1)
	if status, body, _ := get(t, visitor(second), link); status != http.StatusForbidden || !strings.Contains(body, "already used") {
		t.Fatalf("used link after restart: %d %q", status, body)
	}
}

// A VM cannot plant cookies for its neighbours: Domain= is stripped from
// every Set-Cookie, and the proxy's own cookie cannot be set by a VM.
func TestUpstreamCookiesAreHostOnly(t *testing.T) {
	l := startLocal(t, nil)
	up := proxytest.StartUpstream(t, "evil")
	l.table.Set("evil.localhost", proxy.Route{VMID: "vm1", VMName: "evil", Upstream: up.Addr, Public: true, Running: true})
	l.table.Set("bank.localhost", proxy.Route{VMID: "vm2", VMName: "bank", Upstream: up.Addr, Public: true, Running: true})
	q := url.Values{"c": {"plant=1; Domain=.localhost; Path=/", "also=2; Path=/; domain=bank.localhost; HttpOnly",
		"mine=3; Path=/", "minions_session=forged; Path=/"}}
	c := visitor(l)
	status, _, hdr := get(t, c, l.url("evil", "/setcookie?"+q.Encode()))
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	got := hdr.Values("Set-Cookie")
	want := []string{"plant=1; Path=/", "also=2; Path=/; HttpOnly", "mine=3; Path=/"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("Set-Cookie = %q, want %q", got, want)
	}
	// The browser keeps them for evil.localhost only.
	if cs := c.Jar.Cookies(mustURL(t, l.url("bank", "/"))); len(cs) != 0 {
		t.Fatalf("cookies for bank.localhost: %v", cs)
	}
	if cs := c.Jar.Cookies(mustURL(t, l.url("evil", "/"))); len(cs) != 3 {
		t.Fatalf("cookies for evil.localhost: %v", cs)
	}
}

// clientFrom dials the proxy from a chosen loopback source address.
func clientFrom(l *local, src string) *http.Client {
	return clientTo(l.addr, func(tr *http.Transport) {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, l.addr)
		}
	})
}

// The global cap holds when every address stays under its own limit.
func TestGlobalConnCap(t *testing.T) {
	l := startLocal(t, func(c *proxy.Config) { c.MaxConnsPerIP = 2; c.MaxConns = 3 })
	up := proxytest.StartUpstream(t, "web")
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Upstream: up.Addr, Public: true, Running: true})
	var held []net.Conn
	for _, src := range []string{"127.0.0.1", "127.0.0.1", "127.0.0.2"} {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", l.addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// 127.0.0.3 has no connection open, but the server has three.
	status, body, hdr := get(t, clientFrom(l, "127.0.0.3"), l.url("web", "/"))
	if status != 429 || !strings.Contains(body, "Server busy") || hdr.Get("Retry-After") == "" {
		t.Fatalf("fourth connection: %d %q %v", status, body, hdr)
	}
	if m := metrics(t, l.p); !strings.Contains(m, "minions_proxy_conn_capped_total 1\n") {
		t.Fatalf("metrics:\n%s", m)
	}
	for _, c := range held {
		c.Close()
	}
	waitFor(t, 5*time.Second, func() bool {
		status, _, _ := get(t, clientFrom(l, "127.0.0.3"), l.url("web", "/"))
		return status == 200
	})
}
