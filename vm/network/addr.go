package network

import (
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
)

// TAPPrefix starts the name of every VM port. The bridge rules check every
// frame entering the bridge from an interface with this prefix against the
// registered ports, so names with it must not be used for anything else.
const TAPPrefix = "mn"

// Port is one VM's attachment to the bridge: the TAP and the only IPv4
// address and MAC that may enter the bridge through it.
type Port struct {
	TAP string
	IP  netip.Addr
	MAC net.HardwareAddr
}

func (p Port) String() string { return fmt.Sprintf("%s %s %s", p.TAP, p.IP, p.MAC) }

// Validate checks p against subnet. Errors are errs.InvalidArgument.
func (p Port) Validate(subnet netip.Prefix) error {
	if err := validIfname(p.TAP); err != nil {
		return errs.New(errs.InvalidArgument, "port: tap: %w", err)
	}
	if !strings.HasPrefix(p.TAP, TAPPrefix) || len(p.TAP) == len(TAPPrefix) {
		return errs.New(errs.InvalidArgument, "port %s: tap name must start with %q", p.TAP, TAPPrefix)
	}
	if !usable(subnet, p.IP) {
		return errs.New(errs.InvalidArgument, "port %s: address %s is not a usable VM address in %s", p.TAP, p.IP, subnet)
	}
	if len(p.MAC) != 6 || p.MAC[0]&1 == 1 || isZero(p.MAC) {
		return errs.New(errs.InvalidArgument, "port %s: mac %q is not a unicast ethernet address", p.TAP, p.MAC)
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Gateway returns the first host address of subnet, which the bridge holds.
func Gateway(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// broadcast returns the last address of an IPv4 subnet.
func broadcast(subnet netip.Prefix) netip.Addr {
	a := subnet.Masked().Addr().As4()
	host := uint32(1)<<(32-subnet.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// usable reports whether a may be given to a VM: inside subnet and not the
// network, gateway or broadcast address.
func usable(subnet netip.Prefix, a netip.Addr) bool {
	return a.Is4() && subnet.Contains(a) && a != subnet.Masked().Addr() && a != Gateway(subnet) && a != broadcast(subnet)
}

// Allocate returns the lowest address of subnet that is not in used and is
// neither the network, the gateway nor the broadcast address. It is pure;
// callers serialise allocation and persist the result. A full subnet is
// errs.ResourceExhausted; an invalid subnet errs.InvalidArgument.
func Allocate(subnet netip.Prefix, used []netip.Addr) (netip.Addr, error) {
	if err := validSubnet(subnet); err != nil {
		return netip.Addr{}, errs.New(errs.InvalidArgument, "allocate address: %w", err)
	}
	taken := make(map[netip.Addr]bool, len(used))
	for _, a := range used {
		taken[a.Unmap()] = true
	}
	last := broadcast(subnet)
	for a := Gateway(subnet).Next(); a.Less(last); a = a.Next() {
		if !taken[a] {
			return a, nil
		}
	}
	return netip.Addr{}, errs.New(errs.ResourceExhausted, "out of addresses in %s", subnet)
}

// MAC returns the MAC address of the VM with the given ID: locally
// administered, unicast (first byte 0x02) and the same for the same ID on
// every host, with 40 bits taken from SHA-256 of the ID.
func MAC(vmID string) net.HardwareAddr {
	return derivedMAC("vm:" + vmID)
}

func derivedMAC(seed string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(seed))
	return net.HardwareAddr{0x02, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// TAPName returns the TAP interface name of the VM with the given ID: "mn"
// followed by the ID. IDs are lowercase letters and digits, at most 13 of
// them (interface names have at most 15 bytes); other IDs are
// errs.InvalidArgument.
func TAPName(vmID string) (string, error) {
	if vmID == "" || len(vmID) > 13 {
		return "", errs.New(errs.InvalidArgument, "tap name for vm %q: id must be 1-13 characters", vmID)
	}
	for _, r := range vmID {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return "", errs.New(errs.InvalidArgument, "tap name for vm %q: id must be lowercase letters and digits", vmID)
		}
	}
	return TAPPrefix + vmID, nil
}
