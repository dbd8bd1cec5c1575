package service

import (
	"context"
	"net/netip"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/network"
)

// allocate picks a free IP, a MAC and a vsock CID for VM id. It runs inside
// the create transaction, so two creates never get the same address.
func (s *Service) allocate(ctx context.Context, q store.Q, id string) (netip.Addr, string, uint32, error) {
	ips, _, cids, err := store.UsedAddresses(ctx, q)
	if err != nil {
		return netip.Addr{}, "", 0, err
	}
	used := []netip.Addr{s.cfg.Gateway}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip); err == nil {
			used = append(used, a)
		}
	}
	ip, err := network.Allocate(s.cfg.Subnet, used)
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

// checkQuota fails with errs.ResourceExhausted when adding a VM of the given
// size would take the user over a quota. It runs in the create transaction.
func (s *Service) checkQuota(ctx context.Context, q store.Q, userID string, cpus, memMiB, diskGiB int) error {
	u, err := store.GetUserByID(ctx, q, userID)
	if err != nil {
		return err
	}
	use, err := store.UserUsage(ctx, q, userID)
	if err != nil {
		return err
	}
	switch {
	case u.MaxVMs > 0 && use.VMs+1 > u.MaxVMs:
		return errs.New(errs.ResourceExhausted, "quota: user %s may have at most %d vms (has %d)", u.Name, u.MaxVMs, use.VMs)
	case u.MaxCPUs > 0 && use.CPUs+cpus > u.MaxCPUs:
		return errs.New(errs.ResourceExhausted, "quota: user %s may use at most %d vcpus (uses %d, asked for %d)", u.Name, u.MaxCPUs, use.CPUs, cpus)
	case u.MaxMemoryMiB > 0 && use.MemoryMiB+memMiB > u.MaxMemoryMiB:
		return errs.New(errs.ResourceExhausted, "quota: user %s may use at most %d MiB of memory (uses %d, asked for %d)", u.Name, u.MaxMemoryMiB, use.MemoryMiB, memMiB)
	case u.MaxDiskGiB > 0 && use.DiskGiB+diskGiB > u.MaxDiskGiB:
		return errs.New(errs.ResourceExhausted, "quota: user %s may use at most %d GiB of disk (uses %d, asked for %d)", u.Name, u.MaxDiskGiB, use.DiskGiB, diskGiB)
	}
	return nil
}
