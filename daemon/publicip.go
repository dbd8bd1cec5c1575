package daemon

import (
	"flag"
	"fmt"
	"strings"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/service"
)

// Where --public-ip shows: the serve banner, doctor's DNS advice and the
// DNS target in `share` output of a domain proxy.

// dnsAdvice says which DNS records make https://<vm>.<domain> reach this
// host: A (or AAAA) records for the domain and its wildcard.
func dnsAdvice(domain, publicIP string) string {
	rec, target := "A", "this host's public IP (pass --public-ip to see it here)"
	if publicIP != "" {
		target = publicIP
		if strings.Contains(publicIP, ":") {
			rec = "AAAA"
		}
	}
	return fmt.Sprintf("%s records %s and *.%s -> %s", rec, domain, domain, target)
}

// dnsCheck is doctor's line about the DNS records the configured domain
// needs; without --public-ip it cannot say where they point, so it asks.
func dnsCheck(cfg Config) check {
	if cfg.Domain == "" {
		return check{What: "dns", OK: true, Detail: "no domain: VMs are served at http://<vm>.localhost (serve --http-bind); for https://<vm>.DOMAIN serve with --domain DOMAIN --public-ip IP"}
	}
	return check{What: "dns", OK: cfg.PublicIP != "", Detail: "create " + dnsAdvice(cfg.Domain, cfg.PublicIP)}
}

// doctorFlags are the serve settings doctor's advice depends on.
func doctorFlags(fs *flag.FlagSet) {
	fs.String("config", DefaultConfigFile, "the daemon's config file (domain, public_ip)")
	fs.String("domain", "", "the domain serve uses (default: from the config file)")
	fs.String("public-ip", "", "this host's public address (default: from the config file)")
}

// doctorConfig is the config file overlaid with doctor's flags.
func doctorConfig(x *cli.Ctx) (Config, error) {
	explicit := false
	x.FS.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	cfg, err := LoadConfig(x.FS.Lookup("config").Value.String(), explicit)
	if err != nil {
		return cfg, err
	}
	x.FS.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "domain":
			cfg.Domain = f.Value.String()
		case "public-ip":
			cfg.PublicIP = f.Value.String()
		}
	})
	cfg.Defaults()
	return cfg, cfg.Validate()
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
