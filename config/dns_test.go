package config

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/proxy"
)

// The daemon gives Validate the proxy's check of the provider's keys.
func init() {
	SetDNSValidator(func(dc DNSConfig) error { return proxy.DNSConfig(dc).Validate() })
}

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
	dc, err := c.DNSConfig()
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
	if dc, err := c.DNSConfig(); err != nil || dc.CloudflareAPIToken != "cf-token-in-file" {
		t.Fatalf("cloudflare config %+v, %v", dc, err)
	}
	t.Setenv("CLOUDFLARE_API_TOKEN", "cf-token-from-env")
	c, err = loadTOML(t, "domain = \"example.test\"\ndns_provider = \"cloudflare\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if dc, err := c.DNSConfig(); err != nil || dc.CloudflareAPIToken != "cf-token-from-env" {
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

// serve's flags set the provider; a --*-file flag replaces a secret
// from the config file.
func TestServeFlagsDNSProvider(t *testing.T) {
	t.Setenv("CLOUDFLARE_API_TOKEN", "")
	key := tsigKey(t)
	conf := writeFile(t, "config.toml", "domain = \"example.test\"\nrfc2136_key = \"in-file-not-base64\"\n")
	keyFile := writeFile(t, "tsig", key)
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	ServeFlags(fs)
	if err := fs.Parse([]string{"--config", conf, "--dns-provider", "rfc2136", "--rfc2136-server", "127.0.0.1:5353",
		"--rfc2136-key-name", "minions", "--rfc2136-key-alg", "hmac-sha512", "--rfc2136-key-file", keyFile}); err != nil {
		t.Fatal(err)
	}
	cfg, err := Effective(fs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	dc, err := cfg.DNSConfig()
	if err != nil || dc.Provider != "rfc2136" || dc.RFC2136Server != "127.0.0.1:5353" || dc.RFC2136KeyName != "minions" ||
		dc.RFC2136KeyAlg != "hmac-sha512" || dc.RFC2136Key != key {
		t.Fatalf("from flags: %+v, %v", dc, err)
	}
	fs = flag.NewFlagSet("serve", flag.ContinueOnError)
	ServeFlags(fs)
	_ = fs.Parse([]string{"--config", conf, "--dns-provider", "cloudflare"})
	if _, err := Effective(fs, "", ""); !errors.Is(err, errs.InvalidArgument) || !strings.Contains(err.Error(), "cloudflare_api_token") {
		t.Fatalf("cloudflare without a token: %v", err)
	}
}

// Without the proxy's check (the lean minions binary), Validate still
// reads the secret files and wants a domain, but takes any provider.
func TestDNSValidatorOptional(t *testing.T) {
	t.Setenv("CLOUDFLARE_API_TOKEN", "")
	f := dnsValidator.Load()
	SetDNSValidator(nil)
	defer dnsValidator.Store(f)
	if _, err := loadTOML(t, "domain = \"example.test\"\ndns_provider = \"route53\"\n"); err != nil {
		t.Errorf("without the proxy's check: %v", err)
	}
	if _, err := loadTOML(t, "dns_provider = \"rfc2136\"\n"); !errors.Is(err, errs.InvalidArgument) || !strings.Contains(err.Error(), "needs a domain") {
		t.Errorf("provider without a domain: %v", err)
	}
	if _, err := loadTOML(t, "domain = \"example.test\"\ndns_provider = \"cloudflare\"\ncloudflare_api_token_file = \"/nonexistent/token\"\n"); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("missing secret file: %v", err)
	}
}
