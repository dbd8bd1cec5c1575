package proxy_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libdns/libdns"
	"github.com/miekg/dns"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/proxytest"
)

const testKeyName = "minions-test."

func tsigSecret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// A proxy configured with the rfc2136 provider obtains one wildcard
// certificate by DNS-01: the provider writes the challenge record into
// the test's authoritative server by TSIG-signed dynamic updates, Pebble
// reads it from there, and a handshake for any name under the domain,
// even one no VM serves, gets the wildcard with no on-demand order.
func TestWildcardRFC2136(t *testing.T) {
	key := tsigSecret(t)
	e := startTLS(t, func(c *proxy.Config, d *proxytest.DNS) {
		p, err := proxy.NewDNSProvider(proxy.DNSConfig{Provider: "rfc2136",
			RFC2136Server: d.Addr, RFC2136KeyName: testKeyName, RFC2136Key: key})
		if err != nil {
			t.Fatal(err)
		}
		c.DNSProvider = p
		c.DNSResolvers = []string{d.Addr}
		c.DNSPropagationTimeout = 30 * time.Second
	}, proxytest.WithUpdateKey(testKeyName, key))

	const name = "anything." + testDomain
	var chain []*x509.Certificate
	waitFor(t, 60*time.Second, func() bool {
		var err error
		chain, err = e.peerChain(name)
		return err == nil
	})
	leaf, inter := chain[0], x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if !slices.Contains(leaf.DNSNames, "*."+testDomain) {
		t.Fatalf("certificate names %v, want *.%s", leaf.DNSNames, testDomain)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: e.pebble.IssuerRoots, Intermediates: inter}); err != nil {
		t.Fatalf("not issued by pebble for %s: %v", name, err)
	}
	if n := e.pebble.NewOrders(); n != 1 {
		t.Fatalf("want 1 ACME order (the wildcard), got %d", n)
	}
	if _, err := e.handshake("other." + testDomain); err != nil {
		t.Fatal(err)
	}
	if n := e.pebble.NewOrders(); n != 1 {
		t.Fatalf("a second name caused an order: %d", n)
	}
	// The challenge record went in and out by RFC 2136, all signed.
	applied, refused := e.dns.Updates()
	if applied < 2 || refused != 0 {
		t.Fatalf("dynamic updates: %d applied, %d refused; want an add and a delete", applied, refused)
	}
	waitFor(t, 10*time.Second, func() bool { return len(e.dns.TXT("_acme-challenge."+testDomain)) == 0 })
}

// peerChain does a TLS handshake for name, without verification, and
// returns the certificates the proxy presents.
func (e *tlsEnv) peerChain(name string) ([]*x509.Certificate, error) {
	d := &tls.Dialer{Config: &tls.Config{ServerName: name, InsecureSkipVerify: true}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", e.httpsAddr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates, nil
}

// The test server applies only updates signed with its key, so the
// wildcard test above proves the provider signs them.
func TestRFC2136ProviderTSIG(t *testing.T) {
	key := tsigSecret(t)
	d := proxytest.StartDNS(t, testDomain, proxytest.WithUpdateKey(testKeyName, key))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rec := []libdns.Record{libdns.TXT{Name: "_acme-challenge", Text: "token-1"}}
	provider := func(k string) libdns.RecordAppender {
		p, err := proxy.NewDNSProvider(proxy.DNSConfig{Provider: "rfc2136", RFC2136Server: d.Addr,
			RFC2136KeyName: testKeyName, RFC2136Key: k})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	if _, err := provider(tsigSecret(t)).AppendRecords(ctx, testDomain+".", rec); err == nil || !strings.Contains(err.Error(), "NOTAUTH") {
		t.Fatalf("update with the wrong key: %v, want NOTAUTH", err)
	}
	if txt := d.TXT("_acme-challenge." + testDomain); len(txt) != 0 {
		t.Fatalf("a refused update changed the zone: %v", txt)
	}
	if _, err := provider(key).AppendRecords(ctx, testDomain+".", rec); err != nil {
		t.Fatal(err)
	}
	// Over DNS, as Pebble sees it.
	q := new(dns.Msg)
	q.SetQuestion("_acme-challenge."+testDomain+".", dns.TypeTXT)
	r, err := dns.ExchangeContext(ctx, q, d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 1 || strings.Join(r.Answer[0].(*dns.TXT).Txt, "") != "token-1" {
		t.Fatalf("answer %v", r.Answer)
	}
	if applied, refused := d.Updates(); applied != 1 || refused != 1 {
		t.Fatalf("updates: %d applied, %d refused", applied, refused)
	}
}

func TestDNSConfigValidate(t *testing.T) {
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	rfc := proxy.DNSConfig{Provider: "rfc2136", RFC2136Server: "127.0.0.1:53", RFC2136KeyName: "minions", RFC2136Key: key}
	for _, tc := range []struct {
		name  string
		cfg   proxy.DNSConfig
		field string // "" valid
	}{
		{"none", proxy.DNSConfig{}, ""},
		{"cloudflare", proxy.DNSConfig{Provider: "cloudflare", CloudflareAPIToken: "tok"}, ""},
		{"rfc2136", rfc, ""},
		{"rfc2136 sha512", func() proxy.DNSConfig { c := rfc; c.RFC2136KeyAlg = "HMAC-SHA512"; return c }(), ""},
		{"unknown", proxy.DNSConfig{Provider: "route53"}, "dns_provider"},
		{"cloudflare no token", proxy.DNSConfig{Provider: "cloudflare"}, "cloudflare_api_token"},
		{"rfc2136 no server", func() proxy.DNSConfig { c := rfc; c.RFC2136Server = ""; return c }(), "rfc2136_server"},
		{"rfc2136 server no port", func() proxy.DNSConfig { c := rfc; c.RFC2136Server = "ns1.example.test"; return c }(), "rfc2136_server"},
		{"rfc2136 no key name", func() proxy.DNSConfig { c := rfc; c.RFC2136KeyName = ""; return c }(), "rfc2136_key_name"},
		{"rfc2136 bad alg", func() proxy.DNSConfig { c := rfc; c.RFC2136KeyAlg = "hmac-md4"; return c }(), "rfc2136_key_alg"},
		{"rfc2136 no key", func() proxy.DNSConfig { c := rfc; c.RFC2136Key = ""; return c }(), "rfc2136_key"},
		{"rfc2136 key not base64", func() proxy.DNSConfig { c := rfc; c.RFC2136Key = "not base64!"; return c }(), "rfc2136_key"},
	} {
		p, err := proxy.NewDNSProvider(tc.cfg)
		if tc.field == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			} else if (p == nil) != (tc.cfg.Provider == "") {
				t.Errorf("%s: provider %T", tc.name, p)
			}
			continue
		}
		if !errors.Is(err, errs.InvalidArgument) || !strings.Contains(err.Error(), tc.field) || p != nil {
			t.Errorf("%s: %v, want InvalidArgument naming %s", tc.name, err, tc.field)
		}
	}
}
