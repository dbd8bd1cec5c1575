package network

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
)

// DeniedEgress are the IPv4 destinations VMs may not reach through the
// host unless Config.EgressAllow (or Config.DNS) opens them: everything
// that is not the public internet. Cloud metadata services (169.254.169.254)
// hand out the host's credentials; private and shared address space is the
// host's LAN and the provider's network.
//
// IPv6 needs no list: VMs have IPv4 only, the bridge table drops every
// other frame a VM sends and the forward chain drops what is not IPv4 from
// the bridge.
var DeniedEgress = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network"
	netip.MustParsePrefix("10.0.0.0/8"),         // RFC 1918
	netip.MustParsePrefix("100.64.0.0/10"),      // CGNAT, RFC 6598
	netip.MustParsePrefix("127.0.0.0/8"),        // loopback
	netip.MustParsePrefix("169.254.0.0/16"),     // link-local, cloud metadata
	netip.MustParsePrefix("172.16.0.0/12"),      // RFC 1918
	netip.MustParsePrefix("192.0.0.0/24"),       // IETF protocol assignments
	netip.MustParsePrefix("192.168.0.0/16"),     // RFC 1918
	netip.MustParsePrefix("198.18.0.0/15"),      // benchmarking
	netip.MustParsePrefix("224.0.0.0/4"),        // multicast
	netip.MustParsePrefix("240.0.0.0/4"),        // reserved
	netip.MustParsePrefix("255.255.255.255/32"), // limited broadcast
}

// MaxEgressAllow bounds Config.EgressAllow (one nftables rule each).
const MaxEgressAllow = 256

// EgressRule opens one forwarded destination for VMs despite DeniedEgress:
// an IPv4 prefix, optionally only one protocol, optionally only one port.
// Its text form (ParseEgressRule, String) is
//
//	PREFIX[ PROTO[/PORT]]
//
// for example "172.31.9.9", "10.1.0.0/16", "10.1.2.3 tcp/5432" or
// "10.1.2.3 udp". It never opens the host's own addresses: traffic to the
// host is governed by HostPorts and DNS alone.
type EgressRule struct {
	Prefix netip.Prefix // IPv4, no host bits set
	Proto  string       // "", "tcp" or "udp"
	Port   uint16       // 0: any port; needs Proto
}

// ParseEgressRule parses the text form of an EgressRule and validates it.
// A bare address is a /32. Errors are errs.InvalidArgument.
func ParseEgressRule(s string) (EgressRule, error) {
	var r EgressRule
	f := strings.Fields(s)
	if len(f) == 0 || len(f) > 2 {
		return r, errs.New(errs.InvalidArgument, "egress rule %q: want PREFIX[ tcp|udp[/PORT]]", s)
	}
	if strings.Contains(f[0], "/") {
		p, err := netip.ParsePrefix(f[0])
		if err != nil {
			return r, errs.New(errs.InvalidArgument, "egress rule %q: %v", s, err)
		}
		r.Prefix = p
	} else {
		a, err := netip.ParseAddr(f[0])
		if err != nil {
			return r, errs.New(errs.InvalidArgument, "egress rule %q: %v", s, err)
		}
		r.Prefix = netip.PrefixFrom(a, a.BitLen())
	}
	if len(f) == 2 {
		proto, port, hasPort := strings.Cut(f[1], "/")
		r.Proto = proto
		if hasPort {
			n, err := strconv.ParseUint(port, 10, 16)
			if err != nil || n == 0 {
				return r, errs.New(errs.InvalidArgument, "egress rule %q: port %q: want 1-65535", s, port)
			}
			r.Port = uint16(n)
		}
	}
	if err := r.Validate(); err != nil {
		return r, err
	}
	return r, nil
}

// String is the text form ParseEgressRule reads.
func (r EgressRule) String() string {
	s := r.Prefix.String()
	if r.Proto != "" {
		s += " " + r.Proto
		if r.Port != 0 {
			s += fmt.Sprintf("/%d", r.Port)
		}
	}
	return s
}

// Validate checks r. Errors are errs.InvalidArgument.
func (r EgressRule) Validate() error {
	p := r.Prefix
	switch {
	case !p.IsValid():
		return errs.New(errs.InvalidArgument, "egress rule: prefix missing")
	case !p.Addr().Is4():
		return errs.New(errs.InvalidArgument, "egress rule %s: not IPv4 (vms have IPv4 only)", p)
	case p.Masked() != p:
		return errs.New(errs.InvalidArgument, "egress rule %s: host bits set (want %s)", p, p.Masked())
	}
	switch r.Proto {
	case "", "tcp", "udp":
	default:
		return errs.New(errs.InvalidArgument, "egress rule %s: protocol %q: want tcp or udp", p, r.Proto)
	}
	if r.Port != 0 && r.Proto == "" {
		return errs.New(errs.InvalidArgument, "egress rule %s: a port needs a protocol (tcp/%d or udp/%d)", p, r.Port, r.Port)
	}
	return nil
}

// validDNS checks the nameserver handed to guests: a unicast IPv4 address a
// VM can reach (its own subnet's gateway included).
func validDNS(a netip.Addr) error {
	switch {
	case !a.Is4():
		return fmt.Errorf("%s is not IPv4", a)
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%s is not an address a vm can reach", a)
	}
	return nil
}
