package api

import (
	"context"
	"net/http"
	"net/url"

	"github.com/minionsdev/minions/service"
)

// Image endpoints: list (with each version's warm templates) and the
// default for everyone signed in; build, remove, setting the default and
// warming a template for admins (the service checks). The
// handler registers them by appending h.imageRoutes() to its table; Client
// implements service.ImageBackend over them.

// DefaultImageRequest is the body of PUT /v1/images/default; an empty
// image goes back to the configured default.
type DefaultImageRequest struct {
	Image string `json:"image"`
}

// RemovedImages is the body of DELETE /v1/images/{ref}.
type RemovedImages struct {
	Removed []service.ImageInfo `json:"removed"`
}

func (h *handler) imageRoutes() []route {
	s := h.svc
	call := func(m, p string, fn func(ctx context.Context, c service.Caller, r *http.Request) (any, error)) route {
		return route{method: m, pattern: p, plainFn: fn}
	}
	return []route{
		call(http.MethodGet, "/v1/images", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.ListImages(ctx, c)
		}),
		// A build takes minutes: a long operation, never under the
		// request timeout.
		{method: http.MethodPost, pattern: "/v1/images", kind: stream,
			streamFn: func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error) {
				var req service.ImageBuildRequest
				if err := decode(r, &req); err != nil {
					return nil, err
				}
				return s.BuildImage(ctx, c, req, p)
			}},
		// A template build boots a VM: a long operation too.
		{method: http.MethodPost, pattern: "/v1/templates", kind: stream,
			streamFn: func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error) {
				var req service.WarmRequest
				if err := decode(r, &req); err != nil {
					return nil, err
				}
				return s.WarmImage(ctx, c, req, p)
			}},
		call(http.MethodGet, "/v1/images/default", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.DefaultImageInfo(ctx, c)
		}),
		call(http.MethodPut, "/v1/images/default", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var req DefaultImageRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.SetDefaultImage(ctx, c, req.Image)
		}),
		call(http.MethodDelete, "/v1/images/{ref}", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			removed, err := s.RemoveImage(ctx, c, r.PathValue("ref"))
			if err != nil {
				return nil, err
			}
			return RemovedImages{Removed: removed}, nil
		}),
	}
}

// ListImages lists the built images, the default marked.
func (c *Client) ListImages(ctx context.Context) ([]service.ImageInfo, error) {
	var ims []service.ImageInfo
	return ims, c.do(ctx, http.MethodGet, "/v1/images", nil, &ims)
}

// DefaultImage returns the image creates use without one.
func (c *Client) DefaultImage(ctx context.Context) (service.ImageDefault, error) {
	var d service.ImageDefault
	return d, c.do(ctx, http.MethodGet, "/v1/images/default", nil, &d)
}

// SetDefaultImage sets the default image ("" resets it). Admins only.
func (c *Client) SetDefaultImage(ctx context.Context, ref string) (service.ImageDefault, error) {
	var d service.ImageDefault
	return d, c.do(ctx, http.MethodPut, "/v1/images/default", DefaultImageRequest{Image: ref}, &d)
}

// BuildImage builds a new image version, reporting each step. Admins only.
func (c *Client) BuildImage(ctx context.Context, req service.ImageBuildRequest, p service.Progress) (service.ImageInfo, error) {
	var im service.ImageInfo
	return im, c.long(ctx, "/v1/images", req, p, &im)
}

// RemoveImage removes one version or every version of an image. Admins
// only.
func (c *Client) RemoveImage(ctx context.Context, ref string) ([]service.ImageInfo, error) {
	var out RemovedImages
	return out.Removed, c.do(ctx, http.MethodDelete, "/v1/images/"+url.PathEscape(ref), nil, &out)
}

// WarmImage builds the warm template of an image and shape unless it
// exists, reporting each step. Admins only.
func (c *Client) WarmImage(ctx context.Context, req service.WarmRequest, p service.Progress) (service.TemplateInfo, error) {
	var t service.TemplateInfo
	return t, c.long(ctx, "/v1/templates", req, p, &t)
}
