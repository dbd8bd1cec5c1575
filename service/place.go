package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

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
	return s.placeExcept(ctx, req, cfg, connected, nil)
}

// placeExcept is place with hosts that skip names a reason for left out.
func (s *Service) placeExcept(ctx context.Context, req scheduler.Request, cfg scheduler.Config, connected bool, skip func(Host) string) (Host, error) {
	h, _, err := s.placeClaim(ctx, req, cfg, connected, skip, nil)
	return h, err
}

// claim names what a placement holds the chosen host's resources for:
// VM vmID, by an operation of kind (store.Claim.Kind).
type claim struct{ vmID, kind string }

// claimTTL bounds how long a claim of a process that is still alive (or
// whose PID was reused) is kept: no placement waits that long for its
// VM's row.
const claimTTL = time.Hour

// placeClaim is placeExcept that, with cl, also records a placement claim
// (store.Claim) for the chosen host in the transaction that read the
// hosts' usage: placements serialise on the store's write lock, and each
// sees what the ones before it admitted, so concurrent placements cannot
// all take the same free vCPUs or memory. Pinned (req.Host) on a host
// where cl.vmID holds a claim already, that claim stands (see
// claimTarget). release drops the claim (a no-op without cl, or when the
// claim was there before); call it once the VM's row is on the host, or
// the operation failed. The claim counts until then, and stops counting
// on its own once the row is on the host.
func (s *Service) placeClaim(ctx context.Context, req scheduler.Request, cfg scheduler.Config, connected bool, skip func(Host) string, cl *claim) (Host, func(), error) {
	if cfg.MemoryOvercommit == 0 {
		cfg.MemoryOvercommit = s.cfg.MemoryOvercommit
	}
	hcfg := s.hostsConfig()
	// The local host's capacity, if it has not been heard from yet, is
	// asked of its engine before the transaction.
	var local *engine.Capacity
	if rows, err := store.ListHosts(ctx, s.DB); err != nil {
		return Host{}, nil, err
	} else {
		for _, h := range rows {
			if h.Local && h.CPUs == 0 {
				if c, err := s.Engine.Capacity(ctx); err == nil {
					local = &c
				}
			}
		}
	}
	var chosen Host
	held := false // cl's claim was there already
	err := s.DB.Tx(ctx, func(q store.Q) error {
		if cl != nil {
			if err := sweepClaims(ctx, q, hcfg.Now()); err != nil {
				return err
			}
		}
		rows, err := store.ListHosts(ctx, q)
		if err != nil {
			return err
		}
		views := make([]Host, 0, len(rows))
		cands := make([]scheduler.Host, 0, len(rows))
		for _, h := range rows {
			v, err := s.hostView(ctx, q, h, hcfg)
			if err != nil {
				return err
			}
			use, err := store.HostUsage(ctx, q, h.ID, h.Local)
			if err != nil {
				return err
			}
			if v.Local && v.State == HostUnreachable {
				v.State = store.HostReady // heard or not, its engine is ours
				if h.State == store.HostCordoned {
					v.State = store.HostCordoned
				}
			}
			if v.Local && v.CPUs == 0 && local != nil {
				// Not heard from yet: its engine's answer.
				v.CPUs, v.MemoryMiB, v.DiskFreeMiB = local.CPUs, local.MemoryMiB, local.DiskFreeBytes>>20
			}
			if _, ok := s.remote(v.ID); connected && !v.Local && v.State == store.HostReady && !ok {
				v.State = "not connected"
			}
			if why := ""; skip != nil {
				if why = skip(v); why != "" {
					v.State = why
				}
			}
			views = append(views, v)
			cands = append(cands, scheduler.Host{ID: v.ID, Name: v.Name, Schedulable: v.State == store.HostReady, Why: v.State,
				CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, DiskFreeMiB: v.DiskFreeMiB, UsedCPUs: use.CPUs, UsedMemoryMiB: use.RunningMemoryMiB})
		}
		if cl != nil && req.Host != "" {
			// Pinned on the host the VM holds a claim on already (a
			// drain's move): that claim stands, counted in the usage.
			if c, ok, err := store.GetClaim(ctx, q, cl.vmID); err != nil {
				return err
			} else if ok {
				for _, v := range views {
					if v.ID == c.HostID && (v.ID == req.Host || v.Name == req.Host) {
						chosen, held = v, true
						return nil
					}
				}
			}
		}
		i, err := scheduler.Schedule(cands, req, cfg)
		if err != nil {
			return fmt.Errorf("place vm: %w", err)
		}
		chosen = views[i]
		if cl == nil {
			return nil
		}
		return store.InsertClaim(ctx, q, store.Claim{VMID: cl.vmID, HostID: chosen.ID, Kind: cl.kind, CPUs: req.CPUs,
			MemoryMiB: req.MemoryMiB, DiskGiB: req.DiskMiB >> 10, PID: os.Getpid(), CreatedAt: hcfg.Now().UTC()})
	})
	if err != nil {
		return Host{}, nil, err
	}
	release := func() {}
	if cl != nil && !held {
		release = func() { s.releaseClaim(ctx, cl.vmID) }
	}
	return chosen, release, nil
}

// claimTarget holds room for VM id (cpus, memMiB, diskGiB) on host to,
// which the caller chose (a move's or a copy's target): a placement
// pinned there, with a claim, so the target's vCPUs, memory and disk are
// checked and claimed as a create's are. A claim id holds on to already
// (a drain placed the move) stands, and release is then a no-op.
// Errors are placeClaim's (errs.ResourceExhausted when to has no room).
func (s *Service) claimTarget(ctx context.Context, to store.Host, id, kind string, cpus, memMiB, diskGiB int) (release func(), err error) {
	_, release, err = s.placeClaim(ctx, scheduler.Request{CPUs: cpus, MemoryMiB: int64(memMiB), DiskMiB: int64(diskGiB) << 10, Host: to.ID},
		s.cfg.Placement, true, nil, &claim{vmID: id, kind: kind})
	if err != nil {
		return func() {}, err
	}
	return release, nil
}

// releaseClaim drops VM id's placement claim (logged, not returned: a
// claim left behind stops counting once the VM's row is on its host, and
// a dead process's is swept).
func (s *Service) releaseClaim(ctx context.Context, id string) {
	err := s.DB.Tx(context.WithoutCancel(ctx), func(q store.Q) error { return store.ReleaseClaim(ctx, q, id) })
	if err != nil {
		s.log.Warn("release placement claim", "vm_id", id, "err", err)
	}
}

// sweepClaims drops the claims of processes that are gone (killed
// mid-create) and those older than claimTTL. A move's claim stays while
// its move is recorded (vm_moves), whatever became of its process: an
// interrupted move's copy on the target (an import, a staged incoming
// VM) holds that room until SettleMoves removes it or finishes the move,
// and deleting the record (store.DeleteMove) drops the claim.
func sweepClaims(ctx context.Context, q store.Q, now time.Time) error {
	cls, err := store.ListClaims(ctx, q)
	if err != nil {
		return err
	}
	moves, err := store.ListMoves(ctx, q)
	if err != nil {
		return err
	}
	movingTo := make(map[string]string, len(moves))
	for _, m := range moves {
		movingTo[m.VMID] = m.ToHost
	}
	for _, c := range cls {
		if now.Sub(c.CreatedAt) < claimTTL && processAlive(c.PID) {
			continue
		}
		if to, ok := movingTo[c.VMID]; ok && c.Kind == store.ClaimMove && to == c.HostID {
			continue
		}
		if err := store.ReleaseClaim(ctx, q, c.VMID); err != nil {
			return err
		}
	}
	return nil
}

// processAlive says whether a process with this PID exists (on this
// host: claims are made by the control plane's processes, which share
// its store).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
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
//
// The host's vCPUs, memory and disk are claimed for VM id (see
// placeClaim) until release, which the caller runs once the create
// ended, whichever way; release is never nil.
func (s *Service) placeCreate(ctx context.Context, id, pin string, cpus, memMiB, diskGiB int) (_ target, release func(), _ error) {
	release = func() {}
	hosts, err := store.ListHosts(ctx, s.DB)
	if err != nil {
		return target{}, release, err
	}
	if len(hosts) == 0 {
		if pin != "" {
			return target{}, release, errs.New(errs.NotFound, "no host named %q: this installation has no cluster", pin)
		}
		return target{}, release, nil
	}
	cfg := s.cfg.Placement
	if cfg.MemoryOvercommit == 0 {
		cfg.MemoryOvercommit = s.cfg.MemoryOvercommit
	}
	h, rel, err := s.placeClaim(ctx, scheduler.Request{CPUs: cpus, MemoryMiB: int64(memMiB), DiskMiB: int64(diskGiB) << 10, Host: pin}, cfg, true, nil,
		&claim{vmID: id, kind: "create"})
	if err != nil {
		return target{}, release, err
	}
	if h.Local {
		return target{}, rel, nil
	}
	row, err := store.GetHostByID(ctx, s.DB, h.ID)
	if err != nil {
		rel()
		return target{}, release, err
	}
	e, ok := s.remote(h.ID)
	if !ok {
		rel()
		return target{}, release, errs.New(errs.Unavailable, "host %s is not connected to this control plane", h.Name)
	}
	return target{host: row, eng: e}, rel, nil
}

// claimOnHostOf holds room for VM id (cpus, memMiB, diskGiB), made by an
// operation of kind on the host of VM src (a copy or a fork on the
// source's own host): the host's vCPUs, memory and disk are checked and
// claimed as a create pinned there is (claimTarget), so concurrent
// copies and forks cannot all take the same free room. Without a
// cluster (no host registered) nothing is placed, as for a create.
// release is never nil.
func (s *Service) claimOnHostOf(ctx context.Context, src store.VM, id, kind string, cpus, memMiB, diskGiB int) (release func(), err error) {
	hosts, err := store.ListHosts(ctx, s.DB)
	if err != nil || len(hosts) == 0 {
		return func() {}, err
	}
	h, err := s.vmHost(ctx, src)
	if err != nil {
		return func() {}, err
	}
	if h.ID == "" {
		return func() {}, nil // the local host has no row: nothing to claim against
	}
	return s.claimTarget(ctx, h, id, kind, cpus, memMiB, diskGiB)
}
