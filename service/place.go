package service

import (
	"context"
	"fmt"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/scheduler"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
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
// The local host always counts as heard from (its engine is this
// process's own). Create places through placeCreate, which also skips
// hosts whose engine is not connected.
func (s *Service) PlaceVM(ctx context.Context, req scheduler.Request, cfg scheduler.Config) (Host, error) {
	return s.place(ctx, req, cfg, false)
}

// place is PlaceVM; with connected, another host takes VMs only while its
// engine is connected (SetRemoteEngine), as create needs.
func (s *Service) place(ctx context.Context, req scheduler.Request, cfg scheduler.Config, connected bool) (Host, error) {
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
		if v.Local && v.State == HostUnreachable {
			v.State = store.HostReady // heard or not, its engine is ours
			if h.State == store.HostCordoned {
				v.State = store.HostCordoned
			}
		}
		if v.Local && v.CPUs == 0 {
			// Not heard from yet: ask its engine.
			if c, err := s.Engine.Capacity(ctx); err == nil {
				v.CPUs, v.MemoryMiB, v.DiskFreeMiB = c.CPUs, c.MemoryMiB, c.DiskFreeBytes>>20
			}
		}
		if _, ok := s.remote(v.ID); connected && !v.Local && v.State == store.HostReady && !ok {
			v.State = "not connected"
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

// target is where a create goes: eng nil for this host's engine, else
// host's remote engine.
type target struct {
	host store.Host
	eng  engine.Engine
}

// placeCreate chooses the host of a new VM of this size (pin names one).
// With no host registered (a single host without the cluster) the VM is
// this host's, and a pin is errs.NotFound.
func (s *Service) placeCreate(ctx context.Context, pin string, cpus, memMiB, diskGiB int) (target, error) {
	hosts, err := store.ListHosts(ctx, s.DB)
	if err != nil {
		return target{}, err
	}
	if len(hosts) == 0 {
		if pin != "" {
			return target{}, errs.New(errs.NotFound, "no host named %q: this installation has no cluster", pin)
		}
		return target{}, nil
	}
	cfg := s.cfg.Placement
	if cfg.MemoryOvercommit == 0 {
		cfg.MemoryOvercommit = s.cfg.MemoryOvercommit
	}
	h, err := s.place(ctx, scheduler.Request{CPUs: cpus, MemoryMiB: int64(memMiB), DiskMiB: int64(diskGiB) << 10, Host: pin}, cfg, true)
	if err != nil {
		return target{}, err
	}
	if h.Local {
		return target{}, nil
	}
	row, err := store.GetHostByID(ctx, s.DB, h.ID)
	if err != nil {
		return target{}, err
	}
	e, ok := s.remote(h.ID)
	if !ok {
		return target{}, errs.New(errs.Unavailable, "host %s is not connected to this control plane", h.Name)
	}
	return target{host: row, eng: e}, nil
}
