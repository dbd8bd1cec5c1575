package daemon

import (
	"fmt"
	"strings"

	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/service"
)

// Where --public-ip shows: the serve banner, doctor's DNS advice and the
// DNS target in `share` output of a domain proxy.

// DNSAdvice says which DNS records make https://<vm>.<domain> reach this
// host: A (or AAAA) records for the domain and its wildcard.
func DNSAdvice(domain, publicIP string) string {
	rec, target := "A", "this host's public IP (pass --public-ip to see it here)"
	if publicIP != "" {
		target = publicIP
		if strings.Contains(publicIP, ":") {
			rec = "AAAA"
		}
	}
	return fmt.Sprintf("%s records %s and *.%s -> %s", rec, domain, domain, target)
}

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
