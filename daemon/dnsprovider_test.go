package daemon

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/proxy/proxytest"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func tsigKey(t *testing.T) string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// loadTOML is a validated config from text.
func loadTOML(t *testing.T, text string) (config.Config, error) {
	t.Helper()
	c, err := config.Load(writeFile(t, "config.toml", text), true)
	if err != nil {
		return c, err
	}
	c.Defaults()
	return c, c.Validate()
}

// The daemon's proxy, configured only through config keys, obtains the
// wildcard certificate by DNS-01 through RFC 2136 updates to a test
// nameserver that Pebble validates against.
func TestProxyWildcardFromConfig(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	key := tsigKey(t)
	ns := proxytest.StartDNS(t, "example.test", proxytest.WithUpdateKey("minions-daemon", key))
	httpsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pebble := proxytest.StartPebble(t, proxytest.PebbleOptions{DNSAddr: ns.Addr, TLSPort: httpsLn.Addr().(*net.TCPAddr).Port})
	cfg, err := loadTOML(t, fmt.Sprintf(`
domain = "example.test"
acme_ca = %q
acme_root = %q
dns_resolver = %q
dns_provider = "rfc2136"
rfc2136_server = %q
rfc2136_key_name = "minions-daemon"
rfc2136_key_file = %q
`, pebble.DirectoryURL, writeFile(t, "acme-root.pem", string(pebble.ServerRootPEM)), ns.Addr, ns.Addr, writeFile(t, "tsig", key)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ProxyBind = httpsLn.Addr().String()
	svc := testService(t, t.TempDir())
	ep := proxyEndpoint{Domain: cfg.Domain, HTTPSPort: httpsLn.Addr().(*net.TCPAddr).Port, DNSResolver: cfg.DNSResolver}
	p, err := newProxy(ctx, cfg, &local.Installation{Service: svc}, slog.New(slog.NewTextHandler(io.Discard, nil)), local.Paths{State: t.TempDir()}, ep)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, httpsLn, nil) }()
	defer func() { cancel(); <-done }()

	var names []string
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := tls.Dial("tcp", httpsLn.Addr().String(), &tls.Config{ServerName: "anything.example.test", RootCAs: pebble.IssuerRoots})
		if err == nil {
			names = conn.ConnectionState().PeerCertificates[0].DNSNames
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no wildcard certificate within 60s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !slices.Contains(names, "*.example.test") {
		t.Fatalf("certificate names %v", names)
	}
	if n := pebble.NewOrders(); n != 1 {
		t.Fatalf("%d ACME orders, want 1", n)
	}
	if applied, refused := ns.Updates(); applied < 1 || refused != 0 {
		t.Fatalf("dynamic updates: %d applied, %d refused", applied, refused)
	}
}

// The daemon links the proxy, so the config file's provider keys are
// checked when it loads (config.SetDNSValidator in this package's init).
func TestConfigChecksDNSProvider(t *testing.T) {
	path := writeFile(t, "config.toml", "domain = \"example.test\"\ndns_provider = \"route53\"\n")
	c, err := config.Load(path, true)
	if err == nil {
		c.Defaults()
		err = c.Validate()
	}
	if err == nil || !strings.Contains(err.Error(), "dns_provider") {
		t.Fatalf("config with dns_provider route53: %v, want an error naming dns_provider", err)
	}
}
