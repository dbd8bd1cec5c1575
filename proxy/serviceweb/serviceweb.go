// Package serviceweb puts the HTTPS proxy over the service: the proxy's
// route table, certificate policy and link ledger are the service's, and
// the service sees the proxy as its Web (links, sign-in). It sits apart
// from package proxy so that the service's own tests can use a real proxy.
package serviceweb

import (
	"context"
	"net"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/service"
)

// Routes is proxy.Routes and proxy.Domains over the service's web routes: a
// VM by name (<vm>.<Domain>) or by a verified custom domain.
type Routes struct {
	Domain string
	R      *service.WebRoutes
}

var (
	_ proxy.Routes  = Routes{}
	_ proxy.Domains = Routes{}
)

// Route implements proxy.Routes: errs.NotFound when no VM serves host.
func (r Routes) Route(ctx context.Context, host string) (proxy.Route, error) {
	var wr service.WebRoute
	var err error
	if name, ok := proxy.SplitHost(host, r.Domain); ok {
		wr, err = r.R.ByName(ctx, name)
	} else {
		wr, err = r.R.ByDomain(ctx, host)
	}
	if errs.ClassOf(err) == errs.NotFound {
		return proxy.Route{}, errs.New(errs.NotFound, "no vm serves %s", host)
	}
	rt := proxy.Route(wr)
	// A VM on another host has no address here ("@"+id in the control
	// plane's row): the proxy reaches it through its node (Config.DialVM).
	if h, port, e := net.SplitHostPort(rt.Upstream); e == nil && strings.HasPrefix(h, "@") {
		rt.Upstream = net.JoinHostPort(proxy.VMUpstreamHost(rt.VMID), port)
	}
	return rt, err
}

// AllowCertificate implements proxy.Domains.
func (r Routes) AllowCertificate(ctx context.Context, name string) error {
	return r.R.AllowCertificate(ctx, name)
}

// Links is the proxy.LinkLedger kept in the service's store, so a used
// one-time link stays used across restarts.
type Links struct{ Svc *service.Service }

var _ proxy.LinkLedger = Links{}

// Use implements proxy.LinkLedger.
func (u Links) Use(ctx context.Context, id string, exp time.Time) (bool, error) {
	return u.Svc.UseLink(ctx, id, exp)
}

// publicIPWeb is the proxy with the address its domain's DNS records must
// give (service.PublicIPWeb), so `share` can say where to point them.
type publicIPWeb struct {
	*proxy.Proxy
	ip string
}

func (w publicIPWeb) PublicIP() string { return w.ip }

var _ service.PublicIPWeb = publicIPWeb{}

// Web is what the service sees of p serving domain ("" for
// <vm>.localhost), with publicIP the DNS target of the domain's records
// (--public-ip; "" when unknown).
func Web(p *proxy.Proxy, domain, publicIP string) service.Web {
	if domain == "" || publicIP == "" {
		return p // *.localhost needs no DNS
	}
	return publicIPWeb{Proxy: p, ip: publicIP}
}
