package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// BackupFreezeTimeout bounds how long a running VM's filesystems stay
// frozen (and the VM paused) while its disk is copied for a backup.
const BackupFreezeTimeout = 2 * time.Minute

// BackedUpDisk is one VM's disk files copied by BackupDisks.
type BackedUpDisk struct {
	VMID string
	Name string
	// Files are the copies, relative to the backup directory:
	// vms/<id>/disk.qcow2 and vms/<id>/snapshots/<snap id>/<file>.
	Files []string
	// Frozen is true when the guest was running and its filesystems were
	// frozen by the agent around the copy.
	Frozen bool
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
	var out []BackedUpDisk
	for _, id := range ids {
		b, err := s.backupDisk(ctx, id, dir, progress)
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

func (s *Service) backupDisk(ctx context.Context, id, dir string, progress Progress) (BackedUpDisk, error) {
	v, err := store.GetVMByID(ctx, s.DB, id)
	if err != nil {
		return BackedUpDisk{}, err
	}
	unlock, err := s.lockVM(ctx, v.ID)
	if err != nil {
		return BackedUpDisk{}, err
	}
	defer unlock()
	if v, err = s.reloadVM(ctx, v); err != nil {
		return BackedUpDisk{}, err
	}
	s.reconcileVM(ctx, &v)
	b := BackedUpDisk{VMID: v.ID, Name: v.Name}
	if v.State == store.StateCreating {
		// Half made: its row restores as lacking a disk.
		return b, nil
	}
	if _, err := os.Stat(s.diskPath(v.ID)); err != nil {
		// Nothing to copy (e.g. a VM itself restored without disks).
		return b, nil
	}
	vmOut := filepath.Join(dir, "vms", v.ID)
	if err := os.MkdirAll(vmOut, 0o700); err != nil {
		return b, err
	}
	progress.say("disk " + v.Name)
	b.Frozen, err = s.copyDiskConsistent(ctx, v, filepath.Join(vmOut, "disk.qcow2"))
	if err != nil {
		return b, fmt.Errorf("back up disk of vm %s: %w", v.Name, err)
	}
	b.Files = append(b.Files, filepath.Join("vms", v.ID, "disk.qcow2"))
	// Snapshots are immutable once published: a plain copy is consistent.
	snaps, err := store.ListSnapshots(ctx, s.DB, v.ID)
	if err != nil {
		return b, err
	}
	for _, sn := range snaps {
		src := s.snapDir(v.ID, sn.ID)
		entries, err := os.ReadDir(src)
		if err != nil {
			return b, fmt.Errorf("back up snapshot %s of vm %s: %w", sn.Name, v.Name, err)
		}
		progress.say("snapshot " + v.Name + "/" + sn.Name)
		dst := filepath.Join(vmOut, "snapshots", sn.ID)
		if err := os.MkdirAll(dst, 0o700); err != nil {
			return b, err
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			if err := s.Disks.Clone(ctx, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return b, fmt.Errorf("back up snapshot %s of vm %s: %w", sn.Name, v.Name, err)
			}
			b.Files = append(b.Files, filepath.Join("vms", v.ID, "snapshots", sn.ID, e.Name()))
		}
	}
	return b, nil
}

// copyDiskConsistent copies v's disk to dst. A running VM is frozen by its
// agent and paused for the copy, bounded by BackupFreezeTimeout, then
// resumed and thawed.
func (s *Service) copyDiskConsistent(ctx context.Context, v store.VM, dst string) (frozen bool, err error) {
	if v.State != store.StateRunning {
		// Stopped, or paused by its owner (QEMU flushed its caches when it
		// paused): the file holds a crash-consistent disk.
		return false, s.Disks.Clone(ctx, s.diskPath(v.ID), dst)
	}
	h, _ := decodeHandle(v.Handle)
	if h == nil {
		return false, errs.New(errs.FailedPrecondition, "vm %s has no hypervisor handle", v.Name)
	}
	if err := vm.Allowed(v.Name, v.State, vm.OpSnapshot); err != nil {
		return false, err
	}
	cl, err := s.agentOf(ctx, v)
	if err != nil {
		return false, err
	}
	defer cl.Close()
	fctx, cancel := context.WithTimeout(ctx, BackupFreezeTimeout)
	defer cancel()
	if _, err := cl.FSFreeze(fctx); err != nil {
		return false, fmt.Errorf("freeze guest filesystems: %w", err)
	}
	defer cl.FSThaw(context.WithoutCancel(ctx))
	if err := s.Driver.Pause(fctx, h); err != nil {
		return true, err
	}
	err = s.Disks.Clone(fctx, s.diskPath(v.ID), dst)
	if rerr := s.Driver.Resume(context.WithoutCancel(ctx), h); err == nil && rerr != nil {
		err = fmt.Errorf("resume: %w", rerr)
	}
	return true, err
}

// haveDisk fails with errs.FailedPrecondition when v has no disk file (a
// VM restored from a backup without disks), instead of booting nothing.
func (s *Service) haveDisk(v store.VM) error {
	if _, err := os.Stat(s.diskPath(v.ID)); err == nil {
		return nil
	}
	why := "its disk is missing"
	if v.Note != "" {
		why = v.Note
	}
	return errs.New(errs.FailedPrecondition, "vm %s cannot start: %s (restore a backup made with --with-disks, or destroy it)", v.Name, why)
}
