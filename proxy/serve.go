package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/minionsdev/minions/internal/errs"
)

// readHeaderTimeout bounds the TLS handshake (including an on-demand
// certificate request) and reading request headers.
const readHeaderTimeout = 30 * time.Second

// Run binds HTTPSBind (with a Domain) and HTTPBind and serves until ctx
// ends, then shuts down gracefully (bounded by ShutdownTimeout). It returns
// nil after a shutdown caused by ctx, or the first listener error.
func (p *Proxy) Run(ctx context.Context) error {
	var httpsLn net.Listener
	if p.cfg.Domain != "" {
		ln, err := net.Listen("tcp", p.cfg.HTTPSBind)
		if err != nil {
			return errs.New(errs.Unavailable, "proxy listen %s: %w", p.cfg.HTTPSBind, err)
		}
		httpsLn = ln
	}
	httpLn, err := net.Listen("tcp", p.cfg.HTTPBind)
	if err != nil {
		if httpsLn != nil {
			httpsLn.Close()
		}
		return errs.New(errs.Unavailable, "proxy listen %s: %w", p.cfg.HTTPBind, err)
	}
	return p.Serve(ctx, httpsLn, httpLn)
}

// Serve is Run on listeners the caller bound: httpsLn is required with a
// Domain and ignored (may be nil) in local mode; httpLn may be nil to
// serve no plain HTTP. Serve owns and closes both.
func (p *Proxy) Serve(ctx context.Context, httpsLn, httpLn net.Listener) error {
	if p.cfg.Domain == "" && httpsLn != nil {
		httpsLn.Close()
		httpsLn = nil
	}
	if p.cfg.Domain != "" && httpsLn == nil {
		if httpLn != nil {
			httpLn.Close()
		}
		return errs.New(errs.InvalidArgument, "proxy serve: an https listener is required with a domain")
	}
	port := func(ln net.Listener) int {
		if ln == nil {
			return 0
		}
		_, n := splitBind(ln.Addr().String())
		return n
	}
	p.setPorts(port(httpsLn), port(httpLn))
	p.rebindChallengePorts(httpsLn, httpLn)

	errLog := slog.NewLogLogger(p.log.Handler(), slog.LevelDebug)
	var loops []*h1Listener
	var servers []*http.Server
	g, gctx := errgroup.WithContext(ctx)
	serve := func(srv *http.Server, ln net.Listener) {
		servers = append(servers, srv)
		g.Go(func() error {
			err := srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return errs.New(errs.Unavailable, "proxy serve %s: %w", ln.Addr(), err)
		})
	}
	if httpsLn != nil {
		tc := p.magic.TLSConfig()
		tc.NextProtos = append([]string{"h2", "http/1.1"}, tc.NextProtos...)
		tc.MinVersion = tls.VersionTLS12
		// The loop does the TLS handshakes and answers HTTP/1.x
		// requests; HTTP/2 and the rest go to the server.
		// (Its own copy of the config: Serve configures HTTP/2 in the
		// server's while the loop may already be shaking hands.)
		loop := newH1Listener(limitListener{Listener: httpsLn, lim: p.conns}, p, tc.Clone())
		loops = append(loops, loop)
		serve(&http.Server{
			Handler:           p.Handler(),
			TLSConfig:         tc,
			ReadHeaderTimeout: readHeaderTimeout,
			IdleTimeout:       p.cfg.IdleTimeout,
			ConnContext:       connContext,
			ErrorLog:          errLog,
		}, loop)
		if p.cfg.DNSProvider != nil {
			wildcard := "*." + p.cfg.Domain
			if err := p.wildcard.ManageAsync(ctx, []string{wildcard}); err != nil {
				p.log.Error("manage wildcard certificate", "name", wildcard, "err", err)
			}
		}
	}
	if httpLn != nil {
		h := p.Handler()
		var ln net.Listener = limitListener{Listener: httpLn, lim: p.conns}
		if p.cfg.Domain != "" {
			h = p.issuer.HTTPChallengeHandler(http.HandlerFunc(p.redirect))
		} else {
			// The proxy itself: plain HTTP/1.x requests are answered in
			// a loop per connection, the rest by the server.
			loop := newH1Listener(ln, p, nil)
			loops = append(loops, loop)
			ln = loop
		}
		serve(&http.Server{
			Handler:           h,
			ReadHeaderTimeout: readHeaderTimeout,
			IdleTimeout:       p.cfg.IdleTimeout,
			ConnContext:       connContext,
			ErrorLog:          errLog,
		}, ln)
	}
	p.log.Info("proxy serving", "domain", p.cfg.Domain, "https", addrOf(httpsLn), "http", addrOf(httpLn))

	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.ShutdownTimeout)
		defer cancel()
		sg := new(errgroup.Group)
		for _, srv := range servers {
			sg.Go(func() error { return srv.Shutdown(sctx) })
		}
		for _, loop := range loops {
			sg.Go(func() error { return loop.shutdown(sctx) })
		}
		err := sg.Wait()
		p.upgraded.closeAll()       // Shutdown does not track hijacked connections
		p.up.CloseIdleConnections() // and the fallback transport's
		if p.cache != nil {
			p.cache.Stop()
		}
		if err != nil {
			p.log.Warn("proxy shutdown", "err", err)
		}
		return nil
	})
	err := g.Wait()
	if ctx.Err() != nil && err == nil {
		return nil
	}
	return err
}

// redirect sends plain-HTTP requests to HTTPS (TLS mode).
func (p *Proxy) redirect(w http.ResponseWriter, r *http.Request) {
	host := normalizeHost(r.Host)
	if host == "" {
		http.Error(w, "missing host", http.StatusBadRequest)
		return
	}
	target := "https://" + host
	if port := p.httpsPort.Load(); port != 443 {
		target += ":" + strconv.Itoa(int(port))
	}
	target += r.URL.RequestURI()
	w.Header().Set("Connection", "close")
	http.Redirect(w, r, target, http.StatusPermanentRedirect)
}

func addrOf(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}
