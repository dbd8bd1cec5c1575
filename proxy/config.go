package proxy

import (
	"cmp"
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/minionsdev/minions/internal/errs"
)

// Defaults applied by Config.withDefaults for zero fields.
const (
	DefaultHTTPSBind             = "0.0.0.0:443"
	DefaultHTTPBind              = "0.0.0.0:80"
	DefaultRatePerSecond         = 50
	DefaultBurst                 = 100
	DefaultMaxConnsPerIP         = 64
	DefaultMaxConns              = 4096
	DefaultIdleTimeout           = 5 * time.Minute
	DefaultUpstreamHeaderTimeout = 60 * time.Second
	DefaultDialTimeout           = 5 * time.Second
	DefaultSessionTTL            = 24 * time.Hour
	DefaultShutdownTimeout       = 10 * time.Second
	// SecretSize is the required length of Config.Secret in bytes.
	SecretSize = 32
)

// Config configures a Proxy. Zero values take the documented defaults.
type Config struct {
	// Domain is the parent domain of VM names: a VM "web" is served at
	// https://web.<Domain>. Empty selects local mode: plain HTTP only on
	// HTTPBind, at http://<vm>.localhost:<port>, no certificates.
	Domain string

	// HTTPSBind is the TLS listen address (default 0.0.0.0:443). Unused in
	// local mode.
	HTTPSBind string
	// HTTPBind is the plain HTTP listen address (default 0.0.0.0:80). With a
	// Domain it answers HTTP-01 challenges and redirects to HTTPS; in local
	// mode it serves the VMs.
	HTTPBind string
	// PublicHTTPSPort and PublicHTTPPort are the ports clients use to reach
	// the proxy, for links and redirects. Zero means the port of HTTPSBind
	// and HTTPBind (after binding, so ":0" in tests works).
	PublicHTTPSPort int
	PublicHTTPPort  int

	// ACMECA is the ACME directory URL (default Let's Encrypt production,
	// or staging when Staging is set).
	ACMECA string
	// Staging selects Let's Encrypt's staging CA when ACMECA is empty.
	Staging bool
	// ACMEEmail is the account contact address (optional but recommended).
	ACMEEmail string
	// CARoots, if set, are the roots trusted for the ACME server's own TLS
	// connection (Pebble in tests). Nil means the system roots.
	CARoots *x509.CertPool
	// StorageDir holds certificates, keys, ACME accounts and locks
	// (certmagic FileStorage). Required with a Domain.
	StorageDir string
	// DNSProvider, if set, obtains one wildcard certificate for *.<Domain> by
	// DNS-01. Nil means per-name certificates on demand (HTTP-01/TLS-ALPN-01).
	// Custom domains always use on-demand certificates. Until the wildcard
	// is issued, handshakes for VM names fail (no per-name fallback, so a
	// slow DNS provider cannot burn the CA's rate limits). NewDNSProvider
	// builds one from a DNSConfig (Cloudflare, RFC 2136).
	DNSProvider certmagic.DNSProvider
	// DNSResolvers are "host:port" resolvers certmagic uses to find the zone
	// and check propagation of DNS-01 records. Nil means the system's.
	DNSResolvers []string
	// DNSPropagationTimeout bounds DNS-01 propagation checks; -1 disables
	// them. Zero means certmagic's default (2 minutes).
	DNSPropagationTimeout time.Duration

	// Secret is the HMAC key for login links and session cookies: exactly
	// SecretSize random bytes, persisted by the caller so sessions survive
	// restarts. Required.
	Secret []byte
	// SessionTTL is how long a sign-in cookie lasts (default 24h).
	SessionTTL time.Duration

	// RatePerSecond and Burst bound requests per client IP (token bucket,
	// defaults 50/s and 100). A negative RatePerSecond disables the limit.
	RatePerSecond float64
	Burst         int
	// MaxConnsPerIP bounds concurrent connections per client IP (default
	// 64); connections beyond it get one 429 answer and are closed.
	// Negative disables the limit.
	MaxConnsPerIP int
	// MaxConns bounds concurrent client connections from all addresses
	// together (default 4096), so many addresses each under MaxConnsPerIP
	// cannot exhaust the host's file descriptors and memory. Connections
	// beyond it get one 429 answer and are closed. Negative disables it;
	// when both are on it must be at least MaxConnsPerIP.
	MaxConns int

	// IdleTimeout closes a proxied exchange (request, response, WebSocket)
	// after this long with no bytes either way, and idle client keep-alive
	// connections (default 5m). There is no total timeout.
	IdleTimeout time.Duration
	// UpstreamHeaderTimeout bounds the wait for a VM's response headers
	// after the request is sent (default 60s).
	UpstreamHeaderTimeout time.Duration
	// DialTimeout bounds connecting to a VM (default 5s).
	DialTimeout time.Duration

	// DialVM connects to port of VM id for an upstream named
	// "<id>.vm.minions.invalid:<port>" (VMUpstreamHost): a VM on another
	// host, reached through its node (service.DialWeb). Nil: such
	// upstreams fail.
	DialVM func(ctx context.Context, id string, port int) (net.Conn, error)
	// ShutdownTimeout bounds graceful shutdown in Run (default 10s).
	ShutdownTimeout time.Duration

	// Resolver looks up TXT and CNAME records for custom domain
	// verification (default net.DefaultResolver).
	Resolver Resolver

	// Links remembers redeemed one-time sign-in links. The default keeps
	// them in memory, so a used link works once more after a restart;
	// the daemon passes one backed by the store.
	Links LinkLedger

	// Log receives operational logs (default slog.Default()); AccessLog
	// receives one record per request (default Log). Use a handler that
	// discards to turn access logging off.
	Log       *slog.Logger
	AccessLog *slog.Logger
}

// withDefaults returns a copy of c with defaults applied.
func (c Config) withDefaults() Config {
	c.Domain = strings.TrimSuffix(strings.ToLower(c.Domain), ".")
	c.HTTPSBind = cmp.Or(c.HTTPSBind, DefaultHTTPSBind)
	c.HTTPBind = cmp.Or(c.HTTPBind, DefaultHTTPBind)
	if c.ACMECA == "" {
		c.ACMECA = certmagic.LetsEncryptProductionCA
		if c.Staging {
			c.ACMECA = certmagic.LetsEncryptStagingCA
		}
	}
	c.SessionTTL = cmp.Or(c.SessionTTL, DefaultSessionTTL)
	c.RatePerSecond = cmp.Or(c.RatePerSecond, DefaultRatePerSecond)
	c.Burst = cmp.Or(c.Burst, DefaultBurst)
	c.MaxConnsPerIP = cmp.Or(c.MaxConnsPerIP, DefaultMaxConnsPerIP)
	c.MaxConns = cmp.Or(c.MaxConns, DefaultMaxConns)
	c.IdleTimeout = cmp.Or(c.IdleTimeout, DefaultIdleTimeout)
	c.UpstreamHeaderTimeout = cmp.Or(c.UpstreamHeaderTimeout, DefaultUpstreamHeaderTimeout)
	c.DialTimeout = cmp.Or(c.DialTimeout, DefaultDialTimeout)
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, DefaultShutdownTimeout)
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.Links == nil {
		c.Links = &memLedger{}
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.AccessLog == nil {
		c.AccessLog = c.Log
	}
	return c
}

// Validate reports whether c (after defaults) is usable. Errors are
// errs.InvalidArgument.
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(format string, args ...any) error {
		return errs.New(errs.InvalidArgument, "proxy config: "+format, args...)
	}
	if len(c.Secret) != SecretSize {
		return bad("secret must be %d bytes, got %d", SecretSize, len(c.Secret))
	}
	if c.Domain != "" {
		if err := checkHostname(c.Domain); err != nil {
			return bad("domain: %v", err)
		}
		if c.StorageDir == "" {
			return bad("storage dir is required with a domain")
		}
		if _, _, err := net.SplitHostPort(c.HTTPSBind); err != nil {
			return bad("https bind %q: %v", c.HTTPSBind, err)
		}
		if !strings.HasPrefix(c.ACMECA, "https://") {
			return bad("acme ca %q must be an https URL", c.ACMECA)
		}
	}
	if _, _, err := net.SplitHostPort(c.HTTPBind); err != nil {
		return bad("http bind %q: %v", c.HTTPBind, err)
	}
	if c.MaxConns > 0 && c.MaxConnsPerIP > c.MaxConns {
		return bad("max conns (%d) must be at least max conns per ip (%d)", c.MaxConns, c.MaxConnsPerIP)
	}
	if c.RatePerSecond > 0 && c.Burst < 1 {
		return bad("burst must be at least 1")
	}
	for name, d := range map[string]time.Duration{"session ttl": c.SessionTTL, "idle timeout": c.IdleTimeout,
		"upstream header timeout": c.UpstreamHeaderTimeout, "dial timeout": c.DialTimeout, "shutdown timeout": c.ShutdownTimeout} {
		if d < 0 {
			return bad("%s must not be negative", name)
		}
	}
	for _, p := range []int{c.PublicHTTPPort, c.PublicHTTPSPort} {
		if p < 0 || p > 65535 {
			return bad("public port %d out of range", p)
		}
	}
	return nil
}

// checkHostname accepts a lowercase DNS name of letters, digits and hyphens
// with at least two labels.
func checkHostname(h string) error {
	if len(h) > 253 {
		return fmt.Errorf("%q is too long", h)
	}
	labels := strings.Split(h, ".")
	if len(labels) < 2 {
		return fmt.Errorf("%q needs at least two labels", h)
	}
	for _, l := range labels {
		if !validLabel(l) {
			return fmt.Errorf("%q has an invalid label %q", h, l)
		}
	}
	return nil
}

func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
