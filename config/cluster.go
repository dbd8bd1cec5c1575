package config

import (
	"flag"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// Several hosts (issue 14): `serve` embeds a NATS server (the fabric) on
// nats_bind by default (loopback: one host needs nothing), or joins an
// external cluster at nats_url. `host add` prints a join command naming
// advertise (or public_ip, or the API's bind address).

// DefaultNATSBind is the embedded NATS server's listener.
const DefaultNATSBind = "127.0.0.1:4222"

func (c *Config) clusterDefaults() {
	if c.NATSBind == "" {
		c.NATSBind = DefaultNATSBind
	}
	if c.ClusterSubnet == "" {
		c.ClusterSubnet = service.DefaultClusterSubnet.String()
	}
}

// ClusterPrefix is cluster_subnet parsed (the zero prefix if invalid;
// Validate says why).
func (c *Config) ClusterPrefix() netip.Prefix {
	p, _ := netip.ParsePrefix(c.ClusterSubnet)
	return p
}

func (c *Config) validateCluster() error {
	if c.ClusterSubnet != "" {
		p, err := netip.ParsePrefix(c.ClusterSubnet)
		if err != nil {
			return errs.New(errs.InvalidArgument, "cluster_subnet %q: %v", c.ClusterSubnet, err)
		}
		local, _ := netip.ParsePrefix(c.Subnet)
		if err := service.CheckClusterSubnet(p, local); err != nil {
			return err
		}
	}
	if c.NATSURL != "" {
		u, err := url.Parse(strings.Split(c.NATSURL, ",")[0])
		if err != nil || (u.Scheme != "nats" && u.Scheme != "tls") || u.Host == "" {
			return errs.New(errs.InvalidArgument, "nats_url %q: want nats://host:port (comma-separated for a cluster)", c.NATSURL)
		}
	}
	if _, _, err := net.SplitHostPort(c.NATSBind); c.NATSBind != "" && err != nil {
		return errs.New(errs.InvalidArgument, "nats_bind %q: want host:port", c.NATSBind)
	}
	if c.Advertise != "" {
		if strings.ContainsAny(c.Advertise, "/: ") && net.ParseIP(c.Advertise) == nil {
			return errs.New(errs.InvalidArgument, "advertise %q: want a host name or IP address, no port", c.Advertise)
		}
	}
	return nil
}

// AdvertiseHost is the address other hosts reach this one at: advertise,
// else public_ip, else the API's bind host, else loopback.
func (c *Config) AdvertiseHost() string {
	switch {
	case c.Advertise != "":
		return c.Advertise
	case c.PublicIP != "":
		return c.PublicIP
	}
	if h, _, err := net.SplitHostPort(c.Bind); err == nil && h != "" && h != "0.0.0.0" && h != "::" {
		return h
	}
	return "127.0.0.1"
}

// JoinURL is the API URL a joining node calls ("" without a TCP API).
func (c *Config) JoinURL(api net.Addr) string {
	if api == nil {
		return ""
	}
	_, port, _ := net.SplitHostPort(api.String())
	scheme := "http"
	if c.TLSCert != "" {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(c.AdvertiseHost(), port)
}

// JoinReach says why a node on another host could not use the join
// command `host add` prints ("" when it can): the advertised address is
// not loopback but the API (api) or the embedded fabric (nats; nil for an
// external cluster) listens on loopback only.
func (c *Config) JoinReach(api, nats net.Addr) string {
	adv := c.AdvertiseHost()
	if isLoopback(adv) || api == nil {
		return "" // one machine (tests, a single host)
	}
	var probs []string
	if h, port, err := net.SplitHostPort(api.String()); err == nil && isLoopback(h) {
		probs = append(probs, fmt.Sprintf("the API listens on %s only: other hosts cannot reach %s; set bind = %q (with tls_cert and tls_key, or insecure_http)",
			api, c.JoinURL(api), net.JoinHostPort("0.0.0.0", port)))
	}
	if nats != nil {
		if h, port, err := net.SplitHostPort(nats.String()); err == nil && isLoopback(h) {
			probs = append(probs, fmt.Sprintf("the fabric (NATS) listens on %s only: other hosts cannot reach %s; set nats_bind = %q",
				nats, net.JoinHostPort(adv, port), net.JoinHostPort("0.0.0.0", port)))
		}
	}
	return strings.Join(probs, "; and ")
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// ClusterFlags registers serve's several-hosts flags.
func ClusterFlags(fs *flag.FlagSet) {
	fs.String("nats", "", "use the external NATS cluster at this URL instead of the embedded server (nats://host:port[,...])")
	fs.String("nats-bind", "", "the embedded NATS server's listener (default "+DefaultNATSBind+"; other hosts need a reachable address)")
	fs.String("cluster-subnet", "", "the range each joined host's /24 VM subnet is carved from (default "+service.DefaultClusterSubnet.String()+"; apart from --subnet)")
	fs.String("advertise", "", "the address other hosts reach this one at, named in `host add`'s join command (default --public-ip)")
}

func (c *Config) setClusterFlag(name, v string) {
	switch name {
	case "nats":
		c.NATSURL = v
	case "nats-bind":
		c.NATSBind = v
	case "advertise":
		c.Advertise = v
	case "cluster-subnet":
		c.ClusterSubnet = v
	}
}
