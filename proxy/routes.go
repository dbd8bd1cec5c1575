package proxy

import (
	"context"
	"net"
	"strings"
)

// Route is where the proxy sends requests for one host name.
type Route struct {
	VMID   string // immutable VM ID; cookies are bound to it
	VMName string // current name, for pages and logs
	Owner  string // the owning user's identity, as passed to LoginLink
	// Gen is the VM's revocation counter: links and sessions minted under
	// another value are refused. The route table must change it whenever
	// outstanding links must end (share --private, rename, destroy).
	Gen int64
	// Upstream is the VM's "ip:port" (the port chosen by `minions expose`,
	// default 80).
	Upstream string
	// Public lets anyone through; otherwise only the signed-in owner (or a
	// holder of a share link) is admitted.
	Public bool
	// Running is false when the VM is stopped: the proxy then answers with
	// a "stopped" page instead of dialing.
	Running bool
}

// Routes maps a request's host to a VM. Implementations must be safe for
// concurrent use and fast (called on every request and TLS handshake).
type Routes interface {
	// Route returns the route for host: "<vm>.<Domain>", "<vm>.localhost"
	// in local mode (see SplitHost), or a verified custom domain. host is
	// lowercase with no port and no trailing dot. It returns an error of
	// class errs.NotFound when no VM or custom domain matches; any other
	// error is answered with 503.
	Route(ctx context.Context, host string) (Route, error)
}

// Domains decides about custom domains (names outside Domain).
type Domains interface {
	// AllowCertificate returns nil when a certificate may be requested for
	// name: a custom domain that exists, belongs to a VM, and has passed
	// VerifyDomain. It is called from the TLS handshake before any ACME
	// request, so it must be fast and must deny unknown names.
	AllowCertificate(ctx context.Context, name string) error
}

// Resolver is the subset of *net.Resolver used to verify custom domains.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupCNAME(ctx context.Context, host string) (string, error)
}

var _ Resolver = (*net.Resolver)(nil)

// normalizeHost lowercases host and strips a port and a trailing dot.
func normalizeHost(host string) string {
	// Without a colon there is no port (and SplitHostPort's error for
	// that is an allocation per request).
	if strings.IndexByte(host, ':') < 0 {
		return strings.TrimSuffix(strings.ToLower(host), ".")
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

// SplitHost reports which VM name a normalized host addresses under domain
// (or under "localhost" when domain is empty): "web.example.com" -> "web",
// true. Names with more labels, the bare domain and other names return
// false; those may still be custom domains.
func SplitHost(host, domain string) (vmName string, ok bool) {
	if domain == "" {
		domain = "localhost"
	}
	name, found := strings.CutSuffix(host, "."+domain)
	if !found || !validLabel(name) {
		return "", false
	}
	return name, true
}
