package proxy

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/minionsdev/minions/internal/errs"
)

// setupCertificates builds the certmagic cache, config and ACME issuer.
func (p *Proxy) setupCertificates() error {
	cfg := p.cfg
	if err := os.MkdirAll(cfg.StorageDir, 0o700); err != nil {
		return errs.New(errs.FailedPrecondition, "proxy certificate storage: %w", err)
	}
	zl := zap.New(slogCore{l: p.log.With("component", "certmagic")})
	storage := &certmagic.FileStorage{Path: cfg.StorageDir}
	// Two configs share one cache and storage: onDemand obtains per-name
	// certificates during handshakes (VM names without a DNS provider, and
	// custom domains); wildcard, only with a DNS provider, manages
	// *.<Domain> by DNS-01 in the background. certmagic defers every name
	// of a config with OnDemand set, hence the split.
	var onDemand, wildcard *certmagic.Config
	p.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(c certmagic.Certificate) (*certmagic.Config, error) {
			if wildcard != nil && len(c.Names) == 1 && c.Names[0] == "*."+cfg.Domain {
				return wildcard, nil
			}
			return onDemand, nil
		},
		Logger: zl,
	})
	onDemand = certmagic.New(p.cache, certmagic.Config{
		Storage:  storage,
		OnDemand: &certmagic.OnDemandConfig{DecisionFunc: p.allowCertificate},
		Logger:   zl,
	})
	host, httpsPort := splitBind(cfg.HTTPSBind)
	_, httpPort := splitBind(cfg.HTTPBind)
	tmpl := certmagic.ACMEIssuer{
		CA:           cfg.ACMECA,
		Email:        cfg.ACMEEmail,
		Agreed:       true,
		TrustedRoots: cfg.CARoots,
		// Our own listeners answer HTTP-01 (HTTPChallengeHandler) and
		// TLS-ALPN-01 (the TLS config); pointing certmagic at the same
		// ports makes it find them busy and rely on us.
		ListenHost:     host,
		AltHTTPPort:    httpPort,
		AltTLSALPNPort: httpsPort,
		Logger:         zl,
	}
	p.issuer = certmagic.NewACMEIssuer(onDemand, tmpl)
	onDemand.Issuers = []certmagic.Issuer{p.issuer}
	p.magic = onDemand
	if cfg.DNSProvider != nil {
		wildcard = certmagic.New(p.cache, certmagic.Config{Storage: storage, Logger: zl})
		wt := tmpl
		wt.DisableHTTPChallenge, wt.DisableTLSALPNChallenge = true, true
		wt.DNS01Solver = &certmagic.DNS01Solver{DNSManager: certmagic.DNSManager{
			DNSProvider:        cfg.DNSProvider,
			Resolvers:          cfg.DNSResolvers,
			PropagationTimeout: cfg.DNSPropagationTimeout,
			Logger:             zl,
		}}
		wildcard.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(wildcard, wt)}
		p.wildcard = wildcard
	}
	return nil
}

// rebindChallengePorts updates the issuer after listeners are bound to
// ephemeral ports (tests bind ":0").
func (p *Proxy) rebindChallengePorts(https, http net.Listener) {
	if p.issuer == nil {
		return
	}
	if https != nil {
		host, port := splitBind(https.Addr().String())
		p.issuer.ListenHost, p.issuer.AltTLSALPNPort = host, port
	}
	if http != nil {
		_, p.issuer.AltHTTPPort = splitBind(http.Addr().String())
	}
}

// allowCertificate is certmagic's on-demand decision: only names that
// exist get a certificate request, so random names never reach the CA.
func (p *Proxy) allowCertificate(ctx context.Context, name string) error {
	err := p.decide(ctx, normalizeHost(name))
	if err != nil {
		p.metrics.certDenied.Add(1)
		p.log.Info("certificate denied", "name", name, "err", err)
		return err
	}
	p.metrics.certAllowed.Add(1)
	return nil
}

func (p *Proxy) decide(ctx context.Context, name string) error {
	d := p.cfg.Domain
	if name == d || len(name) > len(d) && name[len(name)-len(d)-1:] == "."+d {
		if p.cfg.DNSProvider != nil {
			return errs.New(errs.PermissionDenied, "certificate for %s: covered by the wildcard", name)
		}
		if _, ok := SplitHost(name, d); !ok {
			return errs.New(errs.PermissionDenied, "certificate for %s: not a vm name", name)
		}
		if _, err := p.routes.Route(ctx, name); err != nil {
			return errs.New(errs.PermissionDenied, "certificate for %s: %w", name, err)
		}
		return nil
	}
	if p.domains == nil {
		return errs.New(errs.PermissionDenied, "certificate for %s: custom domains are not enabled", name)
	}
	if err := p.domains.AllowCertificate(ctx, name); err != nil {
		return errs.New(errs.PermissionDenied, "certificate for %s: %w", name, err)
	}
	return nil
}

func splitBind(addr string) (string, int) {
	h, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0
	}
	n, _ := strconv.Atoi(port)
	if h == "0.0.0.0" || h == "::" {
		h = ""
	}
	return h, n
}

// slogCore is a zapcore.Core writing to slog, so certmagic's logs go to
// the injected logger.
type slogCore struct {
	l      *slog.Logger
	fields []zapcore.Field
}

func (c slogCore) Enabled(l zapcore.Level) bool {
	return c.l.Enabled(context.Background(), slogLevel(l))
}

func (c slogCore) With(fs []zapcore.Field) zapcore.Core {
	return slogCore{l: c.l, fields: append(c.fields[:len(c.fields):len(c.fields)], fs...)}
}

func (c slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields)+1)
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", e.LoggerName))
	}
	for k, v := range enc.Fields {
		attrs = append(attrs, slog.Any(k, v))
	}
	c.l.LogAttrs(context.Background(), slogLevel(e.Level), e.Message, attrs...)
	return nil
}

func (c slogCore) Sync() error { return nil }

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	}
	return slog.LevelError
}
