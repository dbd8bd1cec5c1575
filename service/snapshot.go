package service

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

// Snapshot is the public view of a snapshot.
type Snapshot struct {
	Name      string    `json:"name"`
	VM        string    `json:"vm"`
	Memory    bool      `json:"memory"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
}

func snapView(vmName string, s store.Snapshot) Snapshot {
	return Snapshot{Name: s.Name, VM: vmName, Memory: s.Memory, SizeBytes: s.SizeBytes, CreatedAt: s.CreatedAt}
}

func (s *Service) snapDir(vmID, snapID string) string {
	return filepath.Join(s.vmDir(vmID), "snapshots", snapID)
}

// SnapshotRequest asks for a snapshot.
type SnapshotRequest struct {
	Name   string `json:"name,omitempty"`   // default: UTC timestamp
	Memory bool   `json:"memory,omitempty"` // also save the running VM's memory
}

// CreateSnapshot captures a VM's disk (and with Memory, its running
// state). A running VM's filesystems are frozen by the agent and the VM is
// paused only while its copy-on-write delta is copied, so the cost follows
// what the VM wrote, not the image size.
func (s *Service) CreateSnapshot(ctx context.Context, c Caller, name string, req SnapshotRequest, progress Progress) (Snapshot, error) {
	if req.Name == "" {
		req.Name = vm.DefaultSnapshotName(time.Now().UTC())
	}
	if err := vm.ValidSnapshotName(req.Name); err != nil {
		return Snapshot{}, err
	}
	var out Snapshot
	err := s.withVM(ctx, c, name, vm.OpSnapshot, func(v store.VM) error {
		if req.Memory && v.State != store.StateRunning {
			return errs.New(errs.FailedPrecondition, "a memory snapshot needs a running vm; %s is %s", v.Name, v.State)
		}
		if req.Memory && !s.Driver.Caps().MemorySnapshot {
			return errs.New(errs.FailedPrecondition, "the %s driver cannot save memory", s.Driver.Name())
		}
		existing, err := store.ListSnapshots(ctx, s.DB, v.ID)
		if err != nil {
			return err
		}
		for _, e := range existing {
			if e.Name == req.Name {
				return errs.New(errs.AlreadyExists, "vm %s already has a snapshot named %q", v.Name, req.Name)
			}
		}
		if len(existing) >= s.cfg.MaxSnapshots {
			return errs.New(errs.ResourceExhausted, "vm %s has %d snapshots, the most allowed: delete one first", v.Name, len(existing))
		}
		info, err := disk.Info(ctx, s.diskPath(v.ID))
		if err != nil {
			return err
		}
		estimate := info.ActualSize + int64(v.MemoryMiB)<<20*boolInt(req.Memory)
		if err := s.checkSnapshotQuota(ctx, s.DB, v.OwnerID, estimate); err != nil {
			return err
		}
		need := estimate + 64<<20
		if free, err := disk.FreeBytes(s.vmDir(v.ID)); err == nil && free < need {
			return errs.New(errs.ResourceExhausted, "snapshot vm %s: no space left on the state filesystem (%s): %d MiB free, about %d MiB needed: free space and retry", v.Name, s.cfg.StateDir, free>>20, need>>20)
		}
		o, err := s.beginOp(ctx, v.ID, "snapshot")
		if err != nil {
			return err
		}
		snap := store.Snapshot{ID: vm.NewID(), VMID: v.ID, Name: req.Name, Memory: req.Memory, CreatedAt: time.Now().UTC()}
		final := s.snapDir(v.ID, snap.ID)
		tmp := final + ".tmp-" + o.row.ID
		err = s.captureSnapshot(ctx, o, v, tmp, req.Memory, progress)
		if err == nil {
			snap.SizeBytes = dirSize(tmp)
			if err = os.Rename(tmp, final); err == nil {
				// The real size is checked against the quota in the
				// transaction that records it.
				err = s.DB.Tx(ctx, func(q store.Q) error {
					if err := s.checkSnapshotQuota(ctx, q, v.OwnerID, snap.SizeBytes); err != nil {
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
			err = s.diskFull(err)
			os.RemoveAll(tmp)
			os.Remove(filepath.Dir(tmp)) // the snapshots directory, only if now empty
			o.finish(ctx, err)
			return fmt.Errorf("snapshot vm %s: %w", v.Name, err)
		}
		o.finish(ctx, nil)
		out = snapView(v.Name, snap)
		s.record(ctx, c.Name, v, EventSnapshot, "snapshot "+snap.Name)
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
func (s *Service) captureSnapshot(ctx context.Context, o *op, v store.VM, dir string, memory bool, progress Progress) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if v.State != store.StateRunning {
		progress.say("copy disk")
		return s.Disks.Clone(ctx, s.diskPath(v.ID), filepath.Join(dir, "disk.qcow2"))
	}
	h, _ := decodeHandle(v.Handle)
	if h == nil {
		return errs.New(errs.FailedPrecondition, "vm %s has no hypervisor handle", v.Name)
	}
	if memory {
		// Memory and disk are saved at the same paused instant: the guest's
		// page cache travels in the memory image, so no freeze is needed.
		progress.say("save memory")
		o.step(ctx, "save memory", nil)
		if err := s.Driver.SaveState(ctx, h, filepath.Join(dir, "memory")); err != nil {
			s.Driver.Resume(context.WithoutCancel(ctx), h)
			return err
		}
	} else {
		// Freeze the guest's filesystems so what is on disk is consistent,
		// then pause the VM (which flushes QEMU's own caches to the file).
		progress.say("freeze")
		o.step(ctx, "freeze", nil)
		cl, err := s.agentOf(ctx, v)
		if err != nil {
			return err
		}
		defer cl.Close()
		if _, err := cl.FSFreeze(ctx); err != nil {
			return fmt.Errorf("freeze guest filesystems: %w", err)
		}
		defer cl.FSThaw(context.WithoutCancel(ctx))
		if err := s.Driver.Pause(ctx, h); err != nil {
			return err
		}
	}
	progress.say("copy disk")
	o.step(ctx, "copy disk", nil)
	err := s.Disks.Clone(ctx, s.diskPath(v.ID), filepath.Join(dir, "disk.qcow2"))
	if rerr := s.Driver.Resume(context.WithoutCancel(ctx), h); err == nil && rerr != nil {
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

// ListSnapshots lists a VM's snapshots, oldest first.
func (s *Service) ListSnapshots(ctx context.Context, c Caller, name string) ([]Snapshot, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return nil, err
	}
	rows, err := store.ListSnapshots(ctx, s.DB, v.ID)
	if err != nil {
		return nil, err
	}
	out := []Snapshot{}
	for _, r := range rows {
		out = append(out, snapView(v.Name, r))
	}
	return out, nil
}

// DeleteSnapshot removes a snapshot and its files.
func (s *Service) DeleteSnapshot(ctx context.Context, c Caller, name, snapName string) error {
	return s.withVM(ctx, c, name, vm.OpRename, func(v store.VM) error {
		snap, err := store.GetSnapshot(ctx, s.DB, v.ID, snapName)
		if err != nil {
			return errs.New(errs.NotFound, "vm %s has no snapshot named %q", v.Name, snapName)
		}
		if err := store.DeleteSnapshot(ctx, s.DB, snap.ID); err != nil {
			return err
		}
		return os.RemoveAll(s.snapDir(v.ID, snap.ID))
	})
}

// RestoreSnapshot puts a VM back to a snapshot, destroying what it has
// now. The new disk is prepared beside the old one and swapped in with a
// rename, so a failure leaves the VM as it was. A VM that was running runs
// again afterwards (resuming the saved processes for a memory snapshot).
func (s *Service) RestoreSnapshot(ctx context.Context, c Caller, name, snapName string, progress Progress) (VM, error) {
	var out VM
	err := s.withVM(ctx, c, name, vm.OpRestore, func(v store.VM) error {
		snap, err := store.GetSnapshot(ctx, s.DB, v.ID, snapName)
		if err != nil {
			return errs.New(errs.NotFound, "vm %s has no snapshot named %q", v.Name, snapName)
		}
		// Restoring memory starts a stopped VM: that claims host memory.
		begin := s.beginOp
		if snap.Memory {
			begin = func(ctx context.Context, _, kind string) (*op, error) { return s.beginStartOp(ctx, v, kind) }
		}
		o, err := begin(ctx, v.ID, "restore")
		if err != nil {
			return fmt.Errorf("restore vm %s to %s: %w", name, snapName, err)
		}
		v, err = s.restore(ctx, o, v, snap, progress)
		o.finish(ctx, err)
		if err != nil {
			return fmt.Errorf("restore vm %s to %s: %w", name, snapName, err)
		}
		out = view(v)
		s.record(ctx, c.Name, v, EventRestore, "to snapshot "+snapName)
		return nil
	})
	return out, err
}

func (s *Service) restore(ctx context.Context, o *op, v store.VM, snap store.Snapshot, progress Progress) (store.VM, error) {
	wasRunning := v.State == store.StateRunning || v.State == store.StatePaused
	dir := s.snapDir(v.ID, snap.ID)
	progress.say("prepare disk")
	o.step(ctx, "prepare disk", nil)
	tmp := s.diskPath(v.ID) + ".tmp-" + o.row.ID
	if err := s.Disks.Clone(ctx, filepath.Join(dir, "disk.qcow2"), tmp); err != nil {
		os.Remove(tmp)
		return v, err
	}
	// From here the old state is given up.
	if wasRunning {
		progress.say("stop")
		o.step(ctx, "stop", nil)
		h, _ := decodeHandle(v.Handle)
		if h != nil {
			s.Driver.Kill(ctx, h)
		}
		var err error
		if v, err = s.markStopped(ctx, v); err != nil {
			os.Remove(tmp)
			return v, err
		}
	}
	if err := os.Rename(tmp, s.diskPath(v.ID)); err != nil {
		os.Remove(tmp)
		return v, err
	}
	if !wasRunning && !snap.Memory {
		return v, nil
	}
	if snap.Memory {
		return s.resumeMemory(ctx, o, v, filepath.Join(dir, "memory"), progress)
	}
	nv, cl, err := s.boot(ctx, o, v, progress)
	if err != nil {
		return v, err
	}
	cl.Close()
	return nv, nil
}

// resumeMemory starts VM v from saved memory state and waits for its agent.
func (s *Service) resumeMemory(ctx context.Context, o *op, row store.VM, stateDir string, progress Progress) (store.VM, error) {
	var u undo
	defer u.run()
	img, err := s.Images.Resolve(ctx, row.Image)
	if err != nil {
		return row, err
	}
	ip, err := netip.ParseAddr(row.IP)
	if err != nil {
		return row, err
	}
	progress.say("network")
	tap := tapName(row.ID)
	if err := s.Network.AddPort(ctx, tap, ip, row.MAC); err != nil {
		return row, err
	}
	u.push(func() { s.Network.RemovePort(context.Background(), tap) })
	run := s.runDir(row.ID)
	os.RemoveAll(run)
	if err := os.MkdirAll(run, 0o700); err != nil {
		return row, err
	}
	u.push(func() { os.RemoveAll(run) })
	progress.say("restore memory")
	o.step(ctx, "restore memory", nil)
	h, err := s.Driver.Restore(ctx, s.spec(row, img, run, ip), stateDir)
	if err != nil {
		return row, err
	}
	u.push(func() { s.Driver.Kill(context.Background(), h) })
	row.Handle = encodeHandle(h)
	progress.say("agent")
	wctx, cancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
	defer cancel()
	cl, err := vsockcli.WaitReady(wctx, h.Agent, s.agentConfig(row.AgentKey, nil))
	if err != nil {
		return row, s.notReady(row.Name, row.ID, err)
	}
	// The guest slept through the time it spent on disk: step its clock.
	now := time.Now().UnixNano()
	if err := cl.Configure(ctx, proto.Configure{TimeUnixNano: &now}); err != nil {
		s.log.Warn("step guest clock after restore", "vm_id", row.ID, "err", err)
	}
	cl.Close()
	row.State = store.StateRunning
	row.StartedAt = time.Now().UTC()
	if err := store.UpdateVM(ctx, s.DB, row); err != nil {
		return row, err
	}
	u = nil
	return row, nil
}
