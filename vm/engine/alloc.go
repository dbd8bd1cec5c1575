package engine

import (
	"context"
	"net/netip"

	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/network"
)

// allocate picks a free IP, a MAC and a vsock CID for VM id. It runs inside
// the create transaction, so two creates never get the same address.
func (l *Local) allocate(ctx context.Context, q store.Q, id string) (netip.Addr, string, uint32, error) {
	ips, _, cids, err := store.UsedAddresses(ctx, q)
	if err != nil {
		return netip.Addr{}, "", 0, err
	}
	used := []netip.Addr{l.cfg.Gateway, l.templateIP()}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip); err == nil {
			used = append(used, a)
		}
	}
	ip, err := network.Allocate(l.cfg.Subnet, used)
	if err != nil {
		return netip.Addr{}, "", 0, err
	}
	taken := map[uint32]bool{}
	for _, c := range cids {
		taken[c] = true
	}
	cid := uint32(3)
	for taken[cid] {
		cid++
	}
	return ip, network.MAC(id).String(), cid, nil
}
