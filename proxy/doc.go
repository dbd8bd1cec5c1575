// Package proxy is the HTTPS front door of every VM: https://<vm>.<domain>
// (and verified custom domains) reverse-proxied to the VM's chosen port.
//
// It owns certificate management (certmagic: a wildcard certificate by DNS-01
// when a DNS provider is configured, otherwise per-name certificates on
// demand, allowed only for names that exist), the HTTP->HTTPS redirect and
// HTTP-01 answers on the plain listener, sign-in for private VMs (one-time
// login links and share links that set a signed cookie scoped to the VM's
// host; links and cookies are bound to the VM's ID, owner and revocation
// counter), host-only rewriting of the cookies VMs set, per-client rate and
// connection limits with a global connection cap, an access log and
// Prometheus metrics.
//
// A proxied request is meant to cost the host little CPU, because on a
// small host that CPU is taken from the VMs: GET and HEAD requests without
// a body (most of what browsers send, over HTTP/1.1 and HTTP/2) skip
// httputil.ReverseProxy and go to the VM on the handler's own goroutine
// over pooled keep-alive connections, written straight from the incoming
// request (forward.go, upstream.go); other requests without a body take
// ReverseProxy over the same pool; verified session cookies are
// remembered and found without parsing the app's cookies; the access log
// is written in batches (LogBuffer). HTTP/1.x connections (plain, and
// HTTPS after the handshake when ALPN did not pick HTTP/2) are served by
// a loop of their own, one goroutine per connection, which answers those
// GETs and HEADs without net/http's per-request goroutine and wake-ups,
// byte for byte as net/http would, and hands the connection to the
// http.Server at the first request it does not take (a body, an upgrade,
// anything malformed) (h1.go, h1response.go). BenchmarkProxyCPU measures
// it over plain HTTP and HTTPS (HTTP/1.1 and HTTP/2); BenchmarkProxyCPUAB
// compares two builds side by side. What is left is mostly the system
// calls of the two hops and the scheduler's wake-ups while the loop waits
// for the client and for the VM.
//
// The proxy knows nothing of the store: it asks a Routes for the VM behind a
// host name, a Domains whether a custom name may get a certificate and a
// LinkLedger whether a one-time link was used. The daemon wires all three to
// the store. Without a Domain the proxy serves plain
// HTTP only, at http://<vm>.localhost:<port>, for local use.
//
// A Proxy is safe for concurrent use. Package proxytest holds reusable test
// fixtures: an in-process Pebble ACME server with a loopback DNS server, an
// in-memory route table and upstream helpers.
package proxy
