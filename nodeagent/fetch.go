package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
)

// FetchConfig configures a Fetcher.
type FetchConfig struct {
	// Control is the control plane's API URL (http(s)://host:port), as
	// the node joined it (Credential.Control). Required.
	Control string
	// Seed is the node's NKey seed: every request is signed with it
	// (fabric.SignRequest). Required.
	Seed string
	// Catalog is the node's image catalogue, where fetched images and
	// kernels are installed. Required.
	Catalog *images.Catalog
	// Client makes the requests (default: a client of its own with no
	// overall timeout; requests follow the caller's ctx).
	Client *http.Client
	// Timeout bounds one image or kernel download (default 30 min). A
	// download shared by several callers runs until it ends or this
	// passes, even when the caller that started it gives up.
	Timeout time.Duration
	// Log receives a line per download (default: discard).
	Log *slog.Logger
}

// Fetcher fetches images and kernels from the control plane by checksum
// into the node's catalogue (images.Catalog.Receive: verified, written
// aside, synced, renamed into place). Concurrent calls for the same image
// or kernel share one download. Safe for concurrent use.
type Fetcher struct {
	cfg   FetchConfig
	base  string
	hc    *http.Client
	log   *slog.Logger
	group singleflight.Group
}

// NewFetcher checks cfg and returns a Fetcher.
func NewFetcher(cfg FetchConfig) (*Fetcher, error) {
	if cfg.Control != "" && !strings.Contains(cfg.Control, "://") {
		cfg.Control = "http://" + cfg.Control // as `node join` takes it
	}
	u, err := url.Parse(cfg.Control)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errs.New(errs.InvalidArgument, "fetch: control plane URL %q: want http(s)://host:port", cfg.Control)
	}
	if _, err := fabric.PublicKeyOf(cfg.Seed); err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	if cfg.Catalog == nil {
		return nil, errs.New(errs.InvalidArgument, "fetch: a catalogue is required")
	}
	if err := cfg.Catalog.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Minute
	}
	f := &Fetcher{cfg: cfg, base: u.Scheme + "://" + u.Host + strings.TrimRight(u.Path, "/"), hc: cfg.Client, log: cfg.Log}
	if f.hc == nil {
		f.hc = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.log = f.log.With("component", "fetch")
	return f, nil
}

// get sends a signed GET for path (escaped) and returns the response of
// a 200; any other status is an error of the class the API reports.
func (f *Fetcher) get(ctx context.Context, path, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.base+path, nil)
	if err != nil {
		return nil, err
	}
	auth, err := fabric.SignRequest(f.cfg.Seed, http.MethodGet, req.URL.RequestURI(), time.Now())
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", auth)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := f.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, errs.New(errs.Unavailable, "control plane %s: %v", f.base, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &body) == nil && body.Error.Message != "" {
		if c := errs.FromCode(body.Error.Code); c != nil {
			return nil, errs.New(c, "control plane: %s", body.Error.Message)
		}
		return nil, fmt.Errorf("control plane: %s", body.Error.Message)
	}
	return nil, errs.New(errs.Unavailable, "control plane %s: GET %s: %s", f.base, path, resp.Status)
}

// Bundle asks the control plane what image ref means there: the image's
// files and the kernel it boots with, by checksum.
func (f *Fetcher) Bundle(ctx context.Context, ref string) (images.Bundle, error) {
	if _, _, err := images.ParseRef(ref); err != nil {
		return images.Bundle{}, err
	}
	resp, err := f.get(ctx, "/v1/fabric/images/"+url.PathEscape(ref), "")
	if err != nil {
		return images.Bundle{}, fmt.Errorf("image %s: %w", ref, err)
	}
	defer resp.Body.Close()
	var b images.Bundle
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&b); err != nil {
		return images.Bundle{}, errs.New(errs.Unavailable, "image %s: control plane's answer: %v", ref, err)
	}
	if err := b.Image.Validate(); err != nil {
		return images.Bundle{}, err
	}
	if b.Image.Kind != images.KindImage {
		return images.Bundle{}, errs.New(errs.Unavailable, "image %s: the control plane sent a %s manifest", ref, b.Image.Kind)
	}
	if b.Kernel != nil {
		if err := b.Kernel.Validate(); err != nil {
			return images.Bundle{}, err
		}
		if b.Kernel.Kind != images.KindKernel {
			return images.Bundle{}, errs.New(errs.Unavailable, "image %s: the control plane sent a %s manifest as kernel", ref, b.Kernel.Kind)
		}
	}
	return b, nil
}

// Ensure installs what m describes unless the catalogue has it; callers
// asking for the same image or kernel at once share one download. It
// returns the bytes this call's download moved (0 for a shared or
// needless one).
func (f *Fetcher) Ensure(ctx context.Context, m images.Manifest) (int64, error) {
	if err := m.Validate(); err != nil {
		return 0, err
	}
	if f.cfg.Catalog.Has(m) {
		return 0, nil
	}
	ch := f.group.DoChan(m.Kind+" "+m.Name, func() (any, error) {
		// The download outlives a caller that gives up: others may wait
		// on it, and a finished one serves the next create.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.cfg.Timeout)
		defer cancel()
		start := time.Now()
		n, err := f.cfg.Catalog.Receive(dctx, m, f.open)
		if err != nil {
			f.log.Warn("download failed", "kind", m.Kind, "name", m.Name, "bytes", n, "err", err)
			return n, err
		}
		f.log.Info("downloaded", "kind", m.Kind, "name", m.Name, "bytes", n, "ms", time.Since(start).Milliseconds())
		return n, nil
	})
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case r := <-ch:
		n, _ := r.Val.(int64)
		if r.Shared {
			n = 0
		}
		return n, r.Err
	}
}

// open is the catalogue's BlobOpener: a file by checksum, sparse-encoded
// when the server offers it.
func (f *Fetcher) open(ctx context.Context, bf images.BlobFile) (io.ReadCloser, bool, error) {
	resp, err := f.get(ctx, "/v1/fabric/blobs/"+bf.SHA256, images.SparseContentType)
	if err != nil {
		return nil, false, err
	}
	return resp.Body, resp.Header.Get("Content-Type") == images.SparseContentType, nil
}

// isMissing reports whether err says an image or kernel is not here.
func isMissing(err error) bool {
	return errors.Is(err, errs.NotFound) || errors.Is(err, errs.FailedPrecondition)
}
