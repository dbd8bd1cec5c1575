package api

import (
	"context"
	"net"
	"net/http"
	"net/url"

	"github.com/minionsdev/minions/service"
)

// Host endpoints (issue 14): the registry under /v1/hosts, admins only
// (the service checks), and POST /v1/nodes/join, which a new node calls
// with its one-time token instead of a caller's credential. The handler
// registers them by appending h.hostRoutes() to its table; Client
// implements cli.HostBackend over them.

// HostAddRequest is the body of POST /v1/hosts.
type HostAddRequest struct {
	Name string `json:"name"`
}

func (h *handler) hostRoutes() []route {
	s := h.svc
	call := func(m, p string, fn func(ctx context.Context, c service.Caller, r *http.Request) (any, error)) route {
		return route{method: m, pattern: p, plainFn: fn}
	}
	name := func(r *http.Request) string { return r.PathValue("name") }
	return []route{
		call(http.MethodGet, "/v1/hosts", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.HostList(ctx, c)
		}),
		call(http.MethodPost, "/v1/hosts", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var req HostAddRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.HostAdd(ctx, c, req.Name)
		}),
		call(http.MethodGet, "/v1/hosts/{name}", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.HostStatus(ctx, c, name(r))
		}),
		call(http.MethodDelete, "/v1/hosts/{name}", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return nil, s.HostRemove(ctx, c, name(r))
		}),
		call(http.MethodPost, "/v1/hosts/{name}/cordon", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.HostCordon(ctx, c, name(r))
		}),
		{method: http.MethodPost, pattern: "/v1/hosts/{name}/drain", kind: stream, streamFn: func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error) {
			var req service.DrainRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.HostDrain(ctx, c, name(r), req, p)
		}},
		call(http.MethodPost, "/v1/hosts/{name}/uncordon", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.HostUncordon(ctx, c, name(r))
		}),
		// The join token is the credential: no caller.
		{method: http.MethodPost, pattern: "/v1/nodes/join", public: true, plainFn: func(ctx context.Context, _ service.Caller, r *http.Request) (any, error) {
			var req service.JoinRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			if req.Address == "" {
				if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
					req.Address = host
				}
			}
			return s.JoinHost(ctx, req)
		}},
	}
}

func hostPath(name string, rest ...string) string {
	p := "/v1/hosts/" + url.PathEscape(name)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// HostAdd registers a host and returns its one-time join command.
func (c *Client) HostAdd(ctx context.Context, name string) (service.HostInvite, error) {
	var out service.HostInvite
	err := c.do(ctx, http.MethodPost, "/v1/hosts", HostAddRequest{Name: name}, &out)
	return out, err
}

// HostList lists the hosts.
func (c *Client) HostList(ctx context.Context) ([]service.Host, error) {
	var out []service.Host
	err := c.do(ctx, http.MethodGet, "/v1/hosts", nil, &out)
	return out, err
}

// HostStatus shows one host.
func (c *Client) HostStatus(ctx context.Context, name string) (service.Host, error) {
	var out service.Host
	err := c.do(ctx, http.MethodGet, hostPath(name), nil, &out)
	return out, err
}

// HostCordon keeps new VMs off a host.
func (c *Client) HostCordon(ctx context.Context, name string) (service.Host, error) {
	var out service.Host
	err := c.do(ctx, http.MethodPost, hostPath(name, "cordon"), nil, &out)
	return out, err
}

// HostDrain cordons a host and moves every VM off it
// (POST /v1/hosts/{name}/drain).
func (c *Client) HostDrain(ctx context.Context, name string, req service.DrainRequest, p service.Progress) (service.DrainResult, error) {
	var out service.DrainResult
	return out, c.long(ctx, hostPath(name, "drain"), req, p, &out)
}

// HostUncordon lets new VMs on a host again.
func (c *Client) HostUncordon(ctx context.Context, name string) (service.Host, error) {
	var out service.Host
	err := c.do(ctx, http.MethodPost, hostPath(name, "uncordon"), nil, &out)
	return out, err
}

// HostRemove forgets a host with no VMs.
func (c *Client) HostRemove(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, hostPath(name), nil, nil)
}

// JoinHost exchanges a join token for a node's membership (no caller
// credential needed: the token is one).
func (c *Client) JoinHost(ctx context.Context, req service.JoinRequest) (service.JoinResult, error) {
	var out service.JoinResult
	err := c.do(ctx, http.MethodPost, "/v1/nodes/join", req, &out)
	return out, err
}
