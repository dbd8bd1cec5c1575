package api

import (
	"context"
	"net/http"
	"net/url"

	"github.com/minionsdev/minions/service"
)

// Web endpoints: the proxy's port, public/private and links, custom
// domains. The handler registers them by appending h.webRoutes() to its
// table; Client implements service.WebBackend over them.

// ExposeRequest is the body of POST /v1/vms/{name}/expose.
type ExposeRequest struct {
	Port int `json:"port"`
}

// DomainRequest is the body of POST /v1/vms/{name}/domains.
type DomainRequest struct {
	Domain string `json:"domain"`
}

func (h *handler) webRoutes() []route {
	s := h.svc
	name := func(r *http.Request) string { return r.PathValue("name") }
	call := func(m, p string, fn func(ctx context.Context, c service.Caller, r *http.Request) (any, error)) route {
		return route{method: m, pattern: p, plainFn: fn}
	}
	return []route{
		call(http.MethodPost, "/v1/vms/{name}/expose", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var req ExposeRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.Expose(ctx, c, name(r), req.Port)
		}),
		call(http.MethodPost, "/v1/vms/{name}/share", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var req service.ShareRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.Share(ctx, c, name(r), req)
		}),
		call(http.MethodGet, "/v1/vms/{name}/domains", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.ListDomains(ctx, c, name(r))
		}),
		call(http.MethodPost, "/v1/vms/{name}/domains", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var req DomainRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.AddDomain(ctx, c, name(r), req.Domain)
		}),
		call(http.MethodPost, "/v1/vms/{name}/domains/{domain}/verify", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.VerifyDomain(ctx, c, name(r), r.PathValue("domain"))
		}),
		call(http.MethodDelete, "/v1/vms/{name}/domains/{domain}", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return nil, s.RemoveDomain(ctx, c, name(r), r.PathValue("domain"))
		}),
	}
}

// Expose sets the VM port the proxy forwards to.
func (c *Client) Expose(ctx context.Context, name string, port int) (service.WebInfo, error) {
	return call[service.WebInfo](ctx, c, http.MethodPost, vmPath(name, "expose"), ExposeRequest{Port: port})
}

// Share changes who may reach the VM and mints links.
func (c *Client) Share(ctx context.Context, name string, req service.ShareRequest) (service.WebInfo, error) {
	return call[service.WebInfo](ctx, c, http.MethodPost, vmPath(name, "share"), req)
}

// AddDomain attaches a custom domain and tries to verify it.
func (c *Client) AddDomain(ctx context.Context, name, domain string) (service.Domain, error) {
	return call[service.Domain](ctx, c, http.MethodPost, vmPath(name, "domains"), DomainRequest{Domain: domain})
}

// VerifyDomain re-checks a custom domain's DNS record.
func (c *Client) VerifyDomain(ctx context.Context, name, domain string) (service.Domain, error) {
	return call[service.Domain](ctx, c, http.MethodPost, vmPath(name, "domains", url.PathEscape(domain), "verify"), nil)
}

// ListDomains lists a VM's custom domains.
func (c *Client) ListDomains(ctx context.Context, name string) ([]service.Domain, error) {
	return call[[]service.Domain](ctx, c, http.MethodGet, vmPath(name, "domains"), nil)
}

// RemoveDomain detaches a custom domain.
func (c *Client) RemoveDomain(ctx context.Context, name, domain string) error {
	return c.do(ctx, http.MethodDelete, vmPath(name, "domains", url.PathEscape(domain)), nil, nil)
}
