package service

import (
	"net/netip"

	"github.com/minionsdev/minions/internal/errs"
)

// Per-host subnets (issue 14): every joined host's bridge gets its own
// /24 of the cluster range (config cluster_subnet), assigned in the join's
// transaction and stored on its hosts row until it is removed. The control
// plane's own host keeps its configured subnet, which the cluster range
// must not overlap. A VM keeps its address on its host: addresses are
// allocated by the host's engine from the host's subnet.

// DefaultClusterSubnet is the range hosts' subnets are carved from when
// the configuration names none.
var DefaultClusterSubnet = netip.MustParsePrefix("10.88.0.0/16")

// HostSubnetBits is the size of each host's subnet: a /24 (253 VMs).
const HostSubnetBits = 24

// CheckClusterSubnet says whether cluster can be carved into hosts'
// subnets beside the control plane's own subnet local: an IPv4 prefix of
// /24 or larger that does not overlap local. Errors are
// errs.InvalidArgument with the fix in the message.
func CheckClusterSubnet(cluster, local netip.Prefix) error {
	if !cluster.IsValid() || !cluster.Addr().Is4() {
		return errs.New(errs.InvalidArgument, "cluster_subnet %v: want an IPv4 prefix such as %s", cluster, DefaultClusterSubnet)
	}
	if cluster.Bits() > HostSubnetBits {
		return errs.New(errs.InvalidArgument, "cluster_subnet %v: want a /%d or larger (each host gets a /%d)", cluster, HostSubnetBits, HostSubnetBits)
	}
	if cluster.Masked() != cluster {
		return errs.New(errs.InvalidArgument, "cluster_subnet %v: host bits set (did you mean %v?)", cluster, cluster.Masked())
	}
	if local.IsValid() && cluster.Overlaps(local) {
		return errs.New(errs.InvalidArgument, "cluster_subnet %v overlaps subnet %v (the control plane's own VMs): choose ranges apart, e.g. cluster_subnet = %q",
			cluster, local, suggestCluster(local))
	}
	return nil
}

// suggestCluster is a /16 of 10/8 that does not overlap local.
func suggestCluster(local netip.Prefix) string {
	for _, s := range []string{DefaultClusterSubnet.String(), "10.89.0.0/16", "10.77.0.0/16", "172.29.0.0/16"} {
		if !netip.MustParsePrefix(s).Overlaps(local) {
			return s
		}
	}
	return "10.89.0.0/16"
}

// nextHostSubnet is the lowest /24 of cluster that is neither in used
// nor overlapping local. A full range is errs.FailedPrecondition.
func nextHostSubnet(cluster, local netip.Prefix, used []string) (netip.Prefix, error) {
	if err := CheckClusterSubnet(cluster, netip.Prefix{}); err != nil {
		return netip.Prefix{}, err
	}
	taken := make(map[netip.Prefix]bool, len(used))
	for _, u := range used {
		if p, err := netip.ParsePrefix(u); err == nil {
			taken[p.Masked()] = true
		}
	}
	base := cluster.Addr().As4()
	n := 1 << (HostSubnetBits - cluster.Bits())
	for i := 0; i < n; i++ {
		a := base
		off := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
		off += uint32(i) << (32 - HostSubnetBits)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(off >> 24), byte(off >> 16), byte(off >> 8), byte(off)}), HostSubnetBits)
		if taken[p] || (local.IsValid() && p.Overlaps(local)) {
			continue
		}
		return p, nil
	}
	return netip.Prefix{}, errs.New(errs.FailedPrecondition, "cluster_subnet %v has no free /%d left (%d hosts): widen it or remove a host",
		cluster, HostSubnetBits, len(taken))
}
