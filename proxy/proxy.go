package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/minionsdev/minions/internal/errs"
)

// Proxy is the reverse proxy in front of every VM. Create it with New,
// serve with Run (or Serve with listeners of your own), or use Handler
// directly. Safe for concurrent use.
type Proxy struct {
	cfg      Config
	log      *slog.Logger
	routes   Routes
	domains  Domains
	signer   signer
	sessions sessionCache // verified session cookies
	metrics  *metrics
	rate     *rateLimiter
	conns    *connLimiter

	rp        *httputil.ReverseProxy // requests forward does not take
	buffers   *bufferPool
	transport *http.Transport // bodies and upgrades
	up        *upstream       // the rest, and the reverse proxy's transport

	// TLS mode only.
	magic    *certmagic.Config // on-demand; its TLS config serves every name
	wildcard *certmagic.Config // nil without a DNS provider
	issuer   *certmagic.ACMEIssuer
	cache    *certmagic.Cache

	upgraded connSet // hijacked (WebSocket) client connections, closed on shutdown

	httpsPort atomic.Int32 // public ports, set when serving
	httpPort  atomic.Int32

	deadlineSets atomic.Int64 // read deadlines the loop set on client connections (tests)
}

// New builds a Proxy. routes is required; domains may be nil (no custom
// domains get certificates). With a Domain it prepares certificate
// management (StorageDir is created) but contacts no CA until a name is
// needed or Run starts the wildcard.
func New(cfg Config, routes Routes, domains Domains) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if routes == nil {
		return nil, errs.New(errs.InvalidArgument, "new proxy: routes are required")
	}
	cfg = cfg.withDefaults()
	p := &Proxy{
		cfg:     cfg,
		log:     cfg.Log.With("component", "proxy"),
		routes:  routes,
		domains: domains,
		signer:  signer{key: append([]byte(nil), cfg.Secret...), now: time.Now},
		metrics: newMetrics(),
		buffers: newBufferPool(),
	}
	p.rate = newRateLimiter(cfg.RatePerSecond, cfg.Burst, time.Now)
	p.conns = &connLimiter{max: cfg.MaxConnsPerIP, total: cfg.MaxConns, perIP: make(map[string]int), active: &p.metrics.activeConns}
	p.setPorts(0, 0)

	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		var err error
		if id, port, ok := ParseVMUpstream(addr); ok {
			if cfg.DialVM == nil {
				return nil, fmt.Errorf("upstream %s: a vm on another host, and this proxy cannot reach one", addr)
			}
			dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
			c, err = cfg.DialVM(dctx, id, port)
			cancel()
		} else {
			c, err = dialer.DialContext(ctx, network, addr)
		}
		if err != nil {
			return nil, err
		}
		return newIdleConn(c, cfg.IdleTimeout), nil
	}
	p.transport = &http.Transport{
		Proxy:                 nil, // never via environment proxies: VMs are local
		DialContext:           dial,
		MaxIdleConns:          4096,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: cfg.UpstreamHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
	p.up = newUpstream(dial, p.transport, cfg.UpstreamHeaderTimeout)
	p.up.idleTimeout = min(p.up.idleTimeout, cfg.IdleTimeout)
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		ModifyResponse: rewriteSetCookies,
		Transport:      p.up,
		ErrorHandler:   p.upstreamError,
		BufferPool:     p.buffers,
		ErrorLog:       slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	if cfg.Domain != "" {
		if err := p.setupCertificates(); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// setPorts records the public ports (explicit config wins over the bound
// ones, which win over the bind addresses).
func (p *Proxy) setPorts(httpsBound, httpBound int) {
	pick := func(public, bound int, bind string) int32 {
		if public != 0 {
			return int32(public)
		}
		if bound != 0 {
			return int32(bound)
		}
		_, port, _ := net.SplitHostPort(bind)
		n, _ := strconv.Atoi(port)
		return int32(n)
	}
	p.httpsPort.Store(pick(p.cfg.PublicHTTPSPort, httpsBound, p.cfg.HTTPSBind))
	p.httpPort.Store(pick(p.cfg.PublicHTTPPort, httpBound, p.cfg.HTTPBind))
}

// VMHost is the host name of the VM named vmName: "<vm>.<Domain>", or
// "<vm>.localhost" in local mode.
func (p *Proxy) VMHost(vmName string) string {
	d := p.cfg.Domain
	if d == "" {
		d = "localhost"
	}
	return strings.ToLower(vmName) + "." + d
}

// URL is the address of the VM named vmName as users should type it.
func (p *Proxy) URL(vmName string) string { return p.baseURL(p.VMHost(vmName)) + "/" }

func (p *Proxy) baseURL(host string) string {
	if p.cfg.Domain == "" {
		if port := p.httpPort.Load(); port != 80 && port != 0 {
			return "http://" + host + ":" + strconv.Itoa(int(port))
		}
		return "http://" + host
	}
	if port := p.httpsPort.Load(); port != 443 && port != 0 {
		return "https://" + host + ":" + strconv.Itoa(int(port))
	}
	return "https://" + host
}

// Handler returns the proxy's request handler (what the HTTPS listener
// serves, and the plain listener in local mode).
func (p *Proxy) Handler() http.Handler { return http.HandlerFunc(p.serveHTTP) }

type routeKey struct{}

func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := statusWriterFor(w, p)
	host := normalizeHost(r.Host)
	var rt Route
	defer func() { p.logged(r, sw, start, host, rt.VMID) }()

	switch overConnLimit(r.Context()) {
	case overPerIP:
		p.metrics.connLimited.Add(1)
		w.Header().Set("Connection", "close")
		p.page(sw, r, http.StatusTooManyRequests, "Too many connections",
			fmt.Sprintf("Your address has more than %d connections open to this server. Close some and try again.", p.cfg.MaxConnsPerIP))
		return
	case overTotal:
		p.metrics.connCapped.Add(1)
		w.Header().Set("Connection", "close")
		w.Header().Set("Retry-After", "5")
		p.page(sw, r, http.StatusTooManyRequests, "Server busy",
			fmt.Sprintf("This server has more than %d connections open. Try again in a moment.", p.cfg.MaxConns))
		return
	}
	if ok, wait := p.rate.allow(hostOnly(r.RemoteAddr)); !ok {
		p.metrics.rateLimited.Add(1)
		w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)+1))
		p.page(sw, r, http.StatusTooManyRequests, "Too many requests",
			"Your address is sending requests faster than this server allows. Slow down and try again in a moment.")
		return
	}

	var err error
	rt, err = p.routes.Route(r.Context(), host)
	switch {
	case errors.Is(err, errs.NotFound):
		p.metrics.notFound.Add(1)
		p.page(sw, r, http.StatusNotFound, "No such VM", "There is no VM at "+host+".")
		return
	case err != nil:
		p.log.Warn("route lookup", "host", host, "err", err)
		p.page(sw, r, http.StatusServiceUnavailable, "Temporarily unavailable", "The proxy cannot look up "+host+" right now. Try again shortly.")
		return
	}

	switch r.URL.Path {
	case loginPath:
		p.handleLogin(sw, r, host, rt)
		return
	case logoutPath:
		p.handleLogout(sw, r)
		return
	}
	if !rt.Public && !p.admitted(r, rt) {
		p.metrics.denied.Add(1)
		p.page(sw, r, http.StatusUnauthorized, "This VM is private",
			"Only its owner can open "+host+". Sign in with a link from `minions share "+rt.VMName+"` (or the dashboard).")
		return
	}
	if !rt.Running {
		p.metrics.stopped.Add(1)
		p.page(sw, r, http.StatusServiceUnavailable, "VM is stopped",
			"The VM "+rt.VMName+" is stopped. Start it with `minions start "+rt.VMName+"`.")
		return
	}
	if forwardable(r) {
		p.forward(sw, r, rt)
		return
	}
	ctx := context.WithValue(r.Context(), routeKey{}, rt)
	p.rp.ServeHTTP(sw, r.WithContext(ctx))
}

// logged counts and logs a request that serveHTTP (or the loop's raw
// path, see serveRaw) answered through sw.
func (p *Proxy) logged(r *http.Request, sw *statusWriter, start time.Time, host, vmID string) {
	if sw.status == 0 {
		sw.status = http.StatusOK
	}
	p.account(r.Context(), start, accessRecord{component: "proxy", remoteIP: hostOnly(r.RemoteAddr), host: host, vmID: vmID,
		method: r.Method, path: r.URL.Path, status: sw.status, bytes: sw.bytes, proto: r.Proto})
}

// account counts a request that started at start and ended now, and
// writes f to the access log.
func (p *Proxy) account(ctx context.Context, start time.Time, f accessRecord) {
	end := time.Now()
	d := end.Sub(start)
	p.metrics.observe(f.status, d)
	p.metrics.bytesOut.Add(f.bytes)
	if h := p.cfg.AccessLog.Handler(); h.Enabled(ctx, slog.LevelInfo) {
		f.durationUS = d.Microseconds()
		if ja, ok := h.(*jsonAccess); ok {
			ja.request(end, f) // NewJSONAccessLog's: the same line, written directly
			return
		}
		// The record is built here rather than by Logger.LogAttrs,
		// which walks the stack for the caller on every request
		// (runtime.Callers: about 2 % of the daemon's CPU per
		// request); the handlers print no source anyway.
		rec := slog.NewRecord(end, slog.LevelInfo, "request", 0)
		f.addTo(&rec)
		_ = h.Handle(ctx, rec)
	}
}

func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	rt := pr.In.Context().Value(routeKey{}).(Route)
	pr.SetURL(&url.URL{Scheme: "http", Host: rt.Upstream})
	pr.Out.Host = pr.In.Host // the VM sees the name it was reached by
	pr.SetXForwarded()       // incoming X-Forwarded-* were already dropped
	stripSessionCookie(pr.Out.Header)
}

func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	rt, _ := r.Context().Value(routeKey{}).(Route)
	p.upstreamFailed(w, r, rt, err)
}

// upstreamFailed answers a request whose VM did not answer.
func (p *Proxy) upstreamFailed(w http.ResponseWriter, r *http.Request, rt Route, err error) {
	if r.Context().Err() != nil {
		// The client went away; nobody reads an answer.
		p.log.Debug("client gone", "vm_id", rt.VMID, "err", err)
		if sw, ok := w.(*statusWriter); ok && sw.status == 0 {
			sw.status = 499
		}
		return
	}
	p.metrics.upstreamErrors.Add(1)
	p.log.Info("upstream error", "vm_id", rt.VMID, "upstream", rt.Upstream, "err", err)
	_, port, _ := net.SplitHostPort(rt.Upstream)
	status := http.StatusBadGateway
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		status = http.StatusGatewayTimeout
	}
	p.page(w, r, status, "VM is not answering",
		"The VM "+rt.VMName+" is running but nothing answered on port "+port+
			". Start a web server there, or choose another port with `minions expose "+rt.VMName+" --port N`.")
}

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{.Title}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}
h1{font-size:1.4em}code{background:#eee;padding:.1em .3em;border-radius:3px}small{color:#888}</style>
</head><body><h1>{{.Title}}</h1><p>{{.Message}}</p><p><small>{{.Status}} · minions</small></p></body></html>
`))

// page answers with a small human-readable page (HTML, or plain text for
// clients that do not accept HTML).
func (p *Proxy) page(w http.ResponseWriter, r *http.Request, status int, title, msg string) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if !strings.Contains(r.Header.Get("Accept"), "text/html") {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(status)
		fmt.Fprintf(w, "%s: %s\n", title, msg)
		return
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = pageTmpl.Execute(w, struct {
		Title, Message, Status string
	}{title, msg, strconv.Itoa(status) + " " + http.StatusText(status)})
}

// statusWriter records the status and body size; it passes Flush and
// Hijack through (WebSocket upgrades hijack the connection).
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
	p      *Proxy
}

// statusWriterFor returns a statusWriter over w: the loop's own for its
// answers (no allocation per request), else a new one.
func statusWriterFor(w http.ResponseWriter, p *Proxy) *statusWriter {
	if hr, ok := w.(*h1Response); ok {
		hr.sw = statusWriter{ResponseWriter: hr, p: p}
		return &hr.sw
	}
	return &statusWriter{ResponseWriter: w, p: p}
}

// adoptHeader makes h the answer's header map when the writer can take
// it as it is (see h1Response.adoptHeader).
func (w *statusWriter) adoptHeader(h http.Header) bool {
	hr, ok := w.ResponseWriter.(*h1Response)
	return ok && hr.adoptHeader(h)
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// writeHeaderKept is WriteHeader for a handler that does not change the
// header map again before the answer's header is written (see
// h1Response.keepHeader).
func (w *statusWriter) writeHeaderKept(code int) {
	if hr, ok := w.ResponseWriter.(*h1Response); ok {
		hr.keepHeader()
	}
	w.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) FlushError() error {
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.status = http.StatusSwitchingProtocols
	w.p.metrics.upgrades.Add(1)
	return w.p.upgraded.add(c), brw, nil
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// bufferPool recycles the 32 KiB copy buffers of the reverse proxy.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}
func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }

// get and put are Get and Put without an allocation per Put.
func (b *bufferPool) get() *[]byte  { return b.p.Get().(*[]byte) }
func (b *bufferPool) put(x *[]byte) { b.p.Put(x) }

// connSet tracks hijacked connections, which http.Server.Shutdown does not
// see, so shutdown can close them.
type connSet struct {
	mu    sync.Mutex
	conns map[*setConn]struct{}
}

type setConn struct {
	net.Conn
	set  *connSet
	once sync.Once
}

func (c *setConn) Close() error {
	c.once.Do(func() {
		c.set.mu.Lock()
		delete(c.set.conns, c)
		c.set.mu.Unlock()
	})
	return c.Conn.Close()
}

// CloseWrite keeps half-close working through the wrapper.
func (c *setConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (s *connSet) add(c net.Conn) net.Conn {
	sc := &setConn{Conn: c, set: s}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		s.conns = make(map[*setConn]struct{})
	}
	s.conns[sc] = struct{}{}
	return sc
}

// closeAll closes every tracked connection.
func (s *connSet) closeAll() {
	s.mu.Lock()
	conns := make([]*setConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// vmUpstreamSuffix names an upstream that is not an address here: a VM
// on another host (see Config.DialVM).
const vmUpstreamSuffix = ".vm.minions.invalid"

// VMUpstreamHost is the upstream host name of VM id on another host.
func VMUpstreamHost(id string) string { return id + vmUpstreamSuffix }

// ParseVMUpstream reads "<id>.vm.minions.invalid:<port>".
func ParseVMUpstream(addr string) (id string, port int, ok bool) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil || !strings.HasSuffix(host, vmUpstreamSuffix) {
		return "", 0, false
	}
	id = strings.TrimSuffix(host, vmUpstreamSuffix)
	port, err = strconv.Atoi(p)
	if err != nil || id == "" || port < 1 || port > 65535 {
		return "", 0, false
	}
	return id, port, true
}
