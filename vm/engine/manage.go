package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// Resize implements Engine. CPUs and memory take effect at the VM's next
// start (the QEMU driver cannot change them live); the disk only grows,
// needs a stopped VM, and the guest filesystem grows with it at the next
// start.
func (l *Local) Resize(ctx context.Context, id string, spec ResizeSpec) (Instance, error) {
	var out Instance
	err := l.withOp(ctx, id, vm.OpResize, func(v store.VM) error {
		nv := v
		if spec.CPUs != 0 {
			nv.CPUs = spec.CPUs
		}
		if spec.MemoryMiB != 0 {
			nv.MemoryMiB = spec.MemoryMiB
		}
		if spec.DiskGiB != 0 {
			nv.DiskGiB = spec.DiskGiB
		}
		if err := vm.ValidResources(nv.CPUs, nv.MemoryMiB, nv.DiskGiB); err != nil {
			return err
		}
		if nv.DiskGiB < v.DiskGiB {
			return errs.New(errs.InvalidArgument, "disks only grow: vm %s has %d GiB, asked for %d", v.Name, v.DiskGiB, nv.DiskGiB)
		}
		if nv == v {
			out = InstanceOf(v)
			return nil
		}
		if v.State != vm.Stopped {
			return errs.New(errs.FailedPrecondition, "resize needs a stopped vm: run `minions stop %s` first", v.Name)
		}
		return l.DB.Tx(ctx, func(q store.Q) error {
			a := Admission{Kind: AdmitResize, ID: v.ID, Name: v.Name, Owner: v.OwnerID,
				Was:  Resources{CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, DiskGiB: v.DiskGiB},
				Want: Resources{CPUs: nv.CPUs, MemoryMiB: nv.MemoryMiB, DiskGiB: nv.DiskGiB}}
			if err := l.admitOK(ctx, q, a); err != nil {
				return err
			}
			if nv.DiskGiB > v.DiskGiB {
				if err := os.WriteFile(l.growMarker(v.ID), nil, 0o600); err != nil {
					return err
				}
				if err := l.Disks.Grow(ctx, l.diskPath(v.ID), int64(nv.DiskGiB)<<30); err != nil {
					return err
				}
			}
			if err := store.UpdateVM(ctx, q, nv); err != nil {
				return err
			}
			out = InstanceOf(nv)
			return nil
		})
	})
	return out, err
}

// Rename implements Engine. Everything else hangs off the VM's ID, so
// this is one record update; a running guest learns its new hostname.
func (l *Local) Rename(ctx context.Context, id, newName string) (Instance, error) {
	if err := vm.ValidName("vm", newName); err != nil {
		return Instance{}, err
	}
	var out Instance
	var running store.VM
	err := l.withOp(ctx, id, vm.OpRename, func(v store.VM) error {
		v.Name = newName
		if err := store.UpdateVM(ctx, l.DB, v); err != nil {
			return err
		}
		out, running = InstanceOf(v), v
		return nil
	})
	if err == nil && running.State == vm.Running {
		if cl, aerr := l.agentOf(ctx, running); aerr == nil {
			cl.Configure(ctx, proto.Configure{Hostname: &newName})
			cl.Close()
		}
	}
	return out, err
}

// copyVM is Create with spec.CopyFrom: an independent VM from a VM
// (consistently, when it runs) or one of its snapshots, with its own ID,
// name, IP, MAC, machine-id, SSH host keys and disk. The copy is started.
func (l *Local) copyVM(ctx context.Context, spec CreateSpec, progress Progress) (Instance, error) {
	src, err := l.load(ctx, spec.CopyFrom.ID)
	if err != nil {
		return Instance{}, err
	}
	row := store.VM{ID: spec.ID, Name: spec.Name, OwnerID: spec.Owner, Image: src.Image, CPUs: src.CPUs,
		MemoryMiB: src.MemoryMiB, DiskGiB: src.DiskGiB, Port: src.Port}
	// The copy's disk is a full copy of the source's (or its snapshot's)
	// file: refused up front, before anything is made, when it cannot
	// fit (running out part-way would also fill the filesystem the
	// running VMs write to).
	disk := l.diskPath(src.ID)
	if name := spec.CopyFrom.Snapshot; name != "" {
		if snap, err := store.GetSnapshot(ctx, l.DB, src.ID, name); err == nil {
			disk = filepath.Join(l.snapDir(src.ID, snap.ID), "disk.qcow2")
		}
	}
	if err := l.checkFreeSpace("copy vm "+src.Name+" to "+spec.Name, allocatedBytes(disk)+ReserveBytes); err != nil {
		return Instance{}, err
	}
	return l.newVM(ctx, row, "copy", progress, func(o *op, row store.VM) (store.VM, error) {
		return l.copySteps(ctx, o, src, row, spec, progress)
	})
}

func (l *Local) copySteps(ctx context.Context, o *op, src, row store.VM, spec CreateSpec, progress Progress) (store.VM, error) {
	progress.Say("disk")
	o.step(ctx, "disk", nil)
	if err := os.MkdirAll(l.vmDir(row.ID), 0o700); err != nil {
		return row, err
	}
	if name := spec.CopyFrom.Snapshot; name != "" {
		snap, err := store.GetSnapshot(ctx, l.DB, src.ID, name)
		if err != nil {
			return row, errs.New(errs.NotFound, "vm %s has no snapshot named %q", src.Name, name)
		}
		if err := l.Disks.Clone(ctx, filepath.Join(l.snapDir(src.ID, snap.ID), "disk.qcow2"), l.diskPath(row.ID)); err != nil {
			return row, err
		}
		// A memory snapshot's saved machine carries the source's MAC and
		// address, so a copy boots cold from the snapshot's disk (consistent
		// as of the instant it was taken) with its own identity.
	} else {
		// A consistent copy of the source's disk: a temporary snapshot.
		unlock, err := l.lockVM(ctx, src.ID)
		if err != nil {
			return row, err
		}
		cur, err := l.load(ctx, src.ID)
		if err == nil {
			l.reconcileVM(ctx, &cur)
			err = vm.Allowed(cur.Name, cur.State, vm.OpCopy)
		}
		if err == nil {
			tmp := filepath.Join(l.vmDir(row.ID), "src.tmp-"+o.row.ID)
			err = l.captureSnapshot(ctx, o, cur, tmp, false, progress)
			if err == nil {
				err = os.Rename(filepath.Join(tmp, "disk.qcow2"), l.diskPath(row.ID))
			}
			os.RemoveAll(tmp)
		}
		unlock()
		if err != nil {
			return row, err
		}
	}
	v, cl, err := l.boot(ctx, o, row, progress)
	if err != nil {
		return v, err
	}
	cl.Close()
	return l.newIdentity(ctx, v, spec.AuthorizedKeys, progress)
}

// newIdentity gives a copied guest its own hostname, machine-id, SSH host
// keys, entropy and clock, and the authorized keys of its new owner.
func (l *Local) newIdentity(ctx context.Context, v store.VM, keys []string, progress Progress) (store.VM, error) {
	progress.Say("identity")
	cl, err := l.agentOf(ctx, v)
	if err != nil {
		return v, err
	}
	defer cl.Close()
	mid := machineID(v.ID)
	now := time.Now().UnixNano()
	seed := make([]byte, 64)
	randRead(seed)
	cfg := proto.Configure{Hostname: &v.Name, MachineID: &mid, TimeUnixNano: &now, Reseed: seed, RegenHostKeys: true,
		AuthorizedKeys: keys}
	if err := cl.Configure(ctx, cfg); err != nil {
		return v, fmt.Errorf("new identity: %w", err)
	}
	return v, nil
}

// machineID derives a VM's machine-id (32 hex characters) from its ID.
func machineID(id string) string {
	h := sha256.Sum256([]byte("minions-machine-id:" + id))
	return hex.EncodeToString(h[:16])
}
