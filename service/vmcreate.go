package service

import (
	"context"
	"fmt"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"golang.org/x/crypto/ssh"
)

// CreateRequest asks for a new VM. Zero numbers take the configured defaults.
type CreateRequest struct {
	Name      string   `json:"name"`
	CPUs      int      `json:"cpus,omitempty"`
	MemoryMiB int      `json:"memory_mib,omitempty"`
	DiskGiB   int      `json:"disk_gib,omitempty"`
	Image     string   `json:"image,omitempty"`
	SSHKeys   []string `json:"ssh_keys,omitempty"` // extra authorized_keys lines for root
	Restart   string   `json:"restart,omitempty"`  // restart policy: no, on-failure or always (default)
	// Cold boots from the image even when a warm template of the image
	// version and shape exists.
	Cold bool `json:"cold,omitempty"`
	// Host pins the VM to a host of the cluster (name or ID); "" lets the
	// scheduler place it (see PlaceVM). An unknown host is errs.NotFound,
	// one that takes no VMs now (cordoned, joining, unreachable)
	// errs.FailedPrecondition.
	Host string `json:"host,omitempty"`
}

// Create makes and boots a VM owned by the caller. It returns once the
// guest agent answers. A failure removes everything the create made.
func (s *Service) Create(ctx context.Context, c Caller, req CreateRequest, progress Progress) (VM, error) {
	if c.UserID == "" {
		return VM{}, errs.New(errs.Unauthenticated, "sign in to create vms")
	}
	if req.CPUs == 0 {
		req.CPUs = s.cfg.DefaultCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = s.cfg.DefaultMemoryMiB
	}
	if req.Image == "" {
		ref, err := s.DefaultImage(ctx)
		if err != nil {
			return VM{}, err
		}
		req.Image = ref
	}
	if err := vm.ValidName("vm", req.Name); err != nil {
		return VM{}, err
	}
	if req.Restart == "" {
		req.Restart = store.RestartAlways
	}
	if err := ValidRestartPolicy(req.Restart); err != nil {
		return VM{}, err
	}
	for _, k := range req.SSHKeys {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
			return VM{}, errs.New(errs.InvalidArgument, "invalid ssh public key %.40q: %v", k, err)
		}
	}
	// The disk is checked again once the engine knows the image's size.
	if err := vm.ValidResources(req.CPUs, req.MemoryMiB, max(req.DiskGiB, 1)); err != nil {
		return VM{}, err
	}
	if req.Host != "" && !vm.IsID(req.Host) {
		if err := vm.ValidName("host", req.Host); err != nil {
			return VM{}, err
		}
	}
	if _, err := store.GetVMByName(ctx, s.DB, req.Name); err == nil {
		return VM{}, errs.New(errs.AlreadyExists, "a vm named %q already exists", req.Name)
	}
	id := vm.NewID()
	to, release, err := s.placeCreate(ctx, id, req.Host, req.CPUs, req.MemoryMiB, max(req.DiskGiB, s.cfg.DefaultDiskGiB))
	defer release()
	if err != nil {
		return VM{}, err
	}
	spec := engine.CreateSpec{ID: id, Name: req.Name, Owner: c.UserID, Image: req.Image, CPUs: req.CPUs,
		MemoryMiB: req.MemoryMiB, DiskGiB: req.DiskGiB, DefaultDiskGiB: s.cfg.DefaultDiskGiB,
		AuthorizedKeys: append(s.ownerKeys(ctx, c.UserID), req.SSHKeys...), Cold: req.Cold}
	return s.created(ctx, c, spec, "create", req.Restart, progress, to)
}

// created runs an engine create (or copy) and, once it succeeded, records
// the restart policy and the event.
func (s *Service) created(ctx context.Context, c Caller, spec engine.CreateSpec, kind, policy string, progress Progress, to target) (VM, error) {
	var inst engine.Instance
	var err error
	if to.eng == nil {
		inst, err = s.Engine.Create(ctx, spec, progress)
	} else {
		inst, err = s.createRemote(ctx, spec, to.host, to.eng, progress)
	}
	if err != nil {
		return VM{}, err
	}
	if err := store.PutRestart(ctx, s.DB, store.Restart{VMID: spec.ID, Policy: policy}); err != nil {
		s.log.Warn("record restart policy", "vm_id", spec.ID, "err", err)
	}
	v, err := store.GetVMByID(ctx, s.DB, spec.ID)
	if err != nil {
		return VM{}, fmt.Errorf("%s vm %s: %w", kind, spec.Name, err)
	}
	s.record(ctx, c.Name, v, kind, "")
	out := s.withRestart(ctx, view(v))
	out.Boot, out.Warnings = inst.Boot, inst.Warnings
	return out, nil
}

// ownerKeys returns the authorized_keys lines of a user's registered keys.
func (s *Service) ownerKeys(ctx context.Context, userID string) []string {
	keys, err := store.ListSSHKeys(ctx, s.DB, userID)
	if err != nil {
		return nil
	}
	var out []string
	for _, k := range keys {
		out = append(out, k.PublicKey)
	}
	return out
}

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
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return VM{}, err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return VM{}, err
	}
	if _, err := eng.Resize(ctx, v.ID, engine.ResizeSpec(req)); err != nil {
		return VM{}, err
	}
	return s.current(ctx, v.ID), nil
}

// Rename gives a VM a new name, in any state. Everything else hangs off the
// VM's ID, so this is one row update and the old name is free at once.
func (s *Service) Rename(ctx context.Context, c Caller, name, newName string) (VM, error) {
	if err := vm.ValidName("vm", newName); err != nil {
		return VM{}, err
	}
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return VM{}, err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return VM{}, err
	}
	if _, err := eng.Rename(ctx, v.ID, newName); err != nil {
		return VM{}, err
	}
	// The old name may go to another VM: links and proxy sessions for
	// this one end with the rename.
	if err := store.BumpWebGen(ctx, s.DB, v.ID); err != nil {
		return VM{}, err
	}
	v.Name = newName
	s.record(ctx, c.Name, v, EventRename, "from "+name)
	return s.current(ctx, v.ID), nil
}

// CopyRequest asks for a copy of a VM.
type CopyRequest struct {
	Name         string `json:"name,omitempty"`          // default: <source>-copy[-N]
	FromSnapshot string `json:"from_snapshot,omitempty"` // start from this snapshot
	// Host makes the copy on another cluster host (name or ID; the
	// source must be stopped, see copyToHost); "" on the source's host.
	Host string `json:"host,omitempty"`
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
	spec := engine.CreateSpec{ID: vm.NewID(), Name: req.Name, Owner: c.UserID, CPUs: src.CPUs, MemoryMiB: src.MemoryMiB,
		DiskGiB: src.DiskGiB, AuthorizedKeys: s.ownerKeys(ctx, c.UserID),
		CopyFrom: &engine.CopySource{ID: src.ID, Snapshot: req.FromSnapshot}}
	if req.Host != "" {
		if done, out, err := s.copyToHost(ctx, c, src, spec, req, progress); done {
			return out, err
		}
	}
	// A copy is made where its source is (the engine copies its disk).
	var to target
	if eng, err := s.engineFor(ctx, src); err != nil {
		return VM{}, err
	} else if r, ok := eng.(*remoteVMs); ok {
		to = target{host: r.host, eng: r.Engine}
	}
	// Its room there is claimed as a create's is.
	release, err := s.claimOnHostOf(ctx, src, spec.ID, "copy", spec.CPUs, spec.MemoryMiB, spec.DiskGiB)
	defer release()
	if err != nil {
		return VM{}, fmt.Errorf("copy vm %s: %w", src.Name, err)
	}
	return s.created(ctx, c, spec, "copy", store.RestartAlways, progress, to)
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
