package service

import (
	"context"
	"fmt"
	"strconv"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
)

// Resource limits: per-user quotas and the host's memory capacity.
//
// Quotas count what a user's VMs are given (vCPUs, memory, provisioned disk
// size), whether they run or not, plus the bytes their snapshots take on
// the host's disk, which count against the disk quota: snapshots are
// files on the same disk as the VMs' own, and a memory snapshot holds a
// copy of the guest's RAM, so a per-VM count alone would let a user fill
// the host with max_vms × MaxSnapshots copies.
//
// Host capacity counts memory only, over every user: the memory of every VM
// that is not stopped (creating, running, paused, or in error with a
// process that may still hold memory) plus stopped VMs being started, must
// stay within MemTotal × MemoryOvercommit. A stopped VM holds no memory, so
// it is not counted; it is checked again when it starts (like a scheduler
// that places allocated machines, not parked ones). Each check runs in the
// same transaction as the row change that claims the memory (the new VM's
// row, or the start operation's row), and transactions take the write lock
// at once, so concurrent creates and starts, from this or another
// process, cannot both take the last of it.
//
// In a cluster, placement (place.go) also checks each host's vCPUs
// (cpu_overcommit) and memory as its heartbeat reports them, and claims
// what it admits in the same transaction (store.Claim, counted by
// HostUsage and AllocatedMemoryMiB until the VM's row is on the host):
// creates, copies onto another host, moves and drains.

// DefaultSignupQuota is the quota a new non-admin user gets when the
// configuration does not say otherwise (daemon config [default_quota]).
var DefaultSignupQuota = Quota{MaxVMs: 5, MaxCPUs: 8, MaxMemoryMiB: 8192, MaxDiskGiB: 50}

// DefaultMemoryOvercommit is Config.MemoryOvercommit's default.
const DefaultMemoryOvercommit = 1.5

// applyDefaultQuota gives a new user the configured default quota unless
// they are an admin (admins are not limited).
func (s *Service) applyDefaultQuota(u *store.User) {
	if u.Admin {
		return
	}
	q := s.cfg.DefaultQuota
	u.MaxVMs, u.MaxCPUs, u.MaxMemoryMiB, u.MaxDiskGiB = q.MaxVMs, q.MaxCPUs, q.MaxMemoryMiB, q.MaxDiskGiB
}

// checkQuota fails with errs.ResourceExhausted when adding a VM of the given
// size would take the user over a quota. Snapshot bytes count against the
// disk quota. It runs in the transaction that records the change.
func (s *Service) checkQuota(ctx context.Context, q store.Q, userID string, cpus, memMiB, diskGiB int) error {
	return s.checkQuotaN(ctx, q, userID, 1, cpus, memMiB, diskGiB)
}

// checkQuotaN is checkQuota for adding vms VMs (0 when growing one) and
// the given amounts; amounts that do not grow are not checked.
func (s *Service) checkQuotaN(ctx context.Context, q store.Q, userID string, vms, cpus, memMiB, diskGiB int) error {
	u, err := store.GetUserByID(ctx, q, userID)
	if err != nil {
		return err
	}
	use, err := store.UserUsage(ctx, q, userID)
	if err != nil {
		return err
	}
	switch {
	case u.MaxVMs > 0 && vms > 0 && use.VMs+vms > u.MaxVMs:
		return errs.New(errs.ResourceExhausted, "quota: user %s may have at most %d vms (has %d)", u.Name, u.MaxVMs, use.VMs)
	case u.MaxCPUs > 0 && cpus > 0 && use.CPUs+cpus > u.MaxCPUs:
		return errs.New(errs.ResourceExhausted, "quota: user %s may use at most %d vcpus (uses %d, asked for %d)", u.Name, u.MaxCPUs, use.CPUs, cpus)
	case u.MaxMemoryMiB > 0 && memMiB > 0 && use.MemoryMiB+memMiB > u.MaxMemoryMiB:
		return errs.New(errs.ResourceExhausted, "quota: user %s may use at most %d MiB of memory (uses %d, asked for %d)", u.Name, u.MaxMemoryMiB, use.MemoryMiB, memMiB)
	}
	if u.MaxDiskGiB > 0 && diskGiB > 0 {
		snaps, err := store.UserSnapshotBytes(ctx, q, userID)
		if err != nil {
			return err
		}
		if int64(use.DiskGiB+diskGiB)<<30+snaps > int64(u.MaxDiskGiB)<<30 {
			return errs.New(errs.ResourceExhausted, "quota: user %s may use at most %d GiB of disk (uses %d GiB for vms and %s for snapshots, asked for %d GiB)",
				u.Name, u.MaxDiskGiB, use.DiskGiB, gib(snaps), diskGiB)
		}
	}
	return nil
}

// checkSnapshotQuota fails with errs.ResourceExhausted when adding a
// snapshot of about size bytes would take the owner over their disk quota.
func (s *Service) checkSnapshotQuota(ctx context.Context, q store.Q, userID string, size int64) error {
	u, err := store.GetUserByID(ctx, q, userID)
	if err != nil || u.MaxDiskGiB == 0 {
		return err
	}
	use, err := store.UserUsage(ctx, q, userID)
	if err != nil {
		return err
	}
	snaps, err := store.UserSnapshotBytes(ctx, q, userID)
	if err != nil {
		return err
	}
	if int64(use.DiskGiB)<<30+snaps+size > int64(u.MaxDiskGiB)<<30 {
		return errs.New(errs.ResourceExhausted, "quota: user %s may use at most %d GiB of disk (uses %d GiB for vms and %s for snapshots; this snapshot needs about %s): delete snapshots first",
			u.Name, u.MaxDiskGiB, use.DiskGiB, gib(snaps), gib(size))
	}
	return nil
}

// gib formats a byte count in GiB with one decimal.
func gib(n int64) string { return strconv.FormatFloat(float64(n)/(1<<30), 'f', 1, 64) + " GiB" }

// checkHostMemory fails with errs.ResourceExhausted when giving memMiB more
// to VM id (which is not yet counted) would allocate more than the host's
// memory times the overcommit ratio. It runs in the transaction that
// claims the memory.
func (s *Service) checkHostMemory(ctx context.Context, q store.Q, id string, memMiB int) error {
	total, err := s.cfg.HostMemory()
	if err != nil {
		return fmt.Errorf("host memory: %w", err)
	}
	used, err := store.AllocatedMemoryMiB(ctx, q, id)
	if err != nil {
		return err
	}
	allowed := int64(float64(total) * s.cfg.MemoryOvercommit)
	if want := (used + int64(memMiB)) << 20; want > allowed {
		return errs.New(errs.ResourceExhausted, "not enough host memory: %s of %s allowed (host %s × overcommit %g) would be allocated",
			gib(want), gib(allowed), gib(total), s.cfg.MemoryOvercommit)
	}
	return nil
}

// checkFitsHost fails with errs.ResourceExhausted when a VM of memMiB could
// never run on this host, whatever else runs (for resizing a stopped VM).
func (s *Service) checkFitsHost(memMiB int) error {
	total, err := s.cfg.HostMemory()
	if err != nil {
		return fmt.Errorf("host memory: %w", err)
	}
	allowed := int64(float64(total) * s.cfg.MemoryOvercommit)
	if want := int64(memMiB) << 20; want > allowed {
		return errs.New(errs.ResourceExhausted, "not enough host memory: %s is more than the %s allowed (host %s × overcommit %g)",
			gib(want), gib(allowed), gib(total), s.cfg.MemoryOvercommit)
	}
	return nil
}

// MemTotal reads the host's physical memory in bytes from /proc/meminfo.
func MemTotal() (int64, error) { return engine.MemTotal() }
