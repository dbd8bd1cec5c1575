package service

import (
	"context"
	"fmt"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// EventFork is the event of a VM made by fork (recorded on the fork).
const EventFork = "fork"

// ForkRequest asks for a fork of a running VM.
type ForkRequest struct {
	Name string `json:"name,omitempty"` // default: <source>-fork[-N]
}

// Fork clones a running VM with its memory: the fork runs the same
// processes from the instant the source was paused, with an identity of
// its own (IP, MAC, hostname, machine-id, agent and SSH host keys, a
// reseeded RNG, the clock, the caller's authorized keys), on a
// copy-on-write copy of the source's disk; the source runs on. Only the
// source's owner or an admin may fork it (others get errs.NotFound); the
// fork is the caller's and counts against the caller's quota. A failure
// removes everything the fork made and leaves the source running.
func (s *Service) Fork(ctx context.Context, c Caller, srcName string, req ForkRequest, progress Progress) (VM, error) {
	if c.UserID == "" {
		return VM{}, errs.New(errs.Unauthenticated, "sign in to fork vms")
	}
	src, err := s.getVM(ctx, c, srcName)
	if err != nil {
		return VM{}, err
	}
	if req.Name == "" {
		req.Name = s.freeName(ctx, src.Name+"-fork")
	}
	if err := vm.ValidName("vm", req.Name); err != nil {
		return VM{}, err
	}
	if src.State != vm.Running {
		return VM{}, errs.New(errs.FailedPrecondition, "fork needs a running vm; %s is %s", src.Name, src.State)
	}
	row, err := store.GetVMByID(ctx, s.DB, src.ID)
	if err != nil {
		return VM{}, err
	}
	// The fork runs where its source runs: on this host, or on the
	// source's node.
	eng, err := s.engineFor(ctx, row)
	if err != nil {
		return VM{}, err
	}
	var host store.Host
	if eng != s.Engine {
		if host, err = store.GetHostByID(ctx, s.DB, row.HostID); err != nil {
			return VM{}, fmt.Errorf("fork vm %s: %w", src.Name, err)
		}
		eng, err = s.hostEngine(host) // unwrapped: the fork's row is made here
		if err != nil {
			return VM{}, err
		}
	}
	fk, ok := eng.(engine.Forker)
	if !ok {
		return VM{}, errs.New(errs.FailedPrecondition, "fork vm %s: the engine of its host cannot fork", src.Name)
	}
	spec := engine.ForkSpec{ID: vm.NewID(), Name: req.Name, Owner: c.UserID, AuthorizedKeys: s.ownerKeys(ctx, c.UserID)}
	// The fork's room on the source's host is claimed as a create's is.
	release, err := s.claimOnHostOf(ctx, row, spec.ID, "fork", row.CPUs, row.MemoryMiB, row.DiskGiB)
	defer release()
	if err != nil {
		return VM{}, fmt.Errorf("fork vm %s: %w", src.Name, err)
	}
	if host.ID == "" {
		if _, err := fk.Fork(ctx, src.ID, spec, progress); err != nil {
			return VM{}, err
		}
	} else {
		// On its node, made as a remote create is.
		frow := store.VM{ID: spec.ID, Name: spec.Name, OwnerID: spec.Owner, Image: row.Image, CPUs: row.CPUs, MemoryMiB: row.MemoryMiB,
			DiskGiB: row.DiskGiB, State: vm.Creating, Port: row.Port, HostID: host.ID, CreatedAt: time.Now().UTC()}
		if _, err := s.makeRemote(ctx, "fork vm "+src.Name, frow, eng, func() (engine.Instance, error) {
			return fk.Fork(ctx, src.ID, spec, progress)
		}); err != nil {
			return VM{}, err
		}
	}
	if err := store.PutRestart(ctx, s.DB, store.Restart{VMID: spec.ID, Policy: store.RestartAlways}); err != nil {
		s.log.Warn("record restart policy", "vm_id", spec.ID, "err", err)
	}
	v, err := store.GetVMByID(ctx, s.DB, spec.ID)
	if err != nil {
		return VM{}, fmt.Errorf("fork vm %s: %w", src.Name, err)
	}
	s.record(ctx, c.Name, v, EventFork, "from "+src.Name)
	return s.withRestart(ctx, view(v)), nil
}

// Fork is Service.Fork as the bound caller.
func (b *Bound) Fork(ctx context.Context, name string, req ForkRequest, p Progress) (VM, error) {
	return b.s.Fork(ctx, b.c, name, req, p)
}
