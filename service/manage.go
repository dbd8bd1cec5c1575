package service

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

// ResizeRequest changes a VM's size; zero fields are left alone.
type ResizeRequest struct {
	CPUs      int `json:"cpus,omitempty"`
	MemoryMiB int `json:"memory_mib,omitempty"`
	DiskGiB   int `json:"disk_gib,omitempty"`
}

// Resize changes vCPUs, memory and disk. CPUs and memory take effect at the
// VM's next start (the QEMU driver cannot change them live); the disk only
// grows, needs a stopped VM, and the guest filesystem grows with it at the
// next start.
func (s *Service) Resize(ctx context.Context, c Caller, name string, req ResizeRequest) (VM, error) {
	var out VM
	err := s.withVM(ctx, c, name, vm.OpResize, func(v store.VM) error {
		nv := v
		if req.CPUs != 0 {
			nv.CPUs = req.CPUs
		}
		if req.MemoryMiB != 0 {
			nv.MemoryMiB = req.MemoryMiB
		}
		if req.DiskGiB != 0 {
			nv.DiskGiB = req.DiskGiB
		}
		if err := vm.ValidResources(nv.CPUs, nv.MemoryMiB, nv.DiskGiB); err != nil {
			return err
		}
		if nv.DiskGiB < v.DiskGiB {
			return errs.New(errs.InvalidArgument, "disks only grow: vm %s has %d GiB, asked for %d", v.Name, v.DiskGiB, nv.DiskGiB)
		}
		if nv == v {
			out = view(v)
			return nil
		}
		if v.State != store.StateStopped {
			return errs.New(errs.FailedPrecondition, "resize needs a stopped vm: run `minions stop %s` first", v.Name)
		}
		return s.DB.Tx(ctx, func(q store.Q) error {
			// Quota counts the growth only; the VM is stopped, so it
			// need only fit the host on its own (start checks the rest).
			if err := s.checkQuotaN(ctx, q, v.OwnerID, 0, nv.CPUs-v.CPUs, nv.MemoryMiB-v.MemoryMiB, nv.DiskGiB-v.DiskGiB); err != nil {
				return err
			}
			if nv.MemoryMiB > v.MemoryMiB {
				if err := s.checkFitsHost(nv.MemoryMiB); err != nil {
					return err
				}
			}
			if nv.DiskGiB > v.DiskGiB {
				if err := os.WriteFile(s.growMarker(v.ID), nil, 0o600); err != nil {
					return err
				}
				if err := s.Disks.Grow(ctx, s.diskPath(v.ID), int64(nv.DiskGiB)<<30); err != nil {
					return err
				}
			}
			if err := store.UpdateVM(ctx, q, nv); err != nil {
				return err
			}
			out = view(nv)
			return nil
		})
	})
	return out, err
}

// Rename gives a VM a new name, in any state. Everything else hangs off the
// VM's ID, so this is one row update and the old name is free at once.
func (s *Service) Rename(ctx context.Context, c Caller, name, newName string) (VM, error) {
	if err := vm.ValidName("vm", newName); err != nil {
		return VM{}, err
	}
	var out VM
	err := s.withVM(ctx, c, name, vm.OpRename, func(v store.VM) error {
		v.Name = newName
		// The old name may go to another VM: links and proxy sessions for
		// this one end with the rename.
		err := s.DB.Tx(ctx, func(q store.Q) error {
			if err := store.UpdateVM(ctx, q, v); err != nil {
				return err
			}
			return store.BumpWebGen(ctx, q, v.ID)
		})
		if err != nil {
			return err
		}
		out = view(v)
		s.record(ctx, c.Name, v, EventRename, "from "+name)
		return nil
	})
	if err == nil {
		// The guest learns its new hostname when it runs.
		if cl, aerr := s.Agent(ctx, c, newName); aerr == nil {
			cl.Configure(ctx, proto.Configure{Hostname: &newName})
			cl.Close()
		}
	}
	return out, err
}

// CopyRequest asks for a copy of a VM.
type CopyRequest struct {
	Name         string `json:"name,omitempty"`          // default: <source>-copy[-N]
	FromSnapshot string `json:"from_snapshot,omitempty"` // start from this snapshot
}

// Copy makes an independent VM from a VM (consistently, when it runs) or
// one of its snapshots: its own ID, name, IP, MAC, machine-id, SSH host
// keys and disk, owned by the caller. The copy is started.
func (s *Service) Copy(ctx context.Context, c Caller, srcName string, req CopyRequest, progress Progress) (VM, error) {
	if c.UserID == "" {
		return VM{}, errs.New(errs.Unauthenticated, "sign in to copy vms")
	}
	src, err := s.getVM(ctx, c, srcName)
	if err != nil {
		return VM{}, err
	}
	if req.Name == "" {
		req.Name = s.freeName(ctx, src.Name+"-copy")
	}
	if err := vm.ValidName("vm", req.Name); err != nil {
		return VM{}, err
	}
	row := store.VM{Name: req.Name, OwnerID: c.UserID, Owner: c.Name, Image: src.Image, CPUs: src.CPUs,
		MemoryMiB: src.MemoryMiB, DiskGiB: src.DiskGiB, Port: src.Port}
	return s.newVM(ctx, c, row, "copy", progress, func(o *op, row store.VM) (store.VM, error) {
		return s.copySteps(ctx, c, o, src, row, req, progress)
	})
}

func (s *Service) copySteps(ctx context.Context, c Caller, o *op, src, row store.VM, req CopyRequest, progress Progress) (store.VM, error) {
	progress.say("disk")
	o.step(ctx, "disk", nil)
	if err := os.MkdirAll(s.vmDir(row.ID), 0o700); err != nil {
		return row, err
	}
	if req.FromSnapshot != "" {
		snap, err := store.GetSnapshot(ctx, s.DB, src.ID, req.FromSnapshot)
		if err != nil {
			return row, errs.New(errs.NotFound, "vm %s has no snapshot named %q", src.Name, req.FromSnapshot)
		}
		if err := s.Disks.Clone(ctx, filepath.Join(s.snapDir(src.ID, snap.ID), "disk.qcow2"), s.diskPath(row.ID)); err != nil {
			return row, err
		}
		// A memory snapshot's saved machine carries the source's MAC and
		// address, so a copy boots cold from the snapshot's disk (consistent
		// as of the instant it was taken) with its own identity.
	} else {
		// A consistent copy of the source's disk: a temporary snapshot.
		unlock, err := s.lockVM(ctx, src.ID)
		if err != nil {
			return row, err
		}
		cur, err := s.reloadVM(ctx, src)
		if err == nil {
			s.reconcileVM(ctx, &cur)
			err = vm.Allowed(cur.Name, cur.State, vm.OpCopy)
		}
		if err == nil {
			tmp := filepath.Join(s.vmDir(row.ID), "src.tmp-"+o.row.ID)
			err = s.captureSnapshot(ctx, o, cur, tmp, false, progress)
			if err == nil {
				err = os.Rename(filepath.Join(tmp, "disk.qcow2"), s.diskPath(row.ID))
			}
			os.RemoveAll(tmp)
		}
		unlock()
		if err != nil {
			return row, err
		}
	}
	v, cl, err := s.boot(ctx, o, row, progress)
	if err != nil {
		return v, err
	}
	cl.Close()
	return s.newIdentity(ctx, v, progress)
}

// newIdentity gives a copied guest its own hostname, machine-id, SSH host
// keys, entropy and clock, and the keys of its new owner.
func (s *Service) newIdentity(ctx context.Context, v store.VM, progress Progress) (store.VM, error) {
	progress.say("identity")
	cl, err := s.agentOf(ctx, v)
	if err != nil {
		return v, err
	}
	defer cl.Close()
	mid := machineID(v.ID)
	now := time.Now().UnixNano()
	seed := make([]byte, 64)
	randRead(seed)
	cfg := proto.Configure{Hostname: &v.Name, MachineID: &mid, TimeUnixNano: &now, Reseed: seed, RegenHostKeys: true,
		AuthorizedKeys: s.ownerKeys(ctx, v.OwnerID)}
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

// freeName returns base, or base-2, base-3... whichever is free.
func (s *Service) freeName(ctx context.Context, base string) string {
	name := base
	for i := 2; i < 1000; i++ {
		if _, err := store.GetVMByName(ctx, s.DB, name); err != nil {
			return name
		}
		name = fmt.Sprintf("%s-%d", base, i)
	}
	return name
}
