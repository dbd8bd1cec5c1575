package service

import (
	"context"

	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
)

// admit is the admission policy the service gives the engine: per-user
// quotas and the host's memory overcommit, checked in the transaction
// that claims the resources.
func (s *Service) admit(ctx context.Context, q store.Q, a engine.Admission) error {
	switch a.Kind {
	case engine.AdmitCreate:
		if err := s.checkQuota(ctx, q, a.Owner, a.Want.CPUs, a.Want.MemoryMiB, a.Want.DiskGiB); err != nil {
			return err
		}
		return s.checkHostMemory(ctx, q, a.ID, a.Want.MemoryMiB)
	case engine.AdmitStart:
		return s.checkHostMemory(ctx, q, a.ID, a.Want.MemoryMiB)
	case engine.AdmitResize:
		// Quota counts the growth only; the VM is stopped, so it need
		// only fit the host on its own (start checks the rest).
		if err := s.checkQuotaN(ctx, q, a.Owner, 0, a.Want.CPUs-a.Was.CPUs, a.Want.MemoryMiB-a.Was.MemoryMiB, a.Want.DiskGiB-a.Was.DiskGiB); err != nil {
			return err
		}
		if a.Want.MemoryMiB > a.Was.MemoryMiB {
			return s.checkFitsHost(a.Want.MemoryMiB)
		}
		return nil
	case engine.AdmitSnapshot:
		return s.checkSnapshotQuota(ctx, q, a.Owner, a.SnapshotBytes)
	}
	return nil
}
