package api

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// Config configures the handler.
type Config struct {
	// Service is the façade every route calls (required).
	Service *service.Service
	// Log receives one line per request (default: discard).
	Log *slog.Logger
	// AdminTokens are token secrets named in the daemon's config; a request
	// bearing one acts as the admin "root". Each must be at least 16
	// characters.
	AdminTokens []string
	// MaxBodyBytes bounds request bodies (default 1 MiB).
	MaxBodyBytes int64
	// RequestTimeout bounds every request except streams (long operations,
	// exec, logs --follow); default 2 minutes.
	RequestTimeout time.Duration
}

func (c *Config) setDefaults() {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 2 * time.Minute
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Service == nil {
		return errs.New(errs.InvalidArgument, "api: a service is required")
	}
	for _, t := range c.AdminTokens {
		if len(t) < 16 {
			return errs.New(errs.InvalidArgument, "api: admin tokens must be at least 16 characters")
		}
	}
	if c.MaxBodyBytes < 0 || c.RequestTimeout < 0 {
		return errs.New(errs.InvalidArgument, "api: negative body limit or timeout")
	}
	return nil
}

// kind says how a route responds.
type kind int

const (
	plain  kind = iota // JSON response, request timeout applies
	stream             // long operation: NDJSON progress on request, no timeout
	raw                // writes its own response (exec, logs), no timeout
)

// route is one endpoint. pattern is a net/http ServeMux pattern; the
// OpenAPI path is the same with "..." wildcards written plain.
type route struct {
	method, pattern string
	kind            kind
	public          bool // no authentication (the API document)
	plainFn         func(ctx context.Context, c service.Caller, r *http.Request) (any, error)
	streamFn        func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error)
	rawFn           func(w http.ResponseWriter, r *http.Request, c service.Caller)
}

type handler struct {
	cfg    Config
	svc    *service.Service
	log    *slog.Logger
	mux    *http.ServeMux
	routes []route

	rootMu sync.Mutex
	root   *service.Caller
}

// NewHandler returns the API handler. It panics on an invalid Config (a
// programming error in the composition root); call Config.Validate first
// to get an error instead.
func NewHandler(cfg Config) http.Handler {
	h, err := newHandler(cfg)
	if err != nil {
		panic(err)
	}
	return h
}

func newHandler(cfg Config) (*handler, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := &handler{cfg: cfg, svc: cfg.Service, log: cfg.Log.With("component", "api"), mux: http.NewServeMux()}
	h.routes = h.table()
	for _, rt := range h.routes {
		h.mux.Handle(rt.method+" "+rt.pattern, h.wrap(rt))
	}
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errs.New(errs.NotFound, "no route %s %s", r.Method, r.URL.Path))
	})
	return h, nil
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// statusWriter records the status for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (h *handler) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		var c service.Caller
		defer func() {
			status := sw.status
			if status == 0 {
				status = http.StatusSwitchingProtocols
			}
			h.log.Debug("request", "method", r.Method, "path", r.URL.Path, "user", c.Name, "status", status, "ms", time.Since(start).Milliseconds())
		}()
		if r.Body != nil {
			r.Body = http.MaxBytesReader(sw, r.Body, h.cfg.MaxBodyBytes)
		}
		if !rt.public {
			var err error
			if c, err = h.authenticate(r); err != nil {
				writeError(sw, err)
				return
			}
		}
		ctx := r.Context()
		switch rt.kind {
		case plain:
			ctx, cancel := context.WithTimeout(ctx, h.cfg.RequestTimeout)
			defer cancel()
			v, err := rt.plainFn(ctx, c, r)
			if err != nil {
				writeError(sw, err)
				return
			}
			if v == nil {
				sw.WriteHeader(http.StatusNoContent)
				return
			}
			writeJSON(sw, http.StatusOK, v)
		case stream:
			h.serveStream(sw, r, c, rt.streamFn)
		case raw:
			// Streams end when the credential they were opened with is
			// revoked (exec, logs --follow).
			if !rt.public {
				bctx, release := h.svc.BindCredential(ctx, c)
				defer release()
				r = r.WithContext(bctx)
			}
			rt.rawFn(sw, r, c)
		}
	})
}

// authenticate finds the caller: a bearer token, else root for a uid-0
// peer on the unix socket. Anyone else is errs.Unauthenticated.
func (h *handler) authenticate(r *http.Request) (service.Caller, error) {
	if auth := r.Header.Get("Authorization"); auth != "" {
		scheme, secret, ok := strings.Cut(auth, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" {
			return service.Caller{}, errs.New(errs.Unauthenticated, "malformed Authorization header: want `Bearer <token>`")
		}
		for _, t := range h.cfg.AdminTokens {
			if subtle.ConstantTimeCompare([]byte(t), []byte(secret)) == 1 {
				return h.rootCaller(r.Context())
			}
		}
		return h.svc.AuthenticateToken(r.Context(), secret)
	}
	if p, ok := PeerFrom(r.Context()); ok && p.UID == 0 {
		return h.rootCaller(r.Context())
	}
	return service.Caller{}, errs.New(errs.Unauthenticated, "authentication required: pass an API token (Authorization: Bearer, --api-key or MINIONS_API_KEY)")
}

func (h *handler) rootCaller(ctx context.Context) (service.Caller, error) {
	h.rootMu.Lock()
	defer h.rootMu.Unlock()
	if h.root != nil {
		return *h.root, nil
	}
	c, err := h.svc.EnsureUser(ctx, "root", true)
	if err != nil {
		return service.Caller{}, err
	}
	h.root = &c
	return c, nil
}

// decode reads a JSON body strictly into v: unknown fields and trailing
// data are errors; an empty body leaves v as it is.
func decode(r *http.Request, v any) error {
	if r.Body == nil {
		return nil
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return errs.New(errs.InvalidArgument, "request body larger than %d bytes", mb.Limit)
		}
		return errs.New(errs.InvalidArgument, "read request body: %v", err)
	}
	return decodeBytes(b, v)
}

func decodeBytes(b []byte, v any) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errs.New(errs.InvalidArgument, "invalid request body: %v", err)
	}
	if dec.More() {
		return errs.New(errs.InvalidArgument, "invalid request body: data after the JSON value")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errs.New(errs.InvalidArgument, "invalid request body: data after the JSON value")
	}
	return nil
}

// serveStream runs a long operation. With `Accept: application/x-ndjson`
// it streams each step as it starts; the status line is sent with the
// first step, so failures before it get their real HTTP status.
func (h *handler) serveStream(w http.ResponseWriter, r *http.Request, c service.Caller,
	fn func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error)) {
	streaming := strings.Contains(r.Header.Get("Accept"), ndjson)
	var mu sync.Mutex
	started := false
	enc := json.NewEncoder(w)
	rc := http.NewResponseController(w)
	progress := func(step string) {
		if !streaming {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !started {
			w.Header().Set("Content-Type", ndjson)
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		enc.Encode(streamLine{Step: step})
		rc.Flush()
	}
	v, err := fn(r.Context(), c, r, progress)
	mu.Lock()
	defer mu.Unlock()
	if !started {
		if err != nil {
			writeError(w, err)
		} else {
			writeJSON(w, http.StatusOK, v)
		}
		return
	}
	if err != nil {
		e := errorOf(err)
		enc.Encode(streamLine{Error: &e})
	} else {
		b, _ := json.Marshal(v)
		enc.Encode(streamLine{Result: b})
	}
	rc.Flush()
}

const ndjson = "application/x-ndjson"

// streamLine is one line of a long operation's NDJSON stream: exactly one
// field is set.
type streamLine struct {
	Step   string          `json:"step,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Whoami is the body of GET /v1/whoami.
type Whoami struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Admin bool   `json:"admin"`
}

// RenameRequest is the body of POST /v1/vms/{name}/rename.
type RenameRequest struct {
	Name string `json:"name"`
}

// SSHKeyRequest is the body of POST /v1/ssh-keys: a key with proof of
// possession (see service.KeyProof).
type SSHKeyRequest = service.KeyProof

// UserRequest is the body of POST /v1/users.
type UserRequest struct {
	Name   string            `json:"name"`
	Admin  bool              `json:"admin,omitempty"`
	SSHKey *service.KeyProof `json:"ssh_key,omitempty"` // proven by the calling admin
}

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	User string `json:"user,omitempty"` // default: the caller
	Name string `json:"name,omitempty"`
	// ExpiresInSeconds 0 means the token never expires.
	ExpiresInSeconds int64 `json:"expires_in_seconds,omitempty"`
}

// Destroyed is the body of DELETE /v1/vms/{name}.
type Destroyed struct {
	Destroyed string `json:"destroyed"`
}

func (h *handler) table() []route {
	s := h.svc
	name := func(r *http.Request) string { return r.PathValue("name") }
	get := func(p string, fn func(ctx context.Context, c service.Caller, r *http.Request) (any, error)) route {
		return route{method: http.MethodGet, pattern: p, plainFn: fn}
	}
	call := func(m, p string, fn func(ctx context.Context, c service.Caller, r *http.Request) (any, error)) route {
		return route{method: m, pattern: p, plainFn: fn}
	}
	long := func(p string, fn func(ctx context.Context, c service.Caller, r *http.Request, pr service.Progress) (any, error)) route {
		return route{method: http.MethodPost, pattern: p, kind: stream, streamFn: fn}
	}
	rs := []route{
		{method: http.MethodGet, pattern: "/v1/openapi.yaml", kind: raw, public: true, rawFn: serveOpenAPI},
		get("/v1/whoami", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return Whoami{ID: c.UserID, Name: c.Name, Admin: c.Admin}, nil
		}),
		get("/v1/vms", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) { return s.List(ctx, c) }),
		long("/v1/vms", func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error) {
			var req service.CreateRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.Create(ctx, c, req, p)
		}),
		get("/v1/vms/{name}", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.Get(ctx, c, name(r))
		}),
		call(http.MethodDelete, "/v1/vms/{name}", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			if err := s.Destroy(ctx, c, name(r)); err != nil {
				return nil, err
			}
			return Destroyed{Destroyed: name(r)}, nil
		}),
		long("/v1/vms/{name}/start", func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error) {
			return s.Start(ctx, c, name(r), p)
		}),
		call(http.MethodPost, "/v1/vms/{name}/stop", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.Stop(ctx, c, name(r))
		}),
		long("/v1/vms/{name}/restart", func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error) {
			return s.Restart(ctx, c, name(r), p)
		}),
		{method: http.MethodPost, pattern: "/v1/vms/{name}/exec", kind: raw, rawFn: h.serveExec},
		{method: http.MethodPost, pattern: "/v1/vms/{name}/forward/{port}", kind: raw, rawFn: h.serveForward},
		get("/v1/vms/{name}/status", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.AgentStatus(ctx, c, name(r))
		}),
		{method: http.MethodGet, pattern: "/v1/vms/{name}/logs", kind: raw, rawFn: h.serveLogs},
		get("/v1/vms/{name}/snapshots", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.ListSnapshots(ctx, c, name(r))
		}),
		long("/v1/vms/{name}/snapshots", func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error) {
			var req service.SnapshotRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.CreateSnapshot(ctx, c, name(r), req, p)
		}),
		call(http.MethodDelete, "/v1/vms/{name}/snapshots/{snapshot}", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return nil, s.DeleteSnapshot(ctx, c, name(r), r.PathValue("snapshot"))
		}),
		long("/v1/vms/{name}/snapshots/{snapshot}/restore", func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error) {
			return s.RestoreSnapshot(ctx, c, name(r), r.PathValue("snapshot"), p)
		}),
		call(http.MethodPost, "/v1/vms/{name}/resize", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var req service.ResizeRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.Resize(ctx, c, name(r), req)
		}),
		call(http.MethodPost, "/v1/vms/{name}/rename", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var req RenameRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.Rename(ctx, c, name(r), req.Name)
		}),
		long("/v1/vms/{name}/copy", func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error) {
			var req service.CopyRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.Copy(ctx, c, name(r), req, p)
		}),
		long("/v1/vms/{name}/fork", func(ctx context.Context, c service.Caller, r *http.Request, p service.Progress) (any, error) {
			var req service.ForkRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.Fork(ctx, c, name(r), req, p)
		}),
		get("/v1/ssh-keys", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.ListSSHKeys(ctx, c)
		}),
		call(http.MethodPost, "/v1/ssh-keys", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var req SSHKeyRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return s.AddSSHKey(ctx, c, req)
		}),
		call(http.MethodPost, "/v1/ssh-keys/challenge", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.SSHKeyChallenge(ctx, c)
		}),
		// Fingerprints contain '/': the ID is the rest of the path.
		call(http.MethodDelete, "/v1/ssh-keys/{id...}", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return nil, s.RemoveSSHKey(ctx, c, r.PathValue("id"))
		}),
		get("/v1/users", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) { return s.ListUsers(ctx, c) }),
		call(http.MethodPost, "/v1/users", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var req UserRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			var key service.KeyProof
			if req.SSHKey != nil {
				key = *req.SSHKey
			}
			return s.AddUser(ctx, c, req.Name, req.Admin, key)
		}),
		call(http.MethodDelete, "/v1/users/{name}", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return nil, s.RemoveUser(ctx, c, name(r))
		}),
		call(http.MethodPut, "/v1/users/{name}/quota", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var q service.Quota
			if err := decode(r, &q); err != nil {
				return nil, err
			}
			return s.SetQuota(ctx, c, name(r), q)
		}),
		get("/v1/tokens", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return s.ListTokens(ctx, c, r.URL.Query().Get("user"))
		}),
		call(http.MethodPost, "/v1/tokens", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			var req TokenRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			if req.ExpiresInSeconds < 0 || req.ExpiresInSeconds > 100*365*86400 {
				return nil, errs.New(errs.InvalidArgument, "expires_in_seconds must be between 0 (never) and 100 years")
			}
			return s.CreateToken(ctx, c, req.User, req.Name, time.Duration(req.ExpiresInSeconds)*time.Second)
		}),
		call(http.MethodDelete, "/v1/tokens/{id}", func(ctx context.Context, c service.Caller, r *http.Request) (any, error) {
			return nil, s.RevokeToken(ctx, c, r.PathValue("id"))
		}),
	}
	rs = append(rs, h.imageRoutes()...) // api/images.go
	rs = append(rs, h.opsRoutes()...)   // api/ops.go
	rs = append(rs, h.hostRoutes()...)  // api/hosts.go
	rs = append(rs, h.fabricRoutes()...)
	return append(rs, h.webRoutes()...) // api/web.go
}

// Route describes one registered endpoint, for documentation checks.
type Route struct {
	Method string
	Path   string // OpenAPI form: "/v1/vms/{name}"
}

// Routes lists every endpoint the handler serves.
func Routes() []Route {
	h := &handler{}
	var out []Route
	for _, r := range h.table() {
		out = append(out, Route{Method: r.method, Path: strings.ReplaceAll(r.pattern, "...}", "}")})
	}
	return out
}
