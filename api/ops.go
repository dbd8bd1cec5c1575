package api

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// Operations endpoints: a VM's restart policy and the event log. The
// handler registers them by appending h.opsRoutes() to its table; Client
// implements service.OpsBackend over them.

// UpdateRequest is the body of PATCH /v1/vms/{name}: the settings to
// change (empty fields stay as they are).
type UpdateRequest struct {
	Restart string `json:"restart,omitempty"` // no, on-failure or always
}

func (h *handler) opsRoutes() []route {
	s := h.svc
	call := func(m, p string, fn func(ctx context.Context, c service.Caller, r *http.Request) (any, error)) route {
		return route{method: m, pattern: p, plainFn: fn}
	}
	return []route{
		call(http.MethodPatch, "/v1/vms/{name}", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var req UpdateRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			if req.Restart == "" {
				return nil, errs.New(errs.InvalidArgument, "nothing to update: set restart")
			}
			return s.SetRestartPolicy(ctx, c, r.PathValue("name"), req.Restart)
		}),
		call(http.MethodGet, "/v1/events", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			q := r.URL.Query()
			f := service.EventFilter{VM: q.Get("vm")}
			var err error
			if v := q.Get("after"); v != "" {
				if f.AfterID, err = strconv.ParseInt(v, 10, 64); err != nil {
					return nil, errs.New(errs.InvalidArgument, "after must be an event id")
				}
			}
			if v := q.Get("limit"); v != "" {
				if f.Limit, err = strconv.Atoi(v); err != nil {
					return nil, errs.New(errs.InvalidArgument, "limit must be a number")
				}
			}
			evs, err := s.Events(ctx, c, f)
			if evs == nil && err == nil {
				evs = []service.Event{}
			}
			return evs, err
		}),
	}
}

func (c *Client) SetRestartPolicy(ctx context.Context, name, policy string) (service.VM, error) {
	var v service.VM
	return v, c.do(ctx, http.MethodPatch, vmPath(name), UpdateRequest{Restart: policy}, &v)
}

func (c *Client) Events(ctx context.Context, f service.EventFilter) ([]service.Event, error) {
	q := url.Values{}
	if f.VM != "" {
		q.Set("vm", f.VM)
	}
	if f.AfterID != 0 {
		q.Set("after", strconv.FormatInt(f.AfterID, 10))
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out []service.Event
	return out, c.do(ctx, http.MethodGet, "/v1/events?"+q.Encode(), nil, &out)
}
