package network

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/minionsdev/minions/internal/errs"
)

// Config describes the host network Minions manages. Start from
// DefaultConfig: the zero value has UplinkNAT off. Empty Bridge, Table and
// an invalid Subnet are replaced by their defaults by New.
type Config struct {
	// Bridge is the name of the Linux bridge all VM TAPs join.
	// Default "minions0". At most 15 bytes.
	Bridge string
	// Subnet is the IPv4 network of the VMs. The gateway (the bridge's
	// address) is its first host address. Default 10.210.0.0/16; prefix
	// length 8 to 30.
	Subnet netip.Prefix
	// Table is the name of the nftables tables (family inet and bridge)
	// owned by Minions. Default "minions".
	Table string
	// UplinkNAT masquerades traffic from Subnet that leaves by any other
	// interface. Default true.
	UplinkNAT bool
	// HostPorts are the host TCP ports VMs may reach on the gateway
	// address. Default none.
	HostPorts []uint16
	// DNS is the nameserver handed to guests (zero: none). VMs may reach it
	// on port 53 (UDP and TCP) even when it is in DeniedEgress or is an
	// address of the host itself (a resolver on the gateway, say). It must
	// be a unicast IPv4 address outside Subnet, or the gateway.
	DNS netip.Addr
	// EgressAllow opens destinations in DeniedEgress to VMs (forwarded
	// traffic only: the host's own addresses stay closed). Default none;
	// at most MaxEgressAllow rules.
	EgressAllow []EgressRule
}

// Defaults.
const (
	DefaultBridge = "minions0"
	DefaultTable  = "minions"
)

// DefaultSubnet is the default VM network.
var DefaultSubnet = netip.MustParsePrefix("10.210.0.0/16")

// DefaultConfig returns the default configuration.
func DefaultConfig() Config {
	return Config{Bridge: DefaultBridge, Subnet: DefaultSubnet, Table: DefaultTable, UplinkNAT: true}
}

// withDefaults fills empty fields with their defaults.
func (c Config) withDefaults() Config {
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	if c.Table == "" {
		c.Table = DefaultTable
	}
	c.HostPorts = slices.Clone(c.HostPorts)
	slices.Sort(c.HostPorts)
	c.EgressAllow = slices.Clone(c.EgressAllow)
	return c
}

// Validate reports whether c is usable. Errors are errs.InvalidArgument.
func (c Config) Validate() error {
	if err := validIfname(c.Bridge); err != nil {
		return errs.New(errs.InvalidArgument, "network config: bridge: %w", err)
	}
	if err := validSubnet(c.Subnet); err != nil {
		return errs.New(errs.InvalidArgument, "network config: subnet: %w", err)
	}
	if !validTableName(c.Table) {
		return errs.New(errs.InvalidArgument, "network config: table %q: want 1-32 of [A-Za-z0-9_-]", c.Table)
	}
	seen := map[uint16]bool{}
	for _, p := range c.HostPorts {
		if p == 0 {
			return errs.New(errs.InvalidArgument, "network config: host port 0")
		}
		if seen[p] {
			return errs.New(errs.InvalidArgument, "network config: host port %d listed twice", p)
		}
		seen[p] = true
	}
	if c.DNS.IsValid() {
		if err := validDNS(c.DNS); err != nil {
			return errs.New(errs.InvalidArgument, "network config: dns: %w", err)
		}
		if c.Subnet.Contains(c.DNS) && c.DNS != Gateway(c.Subnet) {
			return errs.New(errs.InvalidArgument, "network config: dns %s is inside the vm subnet %s: only the gateway %s may serve vms there", c.DNS, c.Subnet, Gateway(c.Subnet))
		}
	}
	if len(c.EgressAllow) > MaxEgressAllow {
		return errs.New(errs.InvalidArgument, "network config: %d egress rules, at most %d", len(c.EgressAllow), MaxEgressAllow)
	}
	rules := map[EgressRule]bool{}
	for _, r := range c.EgressAllow {
		if err := r.Validate(); err != nil {
			return errs.New(errs.InvalidArgument, "network config: %w", err)
		}
		if rules[r] {
			return errs.New(errs.InvalidArgument, "network config: egress rule %q listed twice", r)
		}
		rules[r] = true
	}
	return nil
}

// Gateway returns the host's address on the bridge: the first host address
// of the config's subnet.
func (c Config) Gateway() netip.Addr { return Gateway(c.Subnet) }

func validSubnet(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("missing")
	case !p.Addr().Is4():
		return fmt.Errorf("%s is not IPv4", p)
	case p.Bits() < 8 || p.Bits() > 30:
		return fmt.Errorf("%s: prefix length must be 8 to 30", p)
	case p.Masked() != p:
		return fmt.Errorf("%s has host bits set (want %s)", p, p.Masked())
	}
	return nil
}

func validTableName(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// validIfname checks a Linux interface name (IFNAMSIZ 16 with the NUL).
func validIfname(s string) error {
	if s == "" || len(s) > 15 {
		return fmt.Errorf("interface name %q: want 1-15 bytes", s)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("interface name %q is reserved", s)
	}
	for _, r := range s {
		if r <= ' ' || r >= 0x7f || r == '/' || r == ':' || r == '"' || r == '\\' {
			return fmt.Errorf("interface name %q: character %q not allowed", s, r)
		}
	}
	return nil
}
