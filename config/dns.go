package config

import (
	"flag"
	"os"
	"strings"
	"sync/atomic"

	"github.com/minionsdev/minions/internal/errs"
)

// The DNS provider for the wildcard certificate: config keys dns_provider,
// cloudflare_api_token[_file], rfc2136_server, rfc2136_key_name,
// rfc2136_key_alg and rfc2136_key[_file], and the serve flags of the same
// names. Secrets have no flags of their own (a process's arguments are
// world-readable in /proc), only the _file ones.

// secret is a config value that config show prints masked.
type secret string

// MarshalText masks a set secret (TOML and JSON output).
func (s secret) MarshalText() ([]byte, error) {
	if s == "" {
		return []byte{}, nil
	}
	return []byte("********"), nil
}

// UnmarshalText reads the secret as written.
func (s *secret) UnmarshalText(b []byte) error {
	*s = secret(b)
	return nil
}

// DNSProviderFlags registers the serve flags for the DNS provider.
func DNSProviderFlags(fs *flag.FlagSet) {
	fs.String("dns-provider", "", "DNS provider for one wildcard certificate by DNS-01: cloudflare or rfc2136")
	fs.String("cloudflare-api-token-file", "", "file holding the Cloudflare API token (or CLOUDFLARE_API_TOKEN)")
	fs.String("rfc2136-server", "", "host:port of the nameserver taking RFC 2136 updates (TCP)")
	fs.String("rfc2136-key-name", "", "TSIG key name for rfc2136")
	fs.String("rfc2136-key-alg", "", "TSIG algorithm for rfc2136 (default hmac-sha256)")
	fs.String("rfc2136-key-file", "", "file holding the base64 TSIG secret for rfc2136")
}

// SetDNSProviderFlag applies one serve flag, if it is one of
// DNSProviderFlags; a _file flag replaces a secret from the config file.
func (c *Config) SetDNSProviderFlag(name, v string) {
	switch name {
	case "dns-provider":
		c.DNSProvider = v
	case "cloudflare-api-token-file":
		c.CloudflareAPIToken, c.CloudflareAPITokenFile = "", v
	case "rfc2136-server":
		c.RFC2136Server = v
	case "rfc2136-key-name":
		c.RFC2136KeyName = v
	case "rfc2136-key-alg":
		c.RFC2136KeyAlg = v
	case "rfc2136-key-file":
		c.RFC2136Key, c.RFC2136KeyFile = "", v
	}
}

// DNSConfig is the DNS provider's configuration with its secrets read: the
// fields of proxy.DNSConfig, in its order (the daemon converts it), so
// that this package does not link the proxy and its ACME client into the
// lean minions binary, which loads the config file at every command.
type DNSConfig struct {
	Provider           string
	CloudflareAPIToken string
	RFC2136Server      string
	RFC2136KeyName     string
	RFC2136KeyAlg      string
	RFC2136Key         string
}

var dnsValidator atomic.Pointer[func(DNSConfig) error]

// SetDNSValidator gives Validate the check of the provider's own keys
// (proxy.DNSConfig.Validate). The composition root (daemon), which builds
// the proxy, sets it when it is linked; without it (the lean minions
// binary, whose commands use no DNS provider) Validate checks only what
// this package knows: the secret files and that a provider needs a domain.
func SetDNSValidator(f func(DNSConfig) error) { dnsValidator.Store(&f) }

// validateDNSProvider checks the provider keys, reading the secret files.
// Errors are errs.InvalidArgument naming the key.
func (c *Config) validateDNSProvider() error {
	dc, err := c.DNSConfig()
	if err != nil {
		return err
	}
	if dc.Provider != "" && c.Domain == "" {
		return errs.New(errs.InvalidArgument, "dns_provider needs a domain (the wildcard is *.<domain>)")
	}
	if f := dnsValidator.Load(); f != nil && *f != nil {
		return (*f)(dc)
	}
	return nil
}

// DNSConfig resolves the provider's secrets: the value, else the _file
// key's file, else (Cloudflare) CLOUDFLARE_API_TOKEN. Setting both a value
// and its _file is an error.
func (c *Config) DNSConfig() (DNSConfig, error) {
	dc := DNSConfig{Provider: c.DNSProvider, RFC2136Server: c.RFC2136Server,
		RFC2136KeyName: c.RFC2136KeyName, RFC2136KeyAlg: c.RFC2136KeyAlg}
	if dc.Provider == "" {
		return dc, nil
	}
	var err error
	if dc.CloudflareAPIToken, err = readSecret("cloudflare_api_token", string(c.CloudflareAPIToken), c.CloudflareAPITokenFile); err != nil {
		return dc, err
	}
	if dc.CloudflareAPIToken == "" {
		dc.CloudflareAPIToken = strings.TrimSpace(os.Getenv("CLOUDFLARE_API_TOKEN"))
	}
	if dc.RFC2136Key, err = readSecret("rfc2136_key", string(c.RFC2136Key), c.RFC2136KeyFile); err != nil {
		return dc, err
	}
	return dc, nil
}

func readSecret(key, value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	if value != "" {
		return "", errs.New(errs.InvalidArgument, "set %s or %s_file, not both", key, key)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", errs.New(errs.InvalidArgument, "%s_file: %v", key, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", errs.New(errs.InvalidArgument, "%s_file %s is empty", key, file)
	}
	return s, nil
}
