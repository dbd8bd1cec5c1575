package service

import (
	"context"
	"errors"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// BackupFreezeTimeout bounds how long a running VM's filesystems stay
// frozen (and the VM paused) while its disk is copied for a backup.
const BackupFreezeTimeout = engine.BackupFreezeTimeout

// BackedUpDisk is one VM's disk files copied by BackupDisks.
type BackedUpDisk = engine.BackedUpDisk

// DiskBackuper is an engine that copies its instances' disk files on this
// host (engine.Local).
type DiskBackuper interface {
	BackupDisk(ctx context.Context, id, dir string, progress engine.Progress) (engine.BackedUpDisk, error)
}

// BackupDisks copies the disk of each VM in ids (and its snapshots) into
// dir, laid out as in the state directory (vms/<id>/...). Only an admin may
// do it. A running VM is copied while its filesystems are frozen by the
// guest agent and the VM is paused (the same consistency as a disk
// snapshot); it runs on afterwards, thawed, whatever happens. Each VM is
// locked while it is copied, so no lifecycle operation overlaps it. A paused
// VM's disk is copied as it is (crash-consistent). A VM in ids that no
// longer exists, or is still being created, is skipped. On error, what was copied stays in
// dir for the caller to remove.
func (s *Service) BackupDisks(ctx context.Context, c Caller, ids []string, dir string, progress Progress) ([]BackedUpDisk, error) {
	if err := requireAdmin(c, "back up vm disks"); err != nil {
		return nil, err
	}
	bk, ok := s.Engine.(DiskBackuper)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "the vms' disks are not on this host")
	}
	var out []BackedUpDisk
	for _, id := range ids {
		b, err := bk.BackupDisk(ctx, id, dir, engine.Progress(progress))
		if errors.Is(err, errs.NotFound) {
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, b)
	}
	return out, nil
}
