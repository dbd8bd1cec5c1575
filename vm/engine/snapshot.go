package engine

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/vsockcli"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/disk"
)

func (l *Local) snapDir(vmID, snapID string) string {
	return filepath.Join(l.vmDir(vmID), "snapshots", snapID)
}

func snapInfo(s store.Snapshot) SnapshotInfo {
	return SnapshotInfo{ID: s.ID, Name: s.Name, Memory: s.Memory, SizeBytes: s.SizeBytes, CreatedAt: s.CreatedAt}
}

// Snapshot implements Engine.
func (l *Local) Snapshot(ctx context.Context, id string, spec SnapshotSpec, progress Progress) (SnapshotInfo, error) {
	if err := vm.ValidSnapshotName(spec.Name); err != nil {
		return SnapshotInfo{}, err
	}
	var out SnapshotInfo
	err := l.withOp(ctx, id, vm.OpSnapshot, func(v store.VM) error {
		if spec.Memory && v.State != vm.Running {
			return errs.New(errs.FailedPrecondition, "a memory snapshot needs a running vm; %s is %s", v.Name, v.State)
		}
		if spec.Memory && !l.Driver.Caps().MemorySnapshot {
			return errs.New(errs.FailedPrecondition, "the %s driver cannot save memory", l.Driver.Name())
		}
		existing, err := store.ListSnapshots(ctx, l.DB, v.ID)
		if err != nil {
			return err
		}
		for _, e := range existing {
			if e.Name == spec.Name {
				return errs.New(errs.AlreadyExists, "vm %s already has a snapshot named %q", v.Name, spec.Name)
			}
		}
		info, err := disk.Info(ctx, l.diskPath(v.ID))
		if err != nil {
			return err
		}
		estimate := info.ActualSize + int64(v.MemoryMiB)<<20*boolInt(spec.Memory)
		adm := Admission{Kind: AdmitSnapshot, ID: v.ID, Name: v.Name, Owner: v.OwnerID, SnapshotBytes: estimate}
		if err := l.admitOK(ctx, l.DB, adm); err != nil {
			return err
		}
		need := estimate + 64<<20
		if free, err := disk.FreeBytes(l.vmDir(v.ID)); err == nil && free < need {
			return errs.New(errs.ResourceExhausted, "snapshot vm %s: no space left on the state filesystem (%s): %d MiB free, about %d MiB needed: free space and retry", v.Name, l.cfg.StateDir, free>>20, need>>20)
		}
		o, err := l.beginOp(ctx, v.ID, "snapshot")
		if err != nil {
			return err
		}
		snap := store.Snapshot{ID: vm.NewID(), VMID: v.ID, Name: spec.Name, Memory: spec.Memory, CreatedAt: time.Now().UTC()}
		final := l.snapDir(v.ID, snap.ID)
		tmp := final + ".tmp-" + o.row.ID
		err = l.captureSnapshot(ctx, o, v, tmp, spec.Memory, progress)
		if err == nil {
			snap.SizeBytes = dirSize(tmp)
			if err = os.Rename(tmp, final); err == nil {
				// The real size is admitted in the transaction that
				// records it.
				err = l.DB.Tx(ctx, func(q store.Q) error {
					adm.SnapshotBytes = snap.SizeBytes
					if err := l.admitOK(ctx, q, adm); err != nil {
						return err
					}
					return store.InsertSnapshot(ctx, q, snap)
				})
				if err != nil {
					os.RemoveAll(final)
				}
			}
		}
		if err != nil {
			err = l.diskFull(err)
			os.RemoveAll(tmp)
			os.Remove(filepath.Dir(tmp)) // the snapshots directory, only if now empty
			o.finish(ctx, err)
			return fmt.Errorf("snapshot vm %s: %w", v.Name, err)
		}
		o.finish(ctx, nil)
		out = snapInfo(snap)
		return nil
	})
	return out, err
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// captureSnapshot writes the snapshot files into dir.
func (l *Local) captureSnapshot(ctx context.Context, o *op, v store.VM, dir string, memory bool, progress Progress) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if v.State != vm.Running {
		progress.Say("copy disk")
		return l.Disks.Clone(ctx, l.diskPath(v.ID), filepath.Join(dir, "disk.qcow2"))
	}
	h, _ := DecodeHandle(v.Handle)
	if h == nil {
		return errs.New(errs.FailedPrecondition, "vm %s has no hypervisor handle", v.Name)
	}
	if memory {
		// Memory and disk are saved at the same paused instant: the guest's
		// page cache travels in the memory image, so no freeze is needed.
		progress.Say("save memory")
		o.step(ctx, "save memory", nil)
		// The agent trusts the snapshot's own key too for the save, so
		// the snapshot can move with its memory (snapshot_move.go).
		defer l.keySnapshot(ctx, v, dir)()
		if err := l.Driver.SaveState(ctx, h, filepath.Join(dir, snapMemDir)); err != nil {
			l.Driver.Resume(context.WithoutCancel(ctx), h)
			return err
		}
	} else {
		// Freeze the guest's filesystems so what is on disk is consistent,
		// then pause the VM (which flushes QEMU's own caches to the file).
		progress.Say("freeze")
		o.step(ctx, "freeze", nil)
		cl, err := l.agentOf(ctx, v)
		if err != nil {
			return err
		}
		defer cl.Close()
		if _, err := cl.FSFreeze(ctx); err != nil {
			return fmt.Errorf("freeze guest filesystems: %w", err)
		}
		defer cl.FSThaw(context.WithoutCancel(ctx))
		if err := l.Driver.Pause(ctx, h); err != nil {
			return err
		}
	}
	progress.Say("copy disk")
	o.step(ctx, "copy disk", nil)
	err := l.Disks.Clone(ctx, l.diskPath(v.ID), filepath.Join(dir, "disk.qcow2"))
	if rerr := l.Driver.Resume(context.WithoutCancel(ctx), h); err == nil && rerr != nil {
		err = fmt.Errorf("resume: %w", rerr)
	}
	return err
}

func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			if st, ok := info.Sys().(interface{ Blocks() int64 }); ok {
				n += st.Blocks() * 512
			} else {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// Snapshots implements Engine.
func (l *Local) Snapshots(ctx context.Context, id string) ([]SnapshotInfo, error) {
	v, err := l.load(ctx, id)
	if err != nil {
		return nil, err
	}
	rows, err := store.ListSnapshots(ctx, l.DB, v.ID)
	if err != nil {
		return nil, err
	}
	out := []SnapshotInfo{}
	for _, r := range rows {
		out = append(out, snapInfo(r))
	}
	return out, nil
}

// DeleteSnapshot implements Engine.
func (l *Local) DeleteSnapshot(ctx context.Context, id, snapName string) error {
	return l.withOp(ctx, id, vm.OpRename, func(v store.VM) error {
		snap, err := store.GetSnapshot(ctx, l.DB, v.ID, snapName)
		if err != nil {
			return errs.New(errs.NotFound, "vm %s has no snapshot named %q", v.Name, snapName)
		}
		if err := store.DeleteSnapshot(ctx, l.DB, snap.ID); err != nil {
			return err
		}
		return os.RemoveAll(l.snapDir(v.ID, snap.ID))
	})
}

// RestoreSnapshot implements Engine.
func (l *Local) RestoreSnapshot(ctx context.Context, id, snapName string, progress Progress) (Instance, error) {
	var out Instance
	err := l.withOp(ctx, id, vm.OpRestore, func(v store.VM) error {
		snap, err := store.GetSnapshot(ctx, l.DB, v.ID, snapName)
		if err != nil {
			return errs.New(errs.NotFound, "vm %s has no snapshot named %q", v.Name, snapName)
		}
		// Restoring memory starts a stopped VM: that claims host memory.
		begin := l.beginOp
		if snap.Memory {
			begin = func(ctx context.Context, _, kind string) (*op, error) { return l.beginStartOp(ctx, v, kind) }
		}
		o, err := begin(ctx, v.ID, "restore")
		if err != nil {
			return fmt.Errorf("restore vm %s to %s: %w", v.Name, snapName, err)
		}
		v, err = l.restore(ctx, o, v, snap, progress)
		o.finish(ctx, err)
		if err != nil {
			return fmt.Errorf("restore vm %s to %s: %w", v.Name, snapName, err)
		}
		out = InstanceOf(v)
		return nil
	})
	return out, err
}

func (l *Local) restore(ctx context.Context, o *op, v store.VM, snap store.Snapshot, progress Progress) (store.VM, error) {
	wasRunning := v.State == vm.Running || v.State == vm.Paused
	dir := l.snapDir(v.ID, snap.ID)
	progress.Say("prepare disk")
	o.step(ctx, "prepare disk", nil)
	tmp := l.diskPath(v.ID) + ".tmp-" + o.row.ID
	if err := l.Disks.Clone(ctx, filepath.Join(dir, "disk.qcow2"), tmp); err != nil {
		os.Remove(tmp)
		return v, err
	}
	// From here the old state is given up.
	if wasRunning {
		progress.Say("stop")
		o.step(ctx, "stop", nil)
		h, _ := DecodeHandle(v.Handle)
		if h != nil {
			l.Driver.Kill(ctx, h)
		}
		var err error
		if v, err = l.markStopped(ctx, v); err != nil {
			os.Remove(tmp)
			return v, err
		}
	}
	if err := os.Rename(tmp, l.diskPath(v.ID)); err != nil {
		os.Remove(tmp)
		return v, err
	}
	if !wasRunning && !snap.Memory {
		return v, nil
	}
	if snap.Memory && l.snapshotMoved(dir) {
		return l.resumeMovedSnapshot(ctx, o, v, dir, progress)
	}
	if snap.Memory {
		nv, err := l.resumeMemory(ctx, o, v, filepath.Join(dir, snapMemDir), progress)
		if err == nil && fileExists(filepath.Join(dir, snapKeyFile)) {
			// The saved agent trusts the snapshot's own key too: no more.
			if kerr := l.setAgentKeys(ctx, nv, l.hostKeyLine()); kerr != nil {
				l.log.Warn("restore: agent host keys", "vm_id", v.ID, "err", kerr)
			}
		}
		return nv, err
	}
	nv, cl, err := l.boot(ctx, o, v, progress)
	if err != nil {
		return v, err
	}
	cl.Close()
	return nv, nil
}

// resumeMemory starts VM v from saved memory state and waits for its agent.
func (l *Local) resumeMemory(ctx context.Context, o *op, row store.VM, stateDir string, progress Progress) (store.VM, error) {
	var u undo
	defer u.run()
	img, err := l.Images.Resolve(ctx, row.Image)
	if err != nil {
		return row, err
	}
	ip, err := netip.ParseAddr(row.IP)
	if err != nil {
		return row, err
	}
	progress.Say("network")
	tap := tapName(row.ID)
	if err := l.Network.AddPort(ctx, tap, ip, row.MAC); err != nil {
		return row, err
	}
	u.push(func() { l.Network.RemovePort(context.Background(), tap) })
	run := l.runDir(row.ID)
	os.RemoveAll(run)
	if err := os.MkdirAll(run, 0o700); err != nil {
		return row, err
	}
	u.push(func() { os.RemoveAll(run) })
	progress.Say("restore memory")
	o.step(ctx, "restore memory", nil)
	h, err := l.Driver.Restore(ctx, l.spec(row, img, run, ip), stateDir)
	if err != nil {
		return row, err
	}
	u.push(func() { l.Driver.Kill(context.Background(), h) })
	row.Handle = EncodeHandle(h)
	progress.Say("agent")
	wctx, cancel := context.WithTimeout(ctx, l.cfg.ReadyTimeout)
	defer cancel()
	cl, err := vsockcli.WaitReady(wctx, h.Agent, l.agentConfig(row.AgentKey, nil))
	if err != nil {
		return row, l.notReady(row.Name, row.ID, err)
	}
	// The guest slept through the time it spent on disk: step its clock.
	now := time.Now().UnixNano()
	if err := cl.Configure(ctx, proto.Configure{TimeUnixNano: &now}); err != nil {
		l.log.Warn("step guest clock after restore", "vm_id", row.ID, "err", err)
	}
	cl.Close()
	row.State = vm.Running
	row.StartedAt = time.Now().UTC()
	if err := store.UpdateVM(ctx, l.DB, row); err != nil {
		return row, err
	}
	u = nil
	return row, nil
}
