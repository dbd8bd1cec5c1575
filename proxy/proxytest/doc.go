// Package proxytest holds fixtures for testing the proxy and anything in
// front of it: an in-process Pebble ACME server (real certificates on
// loopback), a loopback DNS server that resolves every name to 127.0.0.1 and
// doubles as a libdns provider for DNS-01 or takes TSIG-signed RFC 2136
// updates (WithUpdateKey), an in-memory route table
// implementing proxy.Routes and proxy.Domains, and upstream helpers that
// play the VM's own HTTP server. Nothing here talks beyond loopback.
package proxytest
