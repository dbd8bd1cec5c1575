// Package network owns the host side of VM networking: one Linux bridge
// (default minions0) with the gateway address, one TAP per VM enslaved to it
// with bridge port isolation, and the nftables tables Minions owns.
//
// It is the only package that imports github.com/vishvananda/netlink and
// github.com/google/nftables; it never runs ip, iptables or nft.
//
// The package has a pure core and a thin shell:
//
//   - Allocate, Gateway, MAC and TAPName compute addresses and names without
//     I/O.
//   - Ruleset renders the complete desired nftables state for a Config and a
//     set of ports as text (golden-tested). The same model is what Manager
//     sends to the kernel, so the text is exactly what is enforced.
//   - Manager applies that state (Setup, AddPort, RemovePort, Teardown) and
//     reports drift (Check). It needs CAP_NET_ADMIN in the network namespace
//     it runs in.
//
// # What the rules enforce
//
// Two tables named Config.Table are replaced together in one netlink batch:
//
//   - table inet: VM-to-VM traffic routed through the host is dropped; VMs may
//     reach the public internet (masqueraded when Config.UplinkNAT) but no
//     destination in DeniedEgress (link-local and cloud metadata, RFC 1918,
//     CGNAT, loopback, multicast, reserved: refused with ICMP
//     admin-prohibited) unless Config.EgressAllow opens it; Config.DNS is
//     reachable on port 53 (UDP and TCP) wherever it is; traffic from
//     outside to a VM passes only when it belongs to a connection the VM or
//     the host started, while the host itself reaches every VM on any port;
//     from the bridge the host accepts, on any of its addresses, only
//     replies, ICMP echo to the gateway, Config.HostPorts (TCP) on the
//     gateway and port 53 on Config.DNS; a TAP that is not in the bridge
//     (mn*, as the inet family sees bridged packets under the bridge's
//     name) reaches neither the host nor anything beyond it.
//   - table bridge: every frame entering a bridge from a port named mn*
//     (TAPPrefix) must carry the IPv4 address and MAC registered for that
//     port (ARP included) and be IPv4 or ARP; everything else is dropped.
//     Bridging from such ports is dropped. (Matching the bridge by name,
//     meta ibrname, needs CONFIG_NFT_BRIDGE_META, which not every kernel
//     has; hence the name prefix.) The registered identities live in one set keyed by interface
//     name, so adding or removing a VM is an element insert or delete, never
//     a ruleset rewrite.
//
// A port's identity is also written to its interface alias, so Setup can
// rebuild the registrations after the tables were flushed (for example by
// a restart of nftables.service).
//
// A table bridge is needed besides the inet table because only the bridge
// family sees which port a frame came in on, and sees ARP.
// Port isolation (IFLA_BRPORT_ISOLATED) on every TAP keeps VMs apart even if
// the tables are removed; the rules keep them apart if isolation is lost.
package network
