package daemon

import (
	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/service"
)

// Where --public-ip shows: the serve banner, doctor's DNS advice and the
// DNS target in `share` output of a domain proxy.

// publicIPWeb is the proxy with the address its domain's DNS records must
// give (service.PublicIPWeb), so `share` can say where to point them.
type publicIPWeb struct {
	*proxy.Proxy
	ip string
}

func (w publicIPWeb) PublicIP() string { return w.ip }

var _ service.PublicIPWeb = publicIPWeb{}

// webOf is what the service sees of the proxy p serving ep.
func webOf(p *proxy.Proxy, ep proxyEndpoint) service.Web {
	if ep.Domain == "" || ep.PublicIP == "" {
		return p // *.localhost needs no DNS
	}
	return publicIPWeb{Proxy: p, ip: ep.PublicIP}
}
