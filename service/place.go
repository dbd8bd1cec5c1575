package service

import (
	"context"
	"fmt"

	"github.com/minionsdev/minions/scheduler"
	"github.com/minionsdev/minions/store"
)

// PlaceVM chooses the host for a VM of req's size (req.Host pins it) from
// the registry: only hosts that are ready and heard from lately take VMs;
// vCPUs and memory count what the VMs on each host were given (memory of
// the VMs that are not stopped, against the configured memory overcommit
// ratio), disk what the node reports free. cfg's zero fields take the
// scheduler's defaults, and its memory ratio defaults to this service's.
// Errors are the scheduler's (errs.ResourceExhausted when no host has
// room, saying why for each). It reserves nothing: the caller records the
// VM's host in the same transaction as the VM, or places again.
//
// Create calls it once VMs run on other hosts (the engine over NATS);
// today every VM runs on the local host.
func (s *Service) PlaceVM(ctx context.Context, req scheduler.Request, cfg scheduler.Config) (Host, error) {
	if cfg.MemoryOvercommit == 0 {
		cfg.MemoryOvercommit = s.cfg.MemoryOvercommit
	}
	hcfg := s.hostsConfig()
	rows, err := store.ListHosts(ctx, s.DB)
	if err != nil {
		return Host{}, err
	}
	views := make([]Host, 0, len(rows))
	cands := make([]scheduler.Host, 0, len(rows))
	for _, h := range rows {
		v, err := s.hostView(ctx, s.DB, h, hcfg)
		if err != nil {
			return Host{}, err
		}
		use, err := store.HostUsage(ctx, s.DB, h.ID, h.Local)
		if err != nil {
			return Host{}, err
		}
		views = append(views, v)
		cands = append(cands, scheduler.Host{ID: v.ID, Name: v.Name, Schedulable: v.State == store.HostReady, Why: v.State,
			CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, DiskFreeMiB: v.DiskFreeMiB, UsedCPUs: use.CPUs, UsedMemoryMiB: use.RunningMemoryMiB})
	}
	i, err := scheduler.Schedule(cands, req, cfg)
	if err != nil {
		return Host{}, fmt.Errorf("place vm: %w", err)
	}
	return views[i], nil
}
