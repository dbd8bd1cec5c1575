package proxy_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/proxytest"
)

const testDomain = "example.test"

// tlsEnv is a proxy in TLS mode with Pebble issuing its certificates.
type tlsEnv struct {
	p          *proxy.Proxy
	table      *proxytest.Table
	dns        *proxytest.DNS
	pebble     *proxytest.Pebble
	httpsAddr  string
	httpAddr   string
	httpsPort  string
	storageDir string
	cancel     func()
}

func startTLS(t *testing.T, mutate func(*proxy.Config, *proxytest.DNS), opts ...proxytest.DNSOption) *tlsEnv {
	t.Helper()
	dns := proxytest.StartDNS(t, testDomain, opts...)
	httpsLn, httpLn := listen(t), listen(t)
	port := func(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }
	pebble := proxytest.StartPebble(t, proxytest.PebbleOptions{DNSAddr: dns.Addr, HTTPPort: port(httpLn), TLSPort: port(httpsLn)})
	e := &tlsEnv{table: proxytest.NewTable(), dns: dns, pebble: pebble, storageDir: t.TempDir()}
	e.serve(t, httpsLn, httpLn, mutate)
	return e
}

func (e *tlsEnv) serve(t *testing.T, httpsLn, httpLn net.Listener, mutate func(*proxy.Config, *proxytest.DNS)) {
	t.Helper()
	cfg := proxy.Config{
		Domain:     testDomain,
		HTTPSBind:  httpsLn.Addr().String(),
		HTTPBind:   httpLn.Addr().String(),
		ACMECA:     e.pebble.DirectoryURL,
		CARoots:    e.pebble.ServerRoots,
		ACMEEmail:  "admin@example.test",
		StorageDir: e.storageDir,
		Secret:     secret(t),
		Resolver:   e.dns.Resolver(),
		Log:        testLogger(t),
	}
	if mutate != nil {
		mutate(&cfg, e.dns)
	}
	p, err := proxy.New(cfg, e.table, e.table)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, httpsLn, httpLn) }()
	stopped := false
	e.cancel = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("serve did not return after cancel")
		}
	}
	t.Cleanup(e.cancel)
	e.p = p
	e.httpsAddr, e.httpAddr = httpsLn.Addr().String(), httpLn.Addr().String()
	_, e.httpsPort, _ = net.SplitHostPort(e.httpsAddr)
}

// client trusts Pebble's root and sends everything to the HTTPS listener.
func (e *tlsEnv) client() *http.Client {
	return clientTo(e.httpsAddr, func(tr *http.Transport) {
		tr.TLSClientConfig = &tls.Config{RootCAs: e.pebble.IssuerRoots}
		tr.ForceAttemptHTTP2 = true
	})
}

func (e *tlsEnv) url(host, path string) string { return "https://" + host + ":" + e.httpsPort + path }

// handshake does a TLS handshake for name and returns the leaf.
func (e *tlsEnv) handshake(name string) (*tls.Certificate, error) {
	d := &tls.Dialer{Config: &tls.Config{ServerName: name, RootCAs: e.pebble.IssuerRoots}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", e.httpsAddr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	st := c.(*tls.Conn).ConnectionState()
	return &tls.Certificate{Leaf: st.PeerCertificates[0]}, nil
}

func TestACMEOnDemand(t *testing.T) {
	e := startTLS(t, nil)
	web := proxytest.StartUpstream(t, "web")
	priv := proxytest.StartUpstream(t, "priv")
	e.table.Set("web."+testDomain, proxy.Route{VMID: "vm1", VMName: "web", Owner: "alice", Upstream: web.Addr, Public: true, Running: true})
	e.table.Set("priv."+testDomain, proxy.Route{VMID: "vm2", VMName: "priv", Owner: "alice", Upstream: priv.Addr, Running: true})

	// An unknown name never reaches the CA.
	if _, err := e.handshake("random-x7k2." + testDomain); err == nil {
		t.Fatal("handshake for an unknown name succeeded")
	}
	if n := e.pebble.NewOrders(); n != 0 {
		t.Fatalf("unknown name caused %d ACME orders", n)
	}

	// curl, trusting only Pebble's root, gets the VM's own page.
	rootFile := e.pebble.WriteRoot(t, t.TempDir())
	start := time.Now()
	out, err := exec.Command("curl", "-sS", "--max-time", "60", "--cacert", rootFile,
		"--resolve", "web."+testDomain+":"+e.httpsPort+":127.0.0.1", e.url("web."+testDomain, "/")).CombinedOutput()
	if err != nil || string(out) != "hello from web\n" {
		t.Fatalf("curl: %v: %s", err, out)
	}
	t.Logf("first request with on-demand issuance: %v", time.Since(start))
	if n := e.pebble.NewOrders(); n != 1 {
		t.Fatalf("want 1 ACME order, got %d", n)
	}
	leaf, err := e.handshake("web." + testDomain)
	if err != nil {
		t.Fatal(err)
	}
	if got := leaf.Leaf.DNSNames; len(got) != 1 || got[0] != "web."+testDomain {
		t.Fatalf("certificate names %v", got)
	}

	// X-Forwarded-Proto is https; HTTP/2 works.
	c := e.client()
	resp, err := c.Get(e.url("web."+testDomain, "/headers"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "X-Forwarded-Proto=https\n") || resp.ProtoMajor != 2 {
		t.Fatalf("%s %s", resp.Proto, body)
	}

	// Plain HTTP redirects to HTTPS.
	status, _, hdr := get(t, clientTo(e.httpAddr, nil), "http://web."+testDomain+"/a?b=c")
	if want := e.url("web."+testDomain, "/a?b=c"); status != http.StatusPermanentRedirect || hdr.Get("Location") != want {
		t.Fatalf("redirect: %d %q, want %q", status, hdr.Get("Location"), want)
	}

	// WebSocket over TLS.
	conn, err := tls.Dial("tcp", e.httpsAddr, &tls.Config{ServerName: "web." + testDomain, RootCAs: e.pebble.IssuerRoots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	wcfg, _ := websocket.NewConfig("wss://web."+testDomain+"/ws", "https://web."+testDomain)
	ws, err := websocket.NewClient(wcfg, conn)
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	ws.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := ws.Write([]byte("over tls")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8)
	if _, err := io.ReadFull(ws, got); err != nil || string(got) != "over tls" {
		t.Fatalf("websocket echo: %v %q", err, got)
	}
	ws.Close()

	// A private VM refuses anonymous requests and admits its signed-in owner.
	if status, body, _ := get(t, c, e.url("priv."+testDomain, "/")); status != 401 {
		t.Fatalf("anonymous to private vm: %d %q", status, body)
	}
	link := e.p.LoginLink("priv", "vm2", "alice", 0, time.Minute)
	if want := e.url("priv."+testDomain, "/__minions/login?token="); !strings.HasPrefix(link, want) {
		t.Fatalf("link %q, want prefix %q", link, want)
	}
	jar, _ := cookiejar.New(nil)
	browser := e.client()
	browser.Jar = jar
	status, _, hdr = get(t, browser, link)
	if status != http.StatusSeeOther || !strings.Contains(hdr.Get("Set-Cookie"), "Secure") {
		t.Fatalf("login: %d %v", status, hdr)
	}
	if status, body, _ := get(t, browser, e.url("priv."+testDomain, "/")); status != 200 || body != "hello from priv\n" {
		t.Fatalf("owner: %d %q", status, body)
	}
	if n := e.pebble.NewOrders(); n != 2 {
		t.Fatalf("want 2 ACME orders (web, priv), got %d", n)
	}

	// Certificates are stored durably: a restarted proxy with the same
	// storage serves them without asking the CA again.
	e.cancel()
	e.serve(t, listen(t), listen(t), nil)
	if _, err := e.handshake("web." + testDomain); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if n := e.pebble.NewOrders(); n != 2 {
		t.Fatalf("restart caused new orders: %d", n)
	}
}

func TestCustomDomain(t *testing.T) {
	e := startTLS(t, nil)
	web := proxytest.StartUpstream(t, "web")
	route := proxy.Route{VMID: "vm1", VMName: "web", Owner: "alice", Upstream: web.Addr, Public: true, Running: true}
	e.table.Set("web."+testDomain, route)
	const custom = "www.custom.test"
	ctx := context.Background()

	// Not verified yet: no certificate, no order, verification says what to do.
	e.table.Set(custom, route)
	if _, err := e.handshake(custom); err == nil {
		t.Fatal("handshake for an unverified custom domain succeeded")
	}
	if n := e.pebble.NewOrders(); n != 0 {
		t.Fatalf("unverified custom domain caused %d orders", n)
	}
	err := e.p.VerifyDomain(ctx, custom, "vm1", "alice")
	if err == nil || !strings.Contains(err.Error(), "CNAME record www.custom.test -> vm1.example.test") {
		t.Fatalf("verify without records: %v", err)
	}
	// The CNAME target is the VM's immutable ID host, and the TXT value is
	// bound to the VM ID and its owner: a CNAME to the (recyclable) VM name
	// proves nothing.
	for _, tc := range []struct {
		name string
		set  func()
		ok   bool
	}{
		{"txt for another vm", func() { e.dns.SetTXT(proxy.VerifyPrefix+"."+custom, e.p.DomainToken("vm2", "alice", custom)) }, false},
		{"txt for another owner", func() { e.dns.SetTXT(proxy.VerifyPrefix+"."+custom, e.p.DomainToken("vm1", "bob", custom)) }, false},
		{"cname elsewhere", func() { e.dns.SetCNAME(custom, "other."+testDomain) }, false},
		{"cname to the vm name", func() { e.dns.SetCNAME(custom, "web."+testDomain) }, false},
		{"txt", func() { e.dns.SetTXT(proxy.VerifyPrefix+"."+custom, "junk", e.p.DomainToken("vm1", "alice", custom)) }, true},
		{"cname", func() { e.dns.SetTXT(proxy.VerifyPrefix + "." + custom); e.dns.SetCNAME(custom, "vm1."+testDomain) }, true},
	} {
		tc.set()
		if err := e.p.VerifyDomain(ctx, custom, "vm1", "alice"); (err == nil) != tc.ok {
			t.Errorf("%s: verify = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if tok := e.p.DomainToken("vm1", "alice", custom); !strings.HasPrefix(tok, "minions-verify=vm:vm1,owner:alice,") {
		t.Errorf("txt value %q does not name the vm and owner", tok)
	}
	for _, bad := range []string{"web." + testDomain, "x.localhost", "nodots", "-bad-.test"} {
		if err := e.p.VerifyDomain(ctx, bad, "vm1", "alice"); err == nil {
			t.Errorf("verify %q succeeded", bad)
		}
	}

	// Verified (the store now admits it): a certificate and the VM's page.
	e.table.AllowDomain(custom)
	leaf, err := e.handshake(custom)
	if err != nil {
		t.Fatalf("handshake after verification: %v", err)
	}
	if leaf.Leaf.DNSNames[0] != custom {
		t.Fatalf("names %v", leaf.Leaf.DNSNames)
	}
	if status, body, _ := get(t, e.client(), e.url(custom, "/")); status != 200 || body != "hello from web\n" {
		t.Fatalf("custom domain: %d %q", status, body)
	}
	// The domain goes away with its VM.
	e.table.Delete(custom)
	if status, _, _ := get(t, e.client(), e.url(custom, "/")); status != 404 {
		t.Fatalf("deleted custom domain: %d", status)
	}
}

func TestWildcardDNS01(t *testing.T) {
	e := startTLS(t, func(c *proxy.Config, dns *proxytest.DNS) {
		c.DNSProvider = dns
		c.DNSResolvers = []string{dns.Addr}
		c.DNSPropagationTimeout = 30 * time.Second
	})
	web := proxytest.StartUpstream(t, "web")
	e.table.Set("anyvm."+testDomain, proxy.Route{VMID: "vm1", VMName: "anyvm", Upstream: web.Addr, Public: true, Running: true})
	var leaf *tls.Certificate
	waitFor(t, 30*time.Second, func() bool {
		var err error
		leaf, err = e.handshake("anyvm." + testDomain)
		return err == nil
	})
	if got := leaf.Leaf.DNSNames; len(got) != 1 || got[0] != "*."+testDomain {
		t.Fatalf("certificate names %v, want the wildcard", got)
	}
	// Any VM name is covered by the one certificate, with no new order.
	if _, err := e.handshake("other." + testDomain); err != nil {
		t.Fatal(err)
	}
	if n := e.pebble.NewOrders(); n != 1 {
		t.Fatalf("want 1 order, got %d", n)
	}
	if status, body, _ := get(t, e.client(), e.url("anyvm."+testDomain, "/")); status != 200 || body != "hello from web\n" {
		t.Fatalf("%d %q", status, body)
	}
	// The challenge record was cleaned up.
	if txt := e.dns.TXT("_acme-challenge." + testDomain); len(txt) != 0 {
		t.Fatalf("leftover challenge records %v", txt)
	}
}
