package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// copyToHost is Copy onto another host (issue 15): the stopped source's
// disk is shipped to host req.Host as for a move (engine.Transferer) and
// imported there as a new VM with its own ID, name, address and guest
// identity. done is false when req.Host is the source's own host (the
// usual copy then runs). A running source is errs.FailedPrecondition
// (stop it first); so is a snapshot as the source.
func (s *Service) copyToHost(ctx context.Context, c Caller, src store.VM, spec engine.CreateSpec, req CopyRequest, progress Progress) (bool, VM, error) {
	if !vm.IsID(req.Host) {
		if err := vm.ValidName("host", req.Host); err != nil {
			return true, VM{}, err
		}
	}
	to, err := hostByRef(ctx, s.DB, req.Host)
	if err != nil {
		return true, VM{}, err
	}
	from, err := s.vmHost(ctx, src)
	if err != nil {
		return true, VM{}, err
	}
	if to.ID == from.ID || to.Local && from.Local {
		return false, VM{}, nil
	}
	switch {
	case req.FromSnapshot != "":
		return true, VM{}, errs.New(errs.FailedPrecondition, "copy vm %s to host %s: copying a snapshot to another host is not supported yet", src.Name, to.Name)
	case src.State != vm.Stopped:
		return true, VM{}, errs.New(errs.FailedPrecondition, "copy vm %s to host %s: it is %s; stop it first (a copy on another host ships a stopped disk)", src.Name, to.Name, src.State)
	case to.State != store.HostReady:
		return true, VM{}, errs.New(errs.FailedPrecondition, "copy vm %s: host %s is %s", src.Name, to.Name, to.State)
	case !to.Local && unreachable(to, s.hostsConfig()):
		return true, VM{}, errs.New(errs.Unavailable, "copy vm %s: host %s is unreachable", src.Name, to.Name)
	}
	if s.moving.has(src.ID) || s.moveRecorded(ctx, src.ID) {
		return true, VM{}, errs.New(errs.FailedPrecondition, "vm %s is being moved to another host; try again when the move ends", src.Name)
	}
	srcE, err := s.hostEngine(from)
	if err != nil {
		return true, VM{}, err
	}
	dstE, err := s.hostEngine(to)
	if err != nil {
		return true, VM{}, err
	}
	srcT, ok1 := srcE.(engine.Transferer)
	dstT, ok2 := dstE.(engine.Transferer)
	if !ok1 || !ok2 {
		return true, VM{}, errs.New(errs.FailedPrecondition, "copy vm %s: the engines of %s and %s cannot ship disks", src.Name, from.Name, to.Name)
	}
	// The target's room is claimed for the copy, as for a create.
	release, err := s.claimTarget(ctx, to, spec.ID, "copy", spec.CPUs, spec.MemoryMiB, spec.DiskGiB)
	if err != nil {
		return true, VM{}, fmt.Errorf("copy vm %s to host %s: %w", src.Name, to.Name, err)
	}
	defer release()
	imp := &importer{Engine: dstE, s: s, src: srcT, dst: dstT, srcID: src.ID}
	if to.Local {
		// created would call this host's engine's own Create: import here.
		inst, err := imp.Create(ctx, spec, progress)
		if err != nil {
			return true, VM{}, fmt.Errorf("copy vm %s to host %s: %w", src.Name, to.Name, err)
		}
		out := s.copied(ctx, c, inst)
		out.Transfer = imp.meter.stats()
		out.Transfer.Resumed = int(imp.resumes.Load())
		return true, out, nil
	}
	out, err := s.created(ctx, c, spec, "copy", store.RestartAlways, progress, target{host: to, eng: imp})
	if err != nil {
		return true, VM{}, fmt.Errorf("copy vm %s to host %s: %w", src.Name, to.Name, err)
	}
	if imp.meter != nil {
		out.Transfer = imp.meter.stats()
		out.Transfer.Resumed = int(imp.resumes.Load())
	}
	return true, out, nil
}

// copied records a copy made on this host (as created does).
func (s *Service) copied(ctx context.Context, c Caller, inst engine.Instance) VM {
	if err := store.PutRestart(ctx, s.DB, store.Restart{VMID: inst.ID, Policy: store.RestartAlways}); err != nil {
		s.log.Warn("record restart policy", "vm_id", inst.ID, "err", err)
	}
	v, err := store.GetVMByID(ctx, s.DB, inst.ID)
	if err != nil {
		return VM{ID: inst.ID, Name: inst.Name}
	}
	s.record(ctx, c.Name, v, "copy", "")
	return s.withRestart(ctx, view(v))
}

// importer is the target host's engine with Create replaced by an import
// of the source's disk stream (for Copy onto another host).
type importer struct {
	engine.Engine
	s     *Service
	src   engine.Transferer
	dst   engine.Transferer
	srcID string
	meter *meter // the last Create's transfer
	// resumes counts the last Create's resumed streams (either leg).
	resumes *atomic.Int32
}

// Create imports the source's disk stream as the copy. Onto a node whose
// import resumes (engine.ResumingImporter) both legs of a dropped stream
// resume, as a move's do (move_resume.go); otherwise only the export.
func (i *importer) Create(ctx context.Context, spec engine.CreateSpec, progress engine.Progress) (engine.Instance, error) {
	progress, i.resumes = countResumes(serialProgress(progress))
	progress.Say("transfer")
	ispec := engine.ImportSpec{ID: spec.ID, Name: spec.Name, Owner: spec.Owner, Start: true, CopyOf: i.srcID, AuthorizedKeys: spec.AuthorizedKeys}
	if ri, ok := i.dst.(engine.ResumingImporter); ok {
		inst, mt, err := i.s.importResuming(ctx, i.src, i.srcID, ri, ispec, progress)
		i.meter = mt
		return inst, err
	}
	pr, pw := io.Pipe()
	i.meter = newMeter(pr, progress)
	exported := make(chan error, 1)
	go func() {
		err := i.s.exportResuming(ctx, i.src, i.srcID, pw, progress)
		pw.CloseWithError(err)
		exported <- err
	}()
	inst, err := i.dst.ImportDisk(ctx, ispec, i.meter, progress)
	if err == nil {
		i.meter.done()
	}
	pr.CloseWithError(errors.New("import ended"))
	eerr := <-exported
	if err != nil && eerr != nil {
		return engine.Instance{}, eerr // the stream broke because the export failed
	}
	if err == nil && eerr != nil {
		i.Engine.Destroy(context.WithoutCancel(ctx), spec.ID)
		return engine.Instance{}, eerr
	}
	return inst, err
}
