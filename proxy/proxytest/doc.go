// Package proxytest holds fixtures for testing the proxy and anything in
// front of it: an in-process Pebble ACME server (real certificates on
// loopback), a loopback DNS server that resolves every name to 127.0.0.1 and
// doubles as a libdns provider for DNS-01 or takes TSIG-signed RFC 2136
// updates (WithUpdateKey), an in-memory route table implementing
// proxy.Routes and proxy.Domains, upstream helpers that play the VM's own
// HTTP server, and a real headless Chromium driven over the DevTools
// protocol (Browser). Nothing here talks beyond loopback.
package proxytest
