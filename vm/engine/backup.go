package engine

import (
	"context"
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

// BackedUpDisk is one VM's disk files copied by BackupDisk.
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

// BackupDisk copies the disk of instance id (and its snapshots) into
// dir, laid out as in the state directory (vms/<id>/...). A running VM is
// copied while its filesystems are frozen by the guest agent and the VM is
// paused (the same consistency as a disk snapshot); it runs on afterwards,
// thawed, whatever happens. The VM is locked while it is copied. A paused
// VM's disk is copied as it is (crash-consistent). An instance still being
// created gives an empty BackedUpDisk; a missing one errs.NotFound. On
// error, what was copied stays in dir for the caller to remove. It is a
// host-side operation, not part of Engine.
func (l *Local) BackupDisk(ctx context.Context, id, dir string, progress Progress) (BackedUpDisk, error) {
	v, err := store.GetLocalVMByID(ctx, l.DB, id)
	if err != nil {
		return BackedUpDisk{}, err
	}
	unlock, err := l.lockVM(ctx, v.ID)
	if err != nil {
		return BackedUpDisk{}, err
	}
	defer unlock()
	if v, err = l.load(ctx, v.ID); err != nil {
		return BackedUpDisk{}, err
	}
	l.reconcileVM(ctx, &v)
	b := BackedUpDisk{VMID: v.ID, Name: v.Name}
	if v.State == vm.Creating {
		// Half made: its row restores as lacking a disk.
		return b, nil
	}
	if _, err := os.Stat(l.diskPath(v.ID)); err != nil {
		// Nothing to copy (e.g. a VM itself restored without disks).
		return b, nil
	}
	vmOut := filepath.Join(dir, "vms", v.ID)
	if err := os.MkdirAll(vmOut, 0o700); err != nil {
		return b, err
	}
	progress.Say("disk " + v.Name)
	b.Frozen, err = l.copyDiskConsistent(ctx, v, filepath.Join(vmOut, "disk.qcow2"))
	if err != nil {
		return b, fmt.Errorf("back up disk of vm %s: %w", v.Name, err)
	}
	b.Files = append(b.Files, filepath.Join("vms", v.ID, "disk.qcow2"))
	// Snapshots are immutable once published: a plain copy is consistent.
	snaps, err := store.ListSnapshots(ctx, l.DB, v.ID)
	if err != nil {
		return b, err
	}
	for _, sn := range snaps {
		src := l.snapDir(v.ID, sn.ID)
		entries, err := os.ReadDir(src)
		if err != nil {
			return b, fmt.Errorf("back up snapshot %s of vm %s: %w", sn.Name, v.Name, err)
		}
		progress.Say("snapshot " + v.Name + "/" + sn.Name)
		dst := filepath.Join(vmOut, "snapshots", sn.ID)
		if err := os.MkdirAll(dst, 0o700); err != nil {
			return b, err
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			if err := l.Disks.Clone(ctx, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
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
func (l *Local) copyDiskConsistent(ctx context.Context, v store.VM, dst string) (frozen bool, err error) {
	if v.State != vm.Running {
		// Stopped, or paused by its owner (QEMU flushed its caches when it
		// paused): the file holds a crash-consistent disk.
		return false, l.Disks.Clone(ctx, l.diskPath(v.ID), dst)
	}
	h, _ := DecodeHandle(v.Handle)
	if h == nil {
		return false, errs.New(errs.FailedPrecondition, "vm %s has no hypervisor handle", v.Name)
	}
	if err := vm.Allowed(v.Name, v.State, vm.OpSnapshot); err != nil {
		return false, err
	}
	cl, err := l.agentOf(ctx, v)
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
	if err := l.Driver.Pause(fctx, h); err != nil {
		return true, err
	}
	err = l.Disks.Clone(fctx, l.diskPath(v.ID), dst)
	if rerr := l.Driver.Resume(context.WithoutCancel(ctx), h); err == nil && rerr != nil {
		err = fmt.Errorf("resume: %w", rerr)
	}
	return true, err
}
