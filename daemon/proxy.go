package daemon

import (
	"context"
	"crypto/x509"
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

	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/internal/announce"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/metrics"
	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/serviceweb"
	"github.com/minionsdev/minions/service"
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
// proxy.LogBuffer: a write every second instead of one per request (each
// write also wakes the Go runtime's monitor thread; at 100 ms the proxy
// paid about 5-10 % more CPU per request, BenchmarkProxyCPUAB).
func startProxy(ctx context.Context, g *errgroup.Group, cfg config.Config, e *local.Installation, log *slog.Logger, logOut io.Writer, format string, paths local.Paths, m *metrics.Registry) error {
	if cfg.ProxyBind == "" && cfg.HTTPBind == "" {
		return e.Service.SetWebEndpoint(ctx, "")
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
	accessBuf := proxy.NewLogBuffer(logOut, time.Second)
	access := accessLogger(accessBuf, format)
	p, err := newProxyLogs(ctx, cfg, e, log, access, paths, ep)
	if err != nil {
		accessBuf.Close()
		closeAll()
		return err
	}
	b, _ := json.Marshal(ep)
	if err := e.Service.SetWebEndpoint(ctx, string(b)); err != nil {
		closeAll()
		return err
	}
	web := serviceweb.Web(p, ep.Domain, ep.PublicIP)
	e.Service.SetWeb(func(context.Context) (service.Web, error) { return web, nil })
	m.Add(p.MetricsHandler())
	g.Go(func() error {
		defer accessBuf.Close()
		return p.Serve(ctx, httpsLn, httpLn)
	})
	log.Info("proxy listening", "https", addrOf(httpsLn, ""), "http", addrOf(httpLn, ""), "domain", cfg.Domain)
	return nil
}

// accessLogger is the proxy's access log in the daemon's resolved log
// format. JSON lines are written by the proxy's own writer for its
// per-request record: the same lines as slog's JSON handler, at a sixth
// of its cost per request (proxy.NewJSONAccessLog).
func accessLogger(w io.Writer, format string) *slog.Logger {
	if format == announce.LogText {
		return announce.NewLogger(w, format).With("component", "access")
	}
	return proxy.NewJSONAccessLog(w, slog.String("component", "access"))
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
func newProxy(ctx context.Context, cfg config.Config, e *local.Installation, log *slog.Logger, paths local.Paths, ep proxyEndpoint) (*proxy.Proxy, error) {
	return newProxyLogs(ctx, cfg, e, log, nil, paths, ep)
}

// newProxyLogs is newProxy with the access log going to access (nil: log).
func newProxyLogs(ctx context.Context, cfg config.Config, e *local.Installation, log, access *slog.Logger, paths local.Paths, ep proxyEndpoint) (*proxy.Proxy, error) {
	if access == nil {
		access = log.With("component", "access")
	}
	secret, err := e.Service.WebSecret(ctx, proxy.SecretSize)
	if err != nil {
		return nil, err
	}
	pc := proxy.Config{Domain: cfg.Domain, HTTPSBind: cfg.ProxyBind, HTTPBind: cfg.HTTPBind, ACMECA: cfg.ACMECA,
		PublicHTTPSPort: ep.HTTPSPort, PublicHTTPPort: ep.HTTPPort,
		Staging: cfg.ACMEStaging, ACMEEmail: cfg.ACMEEmail, StorageDir: filepath.Join(paths.State, "certs"),
		Secret: secret, Resolver: resolver(ep.DNSResolver), RatePerSecond: cfg.ProxyRate, Burst: cfg.ProxyBurst, MaxConns: cfg.ProxyMaxConns,
		Log: log.With("component", "proxy"), AccessLog: access, DialVM: e.Service.DialWeb}
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
	dc, err := cfg.DNSConfig()
	if err != nil {
		return nil, err
	}
	if pc.DNSProvider, err = proxy.NewDNSProvider(proxy.DNSConfig(dc)); err != nil {
		return nil, err
	}
	if pc.DNSProvider != nil && ep.DNSResolver != "" {
		// Zone lookup and propagation checks of the DNS-01 record ask the
		// configured resolver too (instead of the zone's nameservers).
		pc.DNSResolvers = []string{ep.DNSResolver}
	}
	wr, err := e.Service.WebRoutes(ctx)
	if err != nil {
		return nil, err
	}
	r := serviceweb.Routes{Domain: cfg.Domain, R: wr}
	pc.Links = serviceweb.Links{Svc: e.Service}
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

// The config file's DNS provider keys are checked by the proxy, which this
// package links (the lean minions binary does not, nor checks them).
func init() {
	config.SetDNSValidator(func(dc config.DNSConfig) error { return proxy.DNSConfig(dc).Validate() })
}

// storedWeb is the service's WebSource when no proxy runs in this process
// (the CLI in-process): a non-serving proxy built once from the endpoint
// the daemon recorded. Until a daemon has served the proxy it answers
// errs.FailedPrecondition.
func storedWeb(svc *service.Service, paths local.Paths, log *slog.Logger) service.WebSource {
	var mu sync.Mutex
	var built service.Web
	return func(ctx context.Context) (service.Web, error) {
		mu.Lock()
		defer mu.Unlock()
		if built != nil {
			return built, nil
		}
		ep, err := storedEndpoint(ctx, svc)
		if err != nil {
			return nil, err
		}
		if ep == (proxyEndpoint{}) {
			return nil, errs.New(errs.FailedPrecondition, "the web proxy is not running: start `minions serve` with --http-bind ADDR (http://<vm>.localhost) or --domain D")
		}
		cfg := config.Config{Domain: ep.Domain, HTTPBind: "127.0.0.1:" + strconv.Itoa(ep.HTTPPort)}
		if ep.Domain != "" {
			cfg.ProxyBind = "127.0.0.1:" + strconv.Itoa(ep.HTTPSPort)
		}
		p, err := newProxy(ctx, cfg, &local.Installation{Service: svc}, log, paths, ep)
		if err != nil {
			return nil, err
		}
		built = serviceweb.Web(p, ep.Domain, ep.PublicIP)
		return built, nil
	}
}

// storedEndpoint is the proxy endpoint startProxy recorded (zero when the
// proxy is off).
func storedEndpoint(ctx context.Context, svc *service.Service) (proxyEndpoint, error) {
	var ep proxyEndpoint
	v, err := svc.WebEndpoint(ctx)
	if err != nil || v == "" {
		return ep, err
	}
	if err := json.Unmarshal([]byte(v), &ep); err != nil {
		return ep, fmt.Errorf("proxy endpoint: %w", err)
	}
	return ep, nil
}
