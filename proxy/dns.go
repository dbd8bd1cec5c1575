package proxy

import (
	"encoding/base64"
	"net"
	"strings"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/cloudflare"
	"github.com/libdns/rfc2136"
	"github.com/miekg/dns"

	"github.com/minionsdev/minions/internal/errs"
)

// DNS providers NewDNSProvider knows.
const (
	DNSCloudflare = "cloudflare"
	DNSRFC2136    = "rfc2136"
)

// DefaultRFC2136KeyAlg is the TSIG algorithm when DNSConfig.RFC2136KeyAlg is
// empty.
const DefaultRFC2136KeyAlg = "hmac-sha256"

// DNSConfig names the DNS provider that publishes DNS-01 challenge records
// for the wildcard certificate, and its credentials. Secrets are values,
// not file names: the daemon reads files and the environment. Error
// messages name the fields by the daemon's config keys (dns_provider,
// cloudflare_api_token, rfc2136_server, ...).
type DNSConfig struct {
	// Provider is DNSCloudflare, DNSRFC2136 or "" (none: per-name
	// certificates on demand).
	Provider string
	// CloudflareAPIToken is a Cloudflare API token with Zone.DNS:Edit
	// permission on the domain's zone (not the global API key).
	CloudflareAPIToken string
	// RFC2136Server is the "host:port" of the primary nameserver that
	// accepts dynamic updates (RFC 2136) for the zone, over TCP.
	RFC2136Server string
	// RFC2136KeyName is the TSIG key's name, e.g. "minions." (the
	// trailing dot is optional).
	RFC2136KeyName string
	// RFC2136KeyAlg is the TSIG algorithm: hmac-sha256 (default),
	// hmac-sha1, hmac-sha224, hmac-sha384 or hmac-sha512.
	RFC2136KeyAlg string
	// RFC2136Key is the TSIG secret, base64 encoded (as tsig-keygen and
	// BIND's key statements print it).
	RFC2136Key string
}

var tsigAlgs = map[string]bool{
	dns.HmacSHA1: true, dns.HmacSHA224: true, dns.HmacSHA256: true, dns.HmacSHA384: true, dns.HmacSHA512: true,
}

// withDefaults fills RFC2136KeyAlg for the rfc2136 provider.
func (c DNSConfig) withDefaults() DNSConfig {
	c.Provider = strings.ToLower(strings.TrimSpace(c.Provider))
	if c.Provider == DNSRFC2136 && c.RFC2136KeyAlg == "" {
		c.RFC2136KeyAlg = DefaultRFC2136KeyAlg
	}
	c.RFC2136KeyAlg = strings.ToLower(c.RFC2136KeyAlg)
	return c
}

// Validate reports whether c names a known provider with every field it
// needs. An empty Provider is valid (no provider). Errors are
// errs.InvalidArgument naming the config key at fault.
func (c DNSConfig) Validate() error {
	c = c.withDefaults()
	bad := func(format string, args ...any) error {
		return errs.New(errs.InvalidArgument, format, args...)
	}
	switch c.Provider {
	case "":
		return nil
	case DNSCloudflare:
		if c.CloudflareAPIToken == "" {
			return bad("dns_provider cloudflare needs cloudflare_api_token (or cloudflare_api_token_file, or CLOUDFLARE_API_TOKEN in the environment)")
		}
		if strings.ContainsAny(c.CloudflareAPIToken, " \t\r\n") {
			return bad("cloudflare_api_token must not contain white space")
		}
	case DNSRFC2136:
		if c.RFC2136Server == "" {
			return bad("dns_provider rfc2136 needs rfc2136_server (host:port)")
		}
		if host, port, err := net.SplitHostPort(c.RFC2136Server); err != nil || host == "" || port == "" {
			return bad("rfc2136_server %q: want host:port", c.RFC2136Server)
		}
		if c.RFC2136KeyName == "" {
			return bad("dns_provider rfc2136 needs rfc2136_key_name")
		}
		if _, ok := dns.IsDomainName(c.RFC2136KeyName); !ok {
			return bad("rfc2136_key_name %q is not a domain name", c.RFC2136KeyName)
		}
		if !tsigAlgs[dns.Fqdn(c.RFC2136KeyAlg)] {
			return bad("rfc2136_key_alg %q: want hmac-sha256, hmac-sha1, hmac-sha224, hmac-sha384 or hmac-sha512", c.RFC2136KeyAlg)
		}
		if c.RFC2136Key == "" {
			return bad("dns_provider rfc2136 needs rfc2136_key (or rfc2136_key_file)")
		}
		if _, err := base64.StdEncoding.DecodeString(c.RFC2136Key); err != nil {
			return bad("rfc2136_key is not base64: %v", err)
		}
	default:
		return bad("dns_provider %q: want %s or %s", c.Provider, DNSCloudflare, DNSRFC2136)
	}
	return nil
}

// NewDNSProvider returns the libdns provider c names, for
// Config.DNSProvider, or nil when c.Provider is empty. Errors are those of
// Validate. It does no I/O: bad credentials show when the first
// certificate is requested (logged by the proxy, retried by certmagic).
func NewDNSProvider(c DNSConfig) (certmagic.DNSProvider, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	c = c.withDefaults()
	switch c.Provider {
	case DNSCloudflare:
		return &cloudflare.Provider{APIToken: c.CloudflareAPIToken}, nil
	case DNSRFC2136:
		return &rfc2136.Provider{Server: c.RFC2136Server, KeyName: c.RFC2136KeyName,
			KeyAlg: c.RFC2136KeyAlg, Key: c.RFC2136Key}, nil
	}
	return nil, nil
}
