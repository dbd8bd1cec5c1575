package daemon

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
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

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/internal/errs"
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

// The DNS provider keys: secrets from the value, a _file or the
// environment, never printed by config show; bad input names its key.
func TestConfigDNSProvider(t *testing.T) {
	key := tsigKey(t)
	keyFile := writeFile(t, "tsig.key", key+"\n")
	c, err := loadTOML(t, fmt.Sprintf(`
domain = "example.test"
dns_provider = "rfc2136"
rfc2136_server = "127.0.0.1:53"
rfc2136_key_name = "minions"
rfc2136_key_file = %q
`, keyFile))
	if err != nil {
		t.Fatal(err)
	}
	dc, err := c.dnsConfig()
	if err != nil || dc.RFC2136Key != key || dc.RFC2136Server != "127.0.0.1:53" || dc.RFC2136KeyName != "minions" {
		t.Fatalf("rfc2136 config %+v, %v", dc, err)
	}

	c, err = loadTOML(t, `
domain = "example.test"
dns_provider = "cloudflare"
cloudflare_api_token = "cf-token-in-file"
`)
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{c.TOML(), func() string { b, _ := json.Marshal(c); return string(b) }()} {
		if strings.Contains(out, "cf-token-in-file") || !strings.Contains(out, "********") {
			t.Errorf("config output shows the token or no mask:\n%s", out)
		}
	}
	if dc, err := c.dnsConfig(); err != nil || dc.CloudflareAPIToken != "cf-token-in-file" {
		t.Fatalf("cloudflare config %+v, %v", dc, err)
	}
	t.Setenv("CLOUDFLARE_API_TOKEN", "cf-token-from-env")
	c, err = loadTOML(t, "domain = \"example.test\"\ndns_provider = \"cloudflare\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if dc, err := c.dnsConfig(); err != nil || dc.CloudflareAPIToken != "cf-token-from-env" {
		t.Fatalf("cloudflare from env %+v, %v", dc, err)
	}
	t.Setenv("CLOUDFLARE_API_TOKEN", "")

	rfc := "domain = \"example.test\"\ndns_provider = \"rfc2136\"\n"
	for _, tc := range []struct{ toml, key string }{
		{`domain = "example.test"` + "\n" + `dns_provider = "route53"`, "dns_provider"},
		{`dns_provider = "rfc2136"`, "dns_provider needs a domain"},
		{`domain = "example.test"` + "\n" + `dns_provider = "cloudflare"`, "cloudflare_api_token"},
		{`domain = "example.test"` + "\n" + `dns_provider = "cloudflare"` + "\n" + `cloudflare_api_token_file = "/nonexistent/token"`, "cloudflare_api_token_file"},
		{`domain = "example.test"` + "\n" + `dns_provider = "cloudflare"` + "\n" + `cloudflare_api_token = "a"` + "\n" +
			fmt.Sprintf("cloudflare_api_token_file = %q", keyFile), "not both"},
		{rfc + `rfc2136_key_name = "k"` + "\n" + `rfc2136_key = "` + key + `"`, "rfc2136_server"},
		{rfc + `rfc2136_server = "ns1"` + "\n" + `rfc2136_key_name = "k"` + "\n" + `rfc2136_key = "` + key + `"`, "rfc2136_server"},
		{rfc + `rfc2136_server = "127.0.0.1:53"` + "\n" + `rfc2136_key = "` + key + `"`, "rfc2136_key_name"},
		{rfc + `rfc2136_server = "127.0.0.1:53"` + "\n" + `rfc2136_key_name = "k"`, "rfc2136_key"},
		{rfc + `rfc2136_server = "127.0.0.1:53"` + "\n" + `rfc2136_key_name = "k"` + "\n" + `rfc2136_key = "%%%"`, "rfc2136_key is not base64"},
		{rfc + `rfc2136_server = "127.0.0.1:53"` + "\n" + `rfc2136_key_name = "k"` + "\n" + `rfc2136_key_alg = "md5"` + "\n" + `rfc2136_key = "` + key + `"`, "rfc2136_key_alg"},
		{rfc + `rfc2136_server = "127.0.0.1:53"` + "\n" + `rfc2136_key_name = "k"` + "\n" + `rfc2136_key_file = "` + writeFile(t, "empty", "\n") + `"`, "rfc2136_key_file"},
	} {
		_, err := loadTOML(t, tc.toml)
		if !errors.Is(err, errs.InvalidArgument) || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%s:\n  %v, want InvalidArgument naming %s", tc.toml, err, tc.key)
		}
	}
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
	p, err := newProxy(ctx, cfg, &Env{Service: svc}, slog.New(slog.NewTextHandler(io.Discard, nil)), Paths{State: t.TempDir()}, ep)
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

// serve's flags set the provider; a --*-file flag replaces a secret
// from the config file.
func TestServeFlagsDNSProvider(t *testing.T) {
	t.Setenv("CLOUDFLARE_API_TOKEN", "")
	key := tsigKey(t)
	conf := writeFile(t, "config.toml", "domain = \"example.test\"\nrfc2136_key = \"in-file-not-base64\"\n")
	keyFile := writeFile(t, "tsig", key)
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	serveCmd().Flags(fs)
	if err := fs.Parse([]string{"--config", conf, "--dns-provider", "rfc2136", "--rfc2136-server", "127.0.0.1:5353",
		"--rfc2136-key-name", "minions", "--rfc2136-key-alg", "hmac-sha512", "--rfc2136-key-file", keyFile}); err != nil {
		t.Fatal(err)
	}
	cfg, err := EffectiveConfig(&cli.Ctx{G: &cli.Global{}, FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	dc, err := cfg.dnsConfig()
	if err != nil || dc.Provider != "rfc2136" || dc.RFC2136Server != "127.0.0.1:5353" || dc.RFC2136KeyName != "minions" ||
		dc.RFC2136KeyAlg != "hmac-sha512" || dc.RFC2136Key != key {
		t.Fatalf("from flags: %+v, %v", dc, err)
	}
	fs = flag.NewFlagSet("serve", flag.ContinueOnError)
	serveCmd().Flags(fs)
	_ = fs.Parse([]string{"--config", conf, "--dns-provider", "cloudflare"})
	if _, err := EffectiveConfig(&cli.Ctx{G: &cli.Global{}, FS: fs}); !errors.Is(err, errs.InvalidArgument) || !strings.Contains(err.Error(), "cloudflare_api_token") {
		t.Fatalf("cloudflare without a token: %v", err)
	}
}
