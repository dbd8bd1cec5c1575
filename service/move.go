package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// Moving a VM to another host, cold (issue 15): stop it if it runs, ship
// its disk from the source host's engine to the target's as a checksummed
// disk stream (engine.Transferer; over the fabric for another host),
// import it there with an address of the target's subnet, start it there
// if it ran, switch the control plane's row to the target in one
// transaction (host and address; web routes and shares hang off the VM's
// ID and follow at once), and only then destroy the source copy. It keeps
// the name, ID, owner, size, routes and shares. A failure before the
// switch removes the target copy and starts the source again if it ran.
//
// Not yet: moving onto the control plane's own host (its engine shares
// the control plane's row), snapshots (a VM with snapshots is refused),
// durability across a crash of this process mid-move.

// MoveRequest asks to move a VM.
type MoveRequest struct {
	// Host is the target: a cluster host's name or ID.
	Host string `json:"host"`
}

// moveSet is the VMs being moved by this process; every other operation
// on them is refused (engineFor) until the move ends.
type moveSet struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (m *moveSet) add(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ids[id] {
		return false
	}
	if m.ids == nil {
		m.ids = map[string]bool{}
	}
	m.ids[id] = true
	return true
}

func (m *moveSet) done(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.ids, id)
}

func (m *moveSet) has(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ids[id]
}

// hostEngine is the engine of host h, unwrapped (the control plane's own
// for the local host).
func (s *Service) hostEngine(h store.Host) (engine.Engine, error) {
	if h.Local {
		return s.Engine, nil
	}
	e, ok := s.remote(h.ID)
	if !ok {
		return nil, errs.New(errs.Unavailable, "host %s is not connected to this control plane", h.Name)
	}
	return e, nil
}

// vmHost is the host row v runs on (the local one for a VM with no host).
func (s *Service) vmHost(ctx context.Context, v store.VM) (store.Host, error) {
	if v.HostID == "" {
		if h, err := store.GetLocalHost(ctx, s.DB); err == nil {
			return h, nil
		}
		return store.Host{Local: true, Name: "local"}, nil
	}
	return store.GetHostByID(ctx, s.DB, v.HostID)
}

// Move moves VM name to host req.Host (cold, see above). Only the VM's
// owner or an admin may; anyone else gets errs.NotFound. progress hears
// each step: "stop", "transfer", the target's import steps, "switch",
// "cleanup".
func (s *Service) Move(ctx context.Context, c Caller, name string, req MoveRequest, progress Progress) (VM, error) {
	if req.Host == "" {
		return VM{}, errs.New(errs.InvalidArgument, "move: the target host is required (--host)")
	}
	if !vm.IsID(req.Host) {
		if err := vm.ValidName("host", req.Host); err != nil {
			return VM{}, err
		}
	}
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return VM{}, err
	}
	to, err := hostByRef(ctx, s.DB, req.Host)
	if err != nil {
		return VM{}, err
	}
	from, err := s.vmHost(ctx, v)
	if err != nil {
		return VM{}, fmt.Errorf("move vm %s: %w", v.Name, err)
	}
	switch {
	case to.ID == from.ID || to.Local && from.Local:
		return VM{}, errs.New(errs.FailedPrecondition, "move vm %s: it is already on host %s", v.Name, to.Name)
	case to.Local:
		return VM{}, errs.New(errs.FailedPrecondition, "move vm %s: moving onto the control plane's own host %s is not supported yet", v.Name, to.Name)
	case to.State != store.HostReady:
		return VM{}, errs.New(errs.FailedPrecondition, "move vm %s: host %s is %s", v.Name, to.Name, to.State)
	case unreachable(to, s.hostsConfig()):
		return VM{}, errs.New(errs.Unavailable, "move vm %s: host %s is unreachable", v.Name, to.Name)
	case !from.Local && unreachable(from, s.hostsConfig()):
		return VM{}, errs.New(errs.Unavailable, "move vm %s: its host %s is unreachable", v.Name, from.Name)
	}
	if v.State != vm.Running && v.State != vm.Stopped {
		return VM{}, errs.New(errs.FailedPrecondition, "move vm %s: it is %s; only a running or stopped vm moves", v.Name, v.State)
	}
	srcE, err := s.hostEngine(from)
	if err != nil {
		return VM{}, err
	}
	dstE, err := s.hostEngine(to)
	if err != nil {
		return VM{}, err
	}
	src, ok1 := srcE.(engine.Transferer)
	dst, ok2 := dstE.(engine.Transferer)
	if !ok1 || !ok2 {
		return VM{}, errs.New(errs.FailedPrecondition, "move vm %s: the engines of %s and %s cannot ship disks", v.Name, from.Name, to.Name)
	}
	if snaps, err := srcE.Snapshots(ctx, v.ID); err != nil {
		return VM{}, fmt.Errorf("move vm %s: %w", v.Name, err)
	} else if len(snaps) > 0 {
		return VM{}, errs.New(errs.FailedPrecondition, "move vm %s: it has %d snapshots; moving snapshots is not supported yet (delete them first)", v.Name, len(snaps))
	}
	if !s.moving.add(v.ID) {
		return VM{}, errs.New(errs.FailedPrecondition, "vm %s is already being moved", v.Name)
	}
	defer s.moving.done(v.ID)
	s.log.Info("move vm", "vm_id", v.ID, "vm", v.Name, "from", from.Name, "to", to.Name)

	ran := v.State == vm.Running
	if ran {
		progress.Say("stop")
		inst, err := srcE.Stop(ctx, v.ID)
		if err != nil {
			return VM{}, fmt.Errorf("move vm %s: stop: %w", v.Name, err)
		}
		s.syncMoved(ctx, from, inst)
	}
	// From here a failure before the switch starts the source again.
	restore := func(cause error) error {
		if ran {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			inst, err := srcE.Start(rctx, v.ID, nil)
			cancel()
			if err != nil {
				s.log.Warn("move: restart the source", "vm_id", v.ID, "err", err)
			} else {
				s.syncMoved(ctx, from, inst)
			}
		}
		return fmt.Errorf("move vm %s to %s: %w", v.Name, to.Name, cause)
	}

	progress.Say("transfer")
	pr, pw := io.Pipe()
	exported := make(chan error, 1)
	go func() {
		err := src.ExportDisk(ctx, v.ID, pw)
		pw.CloseWithError(err)
		exported <- err
	}()
	inst, err := dst.ImportDisk(ctx, engine.ImportSpec{ID: v.ID, Name: v.Name, Owner: v.OwnerID, Start: ran}, pr, progress)
	pr.CloseWithError(errors.New("import ended"))
	eerr := <-exported
	if err != nil {
		if eerr != nil && errs.ClassOf(err) == errs.InvalidArgument {
			err = eerr // the stream broke because the export failed
		}
		if errs.ClassOf(err) != errs.AlreadyExists { // not ours to remove
			s.undoImport(ctx, dstE, v.ID, err)
		}
		return VM{}, restore(err)
	}
	if eerr != nil {
		// The target verified the whole stream, so this is the export's
		// own late failure; the copy is good, yet be safe and undo it.
		s.undoImport(ctx, dstE, v.ID, eerr)
		return VM{}, restore(eerr)
	}

	progress.Say("switch")
	err = s.DB.Tx(ctx, func(q store.Q) error {
		return store.SwitchVMHost(ctx, q, v.ID, to.ID, inst.IP, inst.MAC, inst.State)
	})
	if err != nil {
		s.undoImport(ctx, dstE, v.ID, err)
		return VM{}, restore(err)
	}
	progress.Say("cleanup")
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	if err := srcE.Destroy(dctx, v.ID); err != nil {
		s.log.Warn("move: destroy the source copy", "vm_id", v.ID, "host", from.Name, "err", err)
	}
	cancel()
	s.log.Info("vm moved", "vm_id", v.ID, "vm", v.Name, "from", from.Name, "to", to.Name)
	return s.current(ctx, v.ID), nil
}

// syncMoved copies inst into v's row when h is another host (a local
// VM's row is the engine's own).
func (s *Service) syncMoved(ctx context.Context, h store.Host, inst engine.Instance) {
	if !h.Local {
		s.syncRow(ctx, h.ID, inst)
	}
}

// undoImport removes the target's copy of a failed move when the target
// may hold one (its import undoes its own failures; an unknown outcome or
// a failure after the import leaves a copy).
func (s *Service) undoImport(ctx context.Context, e engine.Engine, id string, cause error) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := e.Destroy(dctx, id); err != nil {
		s.log.Warn("move: remove the target copy", "vm_id", id, "err", err, "cause", cause)
	}
}

// Move implements MoveBackend.
func (b *Bound) Move(ctx context.Context, name string, req MoveRequest, p Progress) (VM, error) {
	return b.s.Move(ctx, b.c, name, req, p)
}

// ExportDisk implements engine.Transferer for the node's engine.
func (n *nodeEngine) ExportDisk(ctx context.Context, id string, w io.Writer) error {
	t, ok := n.Engine.(engine.Transferer)
	if !ok {
		return errs.New(errs.FailedPrecondition, "this host's engine does not ship disks")
	}
	return t.ExportDisk(ctx, id, w)
}

// ImportDisk implements engine.Transferer for the node's engine: the
// owner tag is recorded as a stand-in user, as for Create.
func (n *nodeEngine) ImportDisk(ctx context.Context, spec engine.ImportSpec, r io.Reader, progress engine.Progress) (engine.Instance, error) {
	t, ok := n.Engine.(engine.Transferer)
	if !ok {
		return engine.Instance{}, errs.New(errs.FailedPrecondition, "this host's engine does not ship disks")
	}
	if err := n.s.standIn(ctx, spec.Owner); err != nil {
		return engine.Instance{}, err
	}
	return t.ImportDisk(ctx, spec, r, progress)
}
