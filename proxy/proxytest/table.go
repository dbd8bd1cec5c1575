package proxytest

import (
	"context"
	"sync"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/proxy"
)

// Table is an in-memory proxy.Routes and proxy.Domains, keyed by host.
// Safe for concurrent use.
type Table struct {
	mu      sync.Mutex
	routes  map[string]proxy.Route
	domains map[string]bool
	lookups map[string]int
}

var (
	_ proxy.Routes  = (*Table)(nil)
	_ proxy.Domains = (*Table)(nil)
)

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{routes: map[string]proxy.Route{}, domains: map[string]bool{}, lookups: map[string]int{}}
}

// Set routes host (e.g. "web.example.test") to r.
func (t *Table) Set(host string, r proxy.Route) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.routes[host] = r
}

// Delete removes host's route and custom-domain permission.
func (t *Table) Delete(host string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.routes, host)
	delete(t.domains, host)
}

// AllowDomain lets a custom domain get certificates (as if verified).
func (t *Table) AllowDomain(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.domains[name] = true
}

// Lookups reports how often Route was asked about host.
func (t *Table) Lookups(host string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lookups[host]
}

// Route implements proxy.Routes.
func (t *Table) Route(_ context.Context, host string) (proxy.Route, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lookups[host]++
	r, ok := t.routes[host]
	if !ok {
		return proxy.Route{}, errs.New(errs.NotFound, "route %s: no vm", host)
	}
	return r, nil
}

// AllowCertificate implements proxy.Domains.
func (t *Table) AllowCertificate(_ context.Context, name string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, routed := t.routes[name]
	if !t.domains[name] || !routed {
		return errs.New(errs.NotFound, "custom domain %s: not verified", name)
	}
	return nil
}
