package daemon

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"golang.org/x/sync/errgroup"
)

// How links reach users: the proxy's signing secret and its public
// endpoint live in the store (settings proxy_secret and proxy_endpoint).
// The daemon writes the endpoint when its proxy listens and serves links
// from that live proxy; a CLI running the service in-process (no daemon
// socket) builds an identical, non-serving proxy from the two settings, so
// `minions share` prints links the running daemon accepts, whoever mints
// them. One-time login links are remembered as used in the store
// (used_links), so a restart of the daemon does not make them usable again.
const (
	settingProxySecret   = "proxy_secret"
	settingProxyEndpoint = "proxy_endpoint"
)

// proxyEndpoint is what a link minter needs to know about the serving
// proxy.
type proxyEndpoint struct {
	Domain      string `json:"domain,omitempty"` // "" local mode (<vm>.localhost)
	HTTPSPort   int    `json:"https_port,omitempty"`
	HTTPPort    int    `json:"http_port,omitempty"`
	DNSResolver string `json:"dns_resolver,omitempty"`
	PublicIP    string `json:"public_ip,omitempty"` // --public-ip, the DNS target of a domain
}

// startProxy runs the HTTPS proxy (https://<vm>.<domain>) or, without a
// domain, the local HTTP proxy (http://<vm>.localhost:<port>). It binds
// before returning, so a busy port fails `serve` at once, and records the
// bound endpoint for link minting. Without a proxy configured it clears
// the endpoint, so links are not minted for a proxy nobody runs. The access
// log (one record per request) goes to logOut in format through a
// proxy.LogBuffer: a write every 100 ms instead of one per request.
func startProxy(ctx context.Context, g *errgroup.Group, cfg Config, e *Env, log *slog.Logger, logOut io.Writer, format string, paths Paths, m *metrics) error {
	if cfg.ProxyBind == "" && cfg.HTTPBind == "" {
		return e.DB.Tx(ctx, func(q store.Q) error { return store.SetSetting(ctx, q, settingProxyEndpoint, "") })
	}
	var httpsLn, httpLn net.Listener
	closeAll := func() {
		for _, ln := range []net.Listener{httpsLn, httpLn} {
			if ln != nil {
				ln.Close()
			}
		}
	}
	var err error
	ep := proxyEndpoint{Domain: cfg.Domain, DNSResolver: cfg.DNSResolver, PublicIP: cfg.PublicIP}
	if cfg.Domain != "" {
		if cfg.ProxyBind == "" {
			cfg.ProxyBind = proxy.DefaultHTTPSBind
		}
		if httpsLn, err = net.Listen("tcp", cfg.ProxyBind); err != nil {
			return errs.New(errs.Unavailable, "proxy: %w", err)
		}
		ep.HTTPSPort = httpsLn.Addr().(*net.TCPAddr).Port
	}
	if cfg.HTTPBind != "" {
		if httpLn, err = net.Listen("tcp", cfg.HTTPBind); err != nil {
			closeAll()
			return errs.New(errs.Unavailable, "proxy: %w", err)
		}
		ep.HTTPPort = httpLn.Addr().(*net.TCPAddr).Port
	}
	cfg.ProxyBind, cfg.HTTPBind = addrOf(httpsLn, cfg.ProxyBind), addrOf(httpLn, cfg.HTTPBind)
	accessBuf := proxy.NewLogBuffer(logOut, 100*time.Millisecond)
	access := newLogger(accessBuf, format).With("component", "access")
	p, err := newProxyLogs(ctx, cfg, e, log, access, paths, ep)
	if err != nil {
		accessBuf.Close()
		closeAll()
		return err
	}
	b, _ := json.Marshal(ep)
	if err := e.DB.Tx(ctx, func(q store.Q) error { return store.SetSetting(ctx, q, settingProxyEndpoint, string(b)) }); err != nil {
		closeAll()
		return err
	}
	web := webOf(p, ep)
	e.Service.SetWeb(func(context.Context) (service.Web, error) { return web, nil })
	m.extra = append(m.extra, p.MetricsHandler())
	g.Go(func() error {
		defer accessBuf.Close()
		return p.Serve(ctx, httpsLn, httpLn)
	})
	log.Info("proxy listening", "https", addrOf(httpsLn, ""), "http", addrOf(httpLn, ""), "domain", cfg.Domain)
	return nil
}

func addrOf(ln net.Listener, def string) string {
	if ln == nil {
		return def
	}
	return ln.Addr().String()
}

// newProxy builds the proxy from the daemon's config; ep carries the public
// ports (explicit, so a minter that never binds makes the same links).
// Its access log goes to log.
func newProxy(ctx context.Context, cfg Config, e *Env, log *slog.Logger, paths Paths, ep proxyEndpoint) (*proxy.Proxy, error) {
	return newProxyLogs(ctx, cfg, e, log, nil, paths, ep)
}

// newProxyLogs is newProxy with the access log going to access (nil: log).
func newProxyLogs(ctx context.Context, cfg Config, e *Env, log, access *slog.Logger, paths Paths, ep proxyEndpoint) (*proxy.Proxy, error) {
	if access == nil {
		access = log.With("component", "access")
	}
	secret, err := proxySecret(ctx, e.DB)
	if err != nil {
		return nil, err
	}
	pc := proxy.Config{Domain: cfg.Domain, HTTPSBind: cfg.ProxyBind, HTTPBind: cfg.HTTPBind, ACMECA: cfg.ACMECA,
		PublicHTTPSPort: ep.HTTPSPort, PublicHTTPPort: ep.HTTPPort,
		Staging: cfg.ACMEStaging, ACMEEmail: cfg.ACMEEmail, StorageDir: filepath.Join(paths.State, "certs"),
		Secret: secret, Resolver: resolver(ep.DNSResolver), RatePerSecond: cfg.ProxyRate, Burst: cfg.ProxyBurst, MaxConns: cfg.ProxyMaxConns,
		Log: log.With("component", "proxy"), AccessLog: access}
	if pc.HTTPBind == "" {
		// With a domain and no plain listener: no HTTP-01 and no
		// redirects, TLS-ALPN-01 only. Validation still wants an address.
		pc.HTTPBind = "127.0.0.1:0"
	}
	if cfg.ACMERoot != "" {
		pem, err := os.ReadFile(cfg.ACMERoot)
		if err != nil {
			return nil, errs.New(errs.InvalidArgument, "acme root: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errs.New(errs.InvalidArgument, "acme root %s holds no certificate", cfg.ACMERoot)
		}
		pc.CARoots = pool
	}
	dc, err := cfg.dnsConfig()
	if err != nil {
		return nil, err
	}
	if pc.DNSProvider, err = proxy.NewDNSProvider(dc); err != nil {
		return nil, err
	}
	if pc.DNSProvider != nil && ep.DNSResolver != "" {
		// Zone lookup and propagation checks of the DNS-01 record ask the
		// configured resolver too (instead of the zone's nameservers).
		pc.DNSResolvers = []string{ep.DNSResolver}
	}
	r, err := newRoutes(ctx, e.DB, cfg.Domain)
	if err != nil {
		return nil, err
	}
	pc.Links = usedLinks{e.DB}
	return proxy.New(pc, r, r)
}

// resolver is the DNS resolver for custom domain verification: the
// system's, or only the server at addr ("host:port").
func resolver(addr string) proxy.Resolver {
	if addr == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

// storedWeb is the service's WebSource when no proxy runs in this process
// (the CLI in-process): a non-serving proxy built once from the endpoint
// the daemon recorded. Until a daemon has served the proxy it answers
// errs.FailedPrecondition.
func storedWeb(db *store.DB, paths Paths, log *slog.Logger) service.WebSource {
	var mu sync.Mutex
	var built service.Web
	return func(ctx context.Context) (service.Web, error) {
		mu.Lock()
		defer mu.Unlock()
		if built != nil {
			return built, nil
		}
		v, err := store.Setting(ctx, db, settingProxyEndpoint)
		if err != nil {
			return nil, err
		}
		if v == "" {
			return nil, errs.New(errs.FailedPrecondition, "the web proxy is not running: start `minions serve` with --http-bind ADDR (http://<vm>.localhost) or --domain D")
		}
		var ep proxyEndpoint
		if err := json.Unmarshal([]byte(v), &ep); err != nil {
			return nil, fmt.Errorf("setting %s: %w", settingProxyEndpoint, err)
		}
		cfg := Config{Domain: ep.Domain, HTTPBind: "127.0.0.1:" + strconv.Itoa(ep.HTTPPort)}
		if ep.Domain != "" {
			cfg.ProxyBind = "127.0.0.1:" + strconv.Itoa(ep.HTTPSPort)
		}
		p, err := newProxy(ctx, cfg, &Env{DB: db}, log, paths, ep)
		if err != nil {
			return nil, err
		}
		built = webOf(p, ep)
		return built, nil
	}
}

// proxySecret is the proxy's signing key, created once and kept in the
// store so sign-in cookies survive restarts.
func proxySecret(ctx context.Context, db *store.DB) ([]byte, error) {
	var secret []byte
	err := db.Tx(ctx, func(q store.Q) error {
		v, err := store.Setting(ctx, q, settingProxySecret)
		if err != nil {
			return err
		}
		if v != "" {
			secret, err = hex.DecodeString(v)
			return err
		}
		secret = make([]byte, proxy.SecretSize)
		rand.Read(secret)
		return store.SetSetting(ctx, q, settingProxySecret, hex.EncodeToString(secret))
	})
	return secret, err
}

// usedLinks is the proxy's LinkLedger in the store, so a one-time link
// used before a daemon restart stays used after it.
type usedLinks struct{ db *store.DB }

var _ proxy.LinkLedger = usedLinks{}

func (u usedLinks) Use(ctx context.Context, id string, exp time.Time) (bool, error) {
	return store.UseLink(ctx, u.db, id, exp, time.Now())
}

// routes maps a request's host to a VM from the store. Route owners are
// user IDs, as the service passes them to LoginLink, and a route carries
// the VM's revocation counter (store.WebGen), so links and sessions end
// when the service bumps it. Every request and TLS handshake asks, so the
// store's queries are prepared once (store.RouteQueries) and the answers
// are cached only until the next commit: a change (share --private, stop,
// destroy) applies to the very next request. The one case the write-ahead
// log's size and mtime can miss (after a checkpoint the log is rewritten
// from its start, so two commits within one tick of the file system's
// coarse clock leave both unchanged) is bounded by routeCacheTTL: no
// answer, and so no revoked session, outlives it.
type routes struct {
	domain string
	q      *store.RouteQueries
	// The lookups are cached until the database changes: any commit, by
	// this or another process, grows or resets the write-ahead log, so a
	// stat of it (about a microsecond) says whether the cache still holds.
	wal    string
	now    func() time.Time
	mu     sync.Mutex
	stamp  walStamp
	filled time.Time // when the cache was last emptied
	cache  map[string]routeEntry
}

// routeCacheTTL is the most a cached route may be behind the store.
const routeCacheTTL = time.Second

type walStamp struct {
	size  int64
	mtime time.Time
}

type routeEntry struct {
	rt  proxy.Route
	err error
}

func (r *routes) currentStamp() (walStamp, bool) {
	st, err := os.Stat(r.wal)
	if err != nil {
		return walStamp{}, false
	}
	return walStamp{st.Size(), st.ModTime()}, true
}

var (
	_ proxy.Routes  = (*routes)(nil)
	_ proxy.Domains = (*routes)(nil)
)

// newRoutes prepares the route lookups; the statements live as long as the
// process.
func newRoutes(ctx context.Context, db *store.DB, domain string) (*routes, error) {
	q, err := store.PrepareRoutes(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("proxy routes: %w", err)
	}
	return &routes{domain: domain, q: q, wal: db.Path + "-wal", now: time.Now, cache: map[string]routeEntry{}}, nil
}

func (r *routes) Route(ctx context.Context, host string) (proxy.Route, error) {
	stamp, ok := r.currentStamp()
	var filled time.Time // the cache generation this lookup may fill
	if ok {
		now := r.now()
		r.mu.Lock()
		if stamp != r.stamp || now.Sub(r.filled) >= routeCacheTTL || now.Before(r.filled) {
			r.stamp, r.filled, r.cache = stamp, now, map[string]routeEntry{}
		}
		filled = r.filled
		e, hit := r.cache[host]
		r.mu.Unlock()
		if hit {
			return e.rt, e.err
		}
	}
	rt, err := r.lookup(ctx, host)
	if ok && (err == nil || errs.ClassOf(err) == errs.NotFound) {
		r.mu.Lock()
		if r.stamp == stamp && r.filled.Equal(filled) && len(r.cache) < 100000 {
			r.cache[host] = routeEntry{rt, err}
		}
		r.mu.Unlock()
	}
	return rt, err
}

func (r *routes) lookup(ctx context.Context, host string) (proxy.Route, error) {
	var sr store.Route
	var err error
	if name, ok := proxy.SplitHost(host, r.domain); ok {
		sr, err = r.q.ByName(ctx, name)
	} else {
		sr, err = r.q.ByDomain(ctx, host)
	}
	if errs.ClassOf(err) == errs.NotFound {
		return proxy.Route{}, errs.New(errs.NotFound, "no vm serves %s", host)
	}
	if err != nil {
		return proxy.Route{}, fmt.Errorf("route %s: %w", host, err) // 503, not 404
	}
	return proxy.Route{VMID: sr.VMID, VMName: sr.VMName, Owner: sr.OwnerID, Gen: sr.WebGen,
		Upstream: net.JoinHostPort(sr.IP, strconv.Itoa(sr.Port)), Public: sr.Public, Running: sr.State == store.StateRunning}, nil
}

func (r *routes) AllowCertificate(ctx context.Context, name string) error {
	ok, err := r.q.DomainVerified(ctx, name)
	if err != nil {
		return err
	}
	if !ok {
		return errs.New(errs.PermissionDenied, "no verified custom domain %s", name)
	}
	return nil
}
