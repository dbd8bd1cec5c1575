package api

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/minionsdev/minions/fabric/nodeauth"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// Image distribution to nodes (issue 14): a node whose engine lacks the
// image (or guest kernel) a create names asks what the ref means and
// fetches the files it lacks by checksum:
//
//	GET /v1/fabric/images/{ref}     images.Bundle: the image's manifest and
//	                                the kernel it boots with (newest here)
//	GET /v1/fabric/blobs/{sha256}   one file by checksum; with
//	                                `Accept: application/vnd.minions.sparse`
//	                                in the sparse encoding (holes skipped),
//	                                else plain bytes (Range works)
//
// Callers: a node signing its request with its NKey (the hosts registry
// holds each node's public key; see nodeauth.SignRequest), or an admin
// (token, or root on the unix socket). Anyone else gets 403, with or
// without credentials: nothing here is for users. The handler registers
// them by appending h.fabricRoutes() to its table.
//
// Why HTTP and not a JetStream object store: the files already sit in the
// catalogue, immutable and named by version; an object store would keep a
// second copy of every multi-GiB image (and hash and chunk it again on
// every build), while HTTP serves the published file as it is, sends
// only its data extents, answers Range requests (a resume is possible;
// the node does not resume yet), and needs no stream limits sized to the
// largest image.

// blobIndex maps checksums to the catalogue files that have them.
type blobIndex struct {
	mu    sync.Mutex
	paths map[string]string
}

func (x *blobIndex) add(dir string, m images.Manifest) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.paths == nil {
		x.paths = map[string]string{}
	}
	for _, f := range m.Files {
		x.paths[f.SHA256] = filepath.Join(dir, filepath.FromSlash(f.Path))
	}
}

func (x *blobIndex) get(sum string) (string, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	p, ok := x.paths[sum]
	return p, ok
}

// catalogOf is the image catalogue the service manages on this host.
func catalogOf(s *service.Service) (*images.Catalog, error) {
	if hc, ok := s.Images.(service.HostCatalog); ok && hc.Cat != nil {
		return hc.Cat, nil
	}
	return nil, errs.New(errs.Unavailable, "this host has no image catalogue to serve")
}

// bundle resolves ref on this host's catalogue and indexes its files.
func bundle(cat *images.Catalog, idx *blobIndex, ref string) (images.Bundle, error) {
	im, err := cat.Resolve(ref)
	if err != nil {
		return images.Bundle{}, err
	}
	m, err := cat.ImageManifest(im.Ref())
	if err != nil {
		return images.Bundle{}, err
	}
	idx.add(filepath.Dir(im.Path), m)
	b := images.Bundle{Image: m}
	if k, err := images.NewestKernel(cat.KernelDir()); err == nil {
		km, err := cat.KernelManifest(k.Version)
		if err != nil {
			return images.Bundle{}, err
		}
		idx.add(filepath.Join(cat.KernelDir(), k.Version), km)
		b.Kernel = &km
	}
	return b, nil
}

// reindex indexes every image and the newest kernel (after a restart, or
// for a checksum no bundle named yet).
func reindex(cat *images.Catalog, idx *blobIndex) error {
	all, err := cat.List()
	if err != nil {
		return err
	}
	for _, im := range all {
		if _, err := bundle(cat, idx, im.Ref()); err != nil {
			return err
		}
	}
	if len(all) == 0 {
		if k, err := images.NewestKernel(cat.KernelDir()); err == nil {
			if km, err := cat.KernelManifest(k.Version); err == nil {
				idx.add(filepath.Join(cat.KernelDir(), k.Version), km)
			}
		}
	}
	return nil
}

// fabricAllowed admits a registered node (signed request) or an admin;
// anyone else is errs.PermissionDenied.
func (h *handler) fabricAllowed(ctx context.Context, r *http.Request) error {
	a := r.Header.Get("Authorization")
	if nodeauth.IsNodeAuth(a) {
		pub, err := nodeauth.VerifyRequest(a, r.Method, r.URL.RequestURI(), time.Now())
		if err != nil {
			return err
		}
		if _, ok := h.svc.NodeKey(ctx, pub); !ok {
			return errs.New(errs.PermissionDenied, "the signing key is no registered host's")
		}
		return nil
	}
	c, err := h.authenticate(r)
	if err != nil || !c.Admin {
		return errs.New(errs.PermissionDenied, "images and kernels are served to nodes (signed requests) and admins only")
	}
	return nil
}

func (h *handler) fabricRoutes() []route {
	idx := &blobIndex{}
	return []route{
		{method: http.MethodGet, pattern: "/v1/fabric/images/{ref}", public: true,
			plainFn: func(ctx context.Context, _ service.Caller, r *http.Request) (any, error) {
				if err := h.fabricAllowed(ctx, r); err != nil {
					return nil, err
				}
				cat, err := catalogOf(h.svc)
				if err != nil {
					return nil, err
				}
				return bundle(cat, idx, r.PathValue("ref"))
			}},
		{method: http.MethodGet, pattern: "/v1/fabric/blobs/{sha256}", kind: raw, public: true,
			rawFn: func(w http.ResponseWriter, r *http.Request, _ service.Caller) {
				if err := h.fabricAllowed(r.Context(), r); err != nil {
					writeError(w, err)
					return
				}
				h.serveBlob(w, r, idx)
			}},
	}
}

func (h *handler) serveBlob(w http.ResponseWriter, r *http.Request, idx *blobIndex) {
	sum := r.PathValue("sha256")
	if !images.ValidSHA256(sum) {
		writeError(w, errs.New(errs.InvalidArgument, "blob %q: want a lowercase hex SHA-256", sum))
		return
	}
	cat, err := catalogOf(h.svc)
	if err != nil {
		writeError(w, err)
		return
	}
	p, ok := idx.get(sum)
	if !ok {
		if err := reindex(cat, idx); err != nil {
			writeError(w, err)
			return
		}
		if p, ok = idx.get(sum); !ok {
			writeError(w, errs.New(errs.NotFound, "no image or kernel file has sha256 %s", sum))
			return
		}
	}
	f, err := os.Open(p)
	if err != nil {
		writeError(w, errs.New(errs.NotFound, "blob %s: %v", sum, err))
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if r.Header.Get("Accept") == images.SparseContentType {
		w.Header().Set("Content-Type", images.SparseContentType)
		w.WriteHeader(http.StatusOK)
		if _, err := images.WriteSparse(w, p); err != nil {
			h.log.Debug("blob sent partly", "sha256", sum, "err", err)
		}
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", st.ModTime(), f)
}
