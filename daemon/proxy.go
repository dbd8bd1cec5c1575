package daemon

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/store"
	"golang.org/x/sync/errgroup"
)

// startProxy runs the HTTPS proxy (https://<vm>.<domain>) or, without a
// domain, the local HTTP proxy (http://<vm>.localhost:<port>).
func startProxy(ctx context.Context, g *errgroup.Group, cfg Config, e *Env, log *slog.Logger, paths Paths, m *metrics) error {
	if cfg.ProxyBind == "" && cfg.HTTPBind == "" {
		return nil
	}
	p, err := newProxy(ctx, cfg, e, log, paths)
	if err != nil {
		return err
	}
	m.extra = append(m.extra, p.MetricsHandler())
	g.Go(func() error { return p.Run(ctx) })
	log.Info("proxy listening", "https", cfg.ProxyBind, "http", cfg.HTTPBind, "domain", cfg.Domain)
	return nil
}

func newProxy(ctx context.Context, cfg Config, e *Env, log *slog.Logger, paths Paths) (*proxy.Proxy, error) {
	secret, err := proxySecret(ctx, e.DB)
	if err != nil {
		return nil, err
	}
	pc := proxy.Config{Domain: cfg.Domain, HTTPSBind: cfg.ProxyBind, HTTPBind: cfg.HTTPBind, ACMECA: cfg.ACMECA,
		Staging: cfg.ACMEStaging, ACMEEmail: cfg.ACMEEmail, StorageDir: filepath.Join(paths.State, "certs"),
		Secret: secret, Log: log.With("component", "proxy"), AccessLog: log.With("component", "access")}
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
	r := routes{db: e.DB, domain: cfg.Domain}
	return proxy.New(pc, r, r)
}

// proxySecret is the proxy's signing key, created once and kept in the
// store so sign-in cookies survive restarts.
func proxySecret(ctx context.Context, db *store.DB) ([]byte, error) {
	var secret []byte
	err := db.Tx(ctx, func(q store.Q) error {
		v, err := store.Setting(ctx, q, "proxy_secret")
		if err != nil {
			return err
		}
		if v != "" {
			secret, err = hex.DecodeString(v)
			return err
		}
		secret = make([]byte, 32)
		rand.Read(secret)
		return store.SetSetting(ctx, q, "proxy_secret", hex.EncodeToString(secret))
	})
	return secret, err
}

// routes maps a request's host to a VM from the store.
type routes struct {
	db     *store.DB
	domain string
}

func (r routes) Route(ctx context.Context, host string) (proxy.Route, error) {
	name, ok := proxy.SplitHost(host, r.domain)
	var v store.VM
	var err error
	if ok {
		v, err = store.GetVM(ctx, r.db, name)
		if err == nil && v.Name != name {
			err = errs.New(errs.NotFound, "no vm %s", name) // never route by ID
		}
	} else {
		var id string
		err = r.db.QueryRowContext(ctx, `SELECT vm_id FROM domains WHERE name = ? AND verified = 1`, host).Scan(&id)
		if err != nil {
			return proxy.Route{}, errs.New(errs.NotFound, "no vm serves %s", host)
		}
		v, err = store.GetVM(ctx, r.db, id)
	}
	if err != nil {
		return proxy.Route{}, errs.New(errs.NotFound, "no vm serves %s", host)
	}
	return proxy.Route{VMID: v.ID, VMName: v.Name, Owner: v.Owner, Upstream: net.JoinHostPort(v.IP, strconv.Itoa(v.Port)),
		Public: v.Public, Running: v.State == store.StateRunning}, nil
}

func (r routes) AllowCertificate(ctx context.Context, name string) error {
	var n int
	if err := r.db.QueryRowContext(ctx, `SELECT count(*) FROM domains WHERE name = ? AND verified = 1`, name).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("no verified custom domain %s", name)
	}
	return nil
}
