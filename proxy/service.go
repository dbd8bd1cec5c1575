package proxy

import (
	"context"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// The proxy over the service: its route table, certificate policy and
// link ledger are the service's, and the service sees the proxy as its
// Web (links, sign-in).

// ServiceRoutes is Routes and Domains over the service's web routes: a
// VM by name (<vm>.<Domain>) or by a verified custom domain.
type ServiceRoutes struct {
	Domain string
	R      *service.WebRoutes
}

var (
	_ Routes  = ServiceRoutes{}
	_ Domains = ServiceRoutes{}
)

// Route implements Routes: errs.NotFound when no VM serves host.
func (r ServiceRoutes) Route(ctx context.Context, host string) (Route, error) {
	var wr service.WebRoute
	var err error
	if name, ok := SplitHost(host, r.Domain); ok {
		wr, err = r.R.ByName(ctx, name)
	} else {
		wr, err = r.R.ByDomain(ctx, host)
	}
	if errs.ClassOf(err) == errs.NotFound {
		return Route{}, errs.New(errs.NotFound, "no vm serves %s", host)
	}
	return Route(wr), err
}

// AllowCertificate implements Domains.
func (r ServiceRoutes) AllowCertificate(ctx context.Context, name string) error {
	return r.R.AllowCertificate(ctx, name)
}

// ServiceLinks is the LinkLedger kept in the service's store, so a used
// one-time link stays used across restarts.
type ServiceLinks struct{ Svc *service.Service }

var _ LinkLedger = ServiceLinks{}

// Use implements LinkLedger.
func (u ServiceLinks) Use(ctx context.Context, id string, exp time.Time) (bool, error) {
	return u.Svc.UseLink(ctx, id, exp)
}

// publicIPWeb is the proxy with the address its domain's DNS records must
// give (service.PublicIPWeb), so `share` can say where to point them.
type publicIPWeb struct {
	*Proxy
	ip string
}

func (w publicIPWeb) PublicIP() string { return w.ip }

var _ service.PublicIPWeb = publicIPWeb{}

// Web is what the service sees of p serving domain ("" for
// <vm>.localhost), with publicIP the DNS target of the domain's records
// (--public-ip; "" when unknown).
func Web(p *Proxy, domain, publicIP string) service.Web {
	if domain == "" || publicIP == "" {
		return p // *.localhost needs no DNS
	}
	return publicIPWeb{Proxy: p, ip: publicIP}
}
