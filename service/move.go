package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/cpus"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/movepause"
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
// A move is a durable record (store.Move) from the stop to the end, so a
// crash of this process mid-move is settled (SettleMoves, run whenever a
// host is settled): before the switch the target's copy is removed and the
// source started again if it ran; after it the source's copy is removed.
// Exactly one copy is left. Other operations on the VM are refused
// (errs.FailedPrecondition) while the record exists.
//
// Onto the control plane's own host (whose engine shares the control
// plane's row) the disk is staged, the switch makes the row this host's,
// and the VM starts after the switch; a failed start switches back.
//
// Snapshots move with the VM: a VM with snapshots ships a bundle (its
// disk and its snapshots' disks, see moveMemory).

// MoveRequest asks to move a VM.
type MoveRequest struct {
	// Host is the target: a cluster host's name or ID.
	Host string `json:"host"`
	// Mode is the kind of move: "cold" (the default: stopped, its disk
	// shipped, started on the target), "memory" (suspended with its
	// memory, resumed on the target) or "live" (migrated while it runs).
	Mode string `json:"mode,omitempty"`
	// NoPreCopy (memory): ship all of the memory after the suspend, with
	// no pre-copy of it while the VM runs (move_precopy.go).
	NoPreCopy bool `json:"no_precopy,omitempty"`
}

// moveMode checks a move mode and returns it, "" being cold.
func moveMode(mode string) (string, error) {
	switch mode {
	case "", store.MoveCold:
		return store.MoveCold, nil
	case store.MoveMemory, store.MoveLive:
		return mode, nil
	}
	return "", errs.New(errs.InvalidArgument, "move: mode must be cold, memory or live, not %q", mode)
}

// moveSet is the VMs being moved by this process; every other operation
// on them is refused (engineFor) until the move ends.
type moveSet struct {
	mu  sync.Mutex
	ids map[string]bool
	// crash, if set (tests only), is asked at each step whether this
	// process "dies" there: Move then returns errMoveCrashed at once,
	// undoing nothing, as after a kill -9.
	crash func(step string) bool
}

var errMoveCrashed = errors.New("move: crashed (test)")

func (m *moveSet) crashes(step string) bool {
	m.mu.Lock()
	f := m.crash
	m.mu.Unlock()
	return f != nil && f(step)
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
	defer cpus.Hold("move")() // CPU-heavy: the process gets its default Ps (internal/cpus)
	if req.Host == "" {
		return VM{}, errs.New(errs.InvalidArgument, "move: the target host is required (--host)")
	}
	mode, err := moveMode(req.Mode)
	if err != nil {
		return VM{}, err
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
	ad, isAd := dstE.(adopter)
	if to.Local {
		// This host's engine shares the control plane's row: the disk is
		// staged, and the switch makes the row this host's (AdoptVM).
		ok2 = isAd
	}
	if !ok1 || !ok2 {
		return VM{}, errs.New(errs.FailedPrecondition, "move vm %s: the engines of %s and %s cannot ship disks", v.Name, from.Name, to.Name)
	}
	// The target's vCPUs, memory and disk are claimed until the move ends
	// (concurrent moves and creates see them taken; a drain claimed them
	// when it placed the VM).
	release, err := s.claimTarget(ctx, to, v.ID, "move", v.CPUs, v.MemoryMiB, v.DiskGiB)
	if err != nil {
		return VM{}, fmt.Errorf("move vm %s: %w", v.Name, err)
	}
	defer release()
	switch {
	case mode == store.MoveMemory && v.State == vm.Running:
		return s.moveMemory(ctx, v, from, to, srcE, dstE, !req.NoPreCopy, progress)
	case mode == store.MoveLive:
		return s.moveLive(ctx, v, from, to, srcE, dstE, progress)
	}
	// A stopped vm moves cold whatever the mode. Its snapshots go with it
	// in a bundle (see moveMemory).
	var bsrc, bdst engine.MemoryMover
	if snaps, err := srcE.Snapshots(ctx, v.ID); err != nil {
		return VM{}, fmt.Errorf("move vm %s: %w", v.Name, err)
	} else if len(snaps) > 0 {
		if bsrc, bdst, err = memoryMovers(v, from, to, srcE, dstE, "a vm with snapshots"); err != nil {
			return VM{}, err
		}
	}
	if !s.moving.add(v.ID) {
		return VM{}, errs.New(errs.FailedPrecondition, "vm %s is already being moved", v.Name)
	}
	defer s.moving.done(v.ID)
	ran := v.State == vm.Running
	t0 := time.Now()
	fromID := from.ID
	if from.Local {
		fromID = ""
	}
	rec := store.Move{VMID: v.ID, FromHost: fromID, ToHost: to.ID, Step: store.MoveTransfer, WasRunning: ran, CreatedAt: time.Now().UTC()}
	if err := s.DB.Tx(ctx, func(q store.Q) error { return store.InsertMove(ctx, q, rec) }); err != nil {
		return VM{}, fmt.Errorf("move vm %s: %w", v.Name, err)
	}
	s.log.Info("move vm", "vm_id", v.ID, "vm", v.Name, "from", from.Name, "to", to.Name)
	if ran {
		progress.Say("stop")
		inst, err := srcE.Stop(ctx, v.ID)
		if err != nil {
			s.DB.Tx(context.WithoutCancel(ctx), func(q store.Q) error { return store.DeleteMove(ctx, q, v.ID) })
			return VM{}, fmt.Errorf("move vm %s: stop: %w", v.Name, err)
		}
		s.syncMoved(ctx, from, inst)
	}
	// From here a failure before the switch starts the source again.
	restore := func(cause error, targetClean bool) error {
		restarted := !ran
		if ran {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			inst, err := srcE.Start(rctx, v.ID, nil)
			cancel()
			if err != nil {
				s.log.Warn("move: restart the source (settled later)", "vm_id", v.ID, "err", err)
			} else {
				restarted = true
				s.syncMoved(ctx, from, inst)
			}
		}
		if targetClean && restarted {
			s.DB.Tx(context.WithoutCancel(ctx), func(q store.Q) error { return store.DeleteMove(ctx, q, v.ID) })
		} // else SettleMoves finishes the undo: the target's copy removed, the source started
		return fmt.Errorf("move vm %s to %s: %w", v.Name, to.Name, cause)
	}

	movepause.At(ctx, movepause.Stopped) // test only (internal/movepause)
	if s.moving.crashes("transfer") {
		return VM{}, errMoveCrashed
	}
	progress, resumes := countResumes(serialProgress(progress))
	progress.Say("transfer")
	var inst engine.Instance
	var eerr error
	var mt *meter // the disk stream's (cold moves)
	switch {
	case bsrc != nil && to.Local:
		_, err = s.shipBundle(ctx, bsrc, v.ID, func(r io.Reader) (engine.Instance, error) {
			return engine.Instance{}, dstE.(bundleAdopter).StageBundle(ctx, engine.ImportSpec{ID: v.ID, Name: v.Name, Owner: v.OwnerID}, r, progress)
		})
	case bsrc != nil:
		inst, mt, err = s.importBundle(ctx, bsrc, bdst, engine.ImportSpec{ID: v.ID, Name: v.Name, Owner: v.OwnerID, Start: ran}, progress)
	default:
		// Node to node where both have the direct path (the bytes do
		// not cross the control plane); relayed otherwise.
		inst, mt, err = s.transferPeer(ctx, v, from, to, srcE, dstE, ran, progress)
		if mt != nil || err != nil {
			break
		}
		if ri, ok := dst.(engine.ResumingImporter); ok && !to.Local {
			// Both legs resume (move_resume.go).
			inst, mt, err = s.transferResuming(ctx, v, src, ri, ran, progress)
			break
		}
		pr, pw := io.Pipe()
		exported := make(chan error, 1)
		go func() {
			err := s.exportResuming(ctx, src, v.ID, pw, progress)
			pw.CloseWithError(err)
			exported <- err
		}()
		mt = newMeter(pr, progress)
		if to.Local {
			err = ad.StageDisk(ctx, engine.ImportSpec{ID: v.ID, Name: v.Name, Owner: v.OwnerID}, mt, progress)
		} else {
			inst, err = dst.ImportDisk(ctx, engine.ImportSpec{ID: v.ID, Name: v.Name, Owner: v.OwnerID, Start: ran}, mt, progress)
		}
		if err == nil {
			mt.done()
		}
		pr.CloseWithError(errors.New("import ended"))
		eerr = <-exported
	}
	started := time.Now()
	if s.moving.crashes("switch") {
		return VM{}, errMoveCrashed
	}
	if err != nil {
		if eerr != nil && errs.ClassOf(err) == errs.InvalidArgument {
			err = eerr // the stream broke because the export failed
		}
		clean := true
		if errs.ClassOf(err) != errs.AlreadyExists { // not ours to remove
			clean = s.undoImport(ctx, dstE, v.ID, err)
		}
		return VM{}, restore(err, clean)
	}
	if eerr != nil {
		// The target verified the whole stream, so this is the export's
		// own late failure; the copy is good, yet be safe and undo it.
		return VM{}, restore(eerr, s.undoImport(ctx, dstE, v.ID, eerr))
	}

	movepause.At(ctx, movepause.Started) // test only
	progress.Say("switch")
	err = s.DB.Tx(ctx, func(q store.Q) error {
		if to.Local && bsrc != nil {
			if err := dstE.(bundleAdopter).AdoptBundle(ctx, q, v.ID); err != nil {
				return err
			}
		} else if to.Local {
			if err := ad.AdoptVM(ctx, q, v.ID); err != nil {
				return err
			}
		} else if err := store.SwitchVMHost(ctx, q, v.ID, to.ID, inst.IP, inst.MAC, inst.State); err != nil {
			return err
		}
		return store.SetMoveStep(ctx, q, v.ID, store.MoveCleanup)
	})
	if err != nil {
		return VM{}, restore(err, s.undoImport(ctx, dstE, v.ID, err))
	}
	if to.Local && ran {
		// Here the start comes after the switch; a failed start switches
		// back (the source's copy is still there).
		progress.Say("start")
		if _, err := s.Engine.Start(ctx, v.ID, progress); err != nil {
			back := s.DB.Tx(context.WithoutCancel(ctx), func(q store.Q) error {
				if err := store.SwitchVMHost(ctx, q, v.ID, from.ID, v.NodeIP, v.NodeMAC, vm.Stopped); err != nil {
					return err
				}
				return store.SetMoveStep(ctx, q, v.ID, store.MoveTransfer)
			})
			if back != nil {
				s.log.Error("move: switch back after a failed start", "vm_id", v.ID, "err", back)
				return VM{}, fmt.Errorf("move vm %s to %s: start: %w (and switching back failed: %v; it is settled later)", v.Name, to.Name, err, back)
			}
			return VM{}, restore(err, s.undoImport(ctx, dstE, v.ID, err))
		}
	}
	movepause.At(ctx, movepause.Switched) // test only
	if s.moving.crashes("cleanup") {
		return VM{}, errMoveCrashed
	}
	progress.Say("cleanup")
	if err := s.destroySource(ctx, srcE, v.ID); err != nil {
		s.log.Warn("move: destroy the source copy (settled later)", "vm_id", v.ID, "host", from.Name, "err", err)
	}
	stats := &MoveStats{Mode: store.MoveCold, WallMS: time.Since(t0).Milliseconds()}
	if ran {
		stats.DowntimeMS = started.Sub(t0).Milliseconds()
	}
	out := s.current(ctx, v.ID)
	out.Move = stats
	if mt != nil {
		out.Transfer = mt.stats()
		out.Transfer.Resumed = int(resumes.Load())
		s.log.Info("vm moved", "vm_id", v.ID, "vm", v.Name, "from", from.Name, "to", to.Name, "wall_ms", stats.WallMS, "bytes", out.Transfer.Bytes, "transfer_seconds", out.Transfer.Seconds, "resumed", out.Transfer.Resumed)
	} else {
		s.log.Info("vm moved", "vm_id", v.ID, "vm", v.Name, "from", from.Name, "to", to.Name, "wall_ms", stats.WallMS)
	}
	return out, nil
}

// adopter is this host's engine when it shares the control plane's store
// (engine.Local): a move onto it stages the disk, then adopts the row.
type adopter interface {
	StageDisk(ctx context.Context, spec engine.ImportSpec, r io.Reader, progress engine.Progress) error
	AdoptVM(ctx context.Context, q store.Q, id string) error
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
// It reports whether the target is known clean.
func (s *Service) undoImport(ctx context.Context, e engine.Engine, id string, cause error) bool {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := e.Destroy(dctx, id); err != nil {
		s.log.Warn("move: remove the target copy", "vm_id", id, "err", err, "cause", cause)
		return false
	}
	return true
}

// destroySource removes the source's copy of a switched move and then the
// move's record.
func (s *Service) destroySource(ctx context.Context, e engine.Engine, id string) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := e.Destroy(dctx, id); err != nil {
		return err
	}
	return s.DB.Tx(dctx, func(q store.Q) error { return store.DeleteMove(dctx, q, id) })
}

// moveCanceller is a node's engine (nodeagent.Remote) that can cancel
// the calls it runs to move an instance.
type moveCanceller interface {
	CancelMoves(ctx context.Context, id string) (int, error)
}

// cancelMoveCalls ends what the nodes of an interrupted move still run
// for it (an export or import whose streams this process relayed before
// it died holds the instance until its idle deadline), so settling it
// does not wait for them. Best effort: a node that does not answer is
// settled later anyway.
func (s *Service) cancelMoveCalls(ctx context.Context, id string, engines ...engine.Engine) {
	for _, e := range engines {
		if n, ok := e.(*nodeEngine); ok {
			e = n.Engine
		}
		c, ok := e.(moveCanceller)
		if !ok {
			continue
		}
		if n, err := c.CancelMoves(ctx, id); err != nil {
			s.log.Warn("move: cancel the calls of an interrupted move", "vm_id", id, "err", err)
		} else if n > 0 {
			s.log.Info("move: cancelled the calls of an interrupted move", "vm_id", id, "calls", n)
		}
	}
}

// moveHost is the host a move record names ("" the local one).
func (s *Service) moveHost(ctx context.Context, id string) (store.Host, error) {
	if id == "" {
		return s.vmHost(ctx, store.VM{})
	}
	return store.GetHostByID(ctx, s.DB, id)
}

// SettleMoves finishes the moves a crash of this process interrupted
// (those not running in this process): before the switch, the target's
// copy is destroyed and the source started again if it ran; after it,
// the source's copy is destroyed. A move whose host is not connected is
// left for the next time. Idempotent.
func (s *Service) SettleMoves(ctx context.Context) error {
	moves, err := store.ListMoves(ctx, s.DB)
	if err != nil {
		return err
	}
	var errList []error
	for _, m := range moves {
		if s.moving.has(m.VMID) {
			continue
		}
		from, err1 := s.moveHost(ctx, m.FromHost)
		to, err2 := s.moveHost(ctx, m.ToHost)
		if err := errors.Join(err1, err2); err != nil {
			errList = append(errList, err)
			continue
		}
		srcE, err1 := s.hostEngine(from)
		dstE, err2 := s.hostEngine(to)
		if err := errors.Join(err1, err2); err != nil {
			errList = append(errList, err)
			continue
		}
		s.cancelMoveCalls(ctx, m.VMID, srcE, dstE)
		if m.Mode == store.MoveLive {
			errList = append(errList, s.settleLive(ctx, m, from, to, srcE, dstE))
			continue
		}
		if m.Step == store.MoveCleanup {
			// The target's copy is the VM: it runs before the source's goes.
			if m.WasRunning {
				if err := s.settleRunning(ctx, dstE, to, m.VMID); err != nil {
					errList = append(errList, fmt.Errorf("settle move of vm %s: %w", m.VMID, err))
					continue
				}
			}
			if err := s.destroySource(ctx, srcE, m.VMID); err != nil {
				errList = append(errList, fmt.Errorf("settle move of vm %s: destroy the source copy: %w", m.VMID, err))
				continue
			}
			s.log.Info("interrupted move settled: the source copy removed", "vm_id", m.VMID, "from", from.Name)
			continue
		}
		if m.Mode == store.MoveMemory {
			if err := s.settleMemoryMove(ctx, m, from, srcE, dstE); err != nil {
				errList = append(errList, err)
				continue
			}
		} else if !s.undoImport(ctx, dstE, m.VMID, errors.New("move interrupted")) {
			errList = append(errList, fmt.Errorf("settle move of vm %s: the target copy is not removed yet", m.VMID))
			continue
		}
		// The record goes only once the source runs again (if it ran):
		// never no copy running. (A memory move's source was resumed
		// from its memory above.)
		if m.WasRunning && m.Mode != store.MoveMemory {
			if err := s.settleRunning(ctx, srcE, from, m.VMID); err != nil {
				errList = append(errList, fmt.Errorf("settle move of vm %s: %w", m.VMID, err))
				continue
			}
		}
		if err := s.DB.Tx(ctx, func(q store.Q) error { return store.DeleteMove(ctx, q, m.VMID) }); err != nil {
			errList = append(errList, err)
			continue
		}
		s.log.Info("interrupted move rolled back", "vm_id", m.VMID, "from", from.Name, "to", to.Name)
	}
	return errors.Join(errList...)
}

// settleRunning makes sure VM id runs on host h (engine e): started if
// stopped; an error (the record is then kept and settled again) while it
// is not known to run.
func (s *Service) settleRunning(ctx context.Context, e engine.Engine, h store.Host, id string) error {
	inst, err := e.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("its copy on %s: %w", h.Name, err)
	}
	switch inst.State {
	case vm.Running:
		return nil
	case vm.Stopped:
		if inst, err = e.Start(ctx, id, nil); err != nil {
			return fmt.Errorf("start it on %s: %w", h.Name, err)
		}
		s.syncMoved(ctx, h, inst)
		return nil
	}
	return fmt.Errorf("its copy on %s is %s; settled later", h.Name, inst.State)
}

// Move implements MoveBackend.
func (b *Bound) Move(ctx context.Context, name string, req MoveRequest, p Progress) (VM, error) {
	return b.s.Move(ctx, b.c, name, req, p)
}

// transferPeer ships v's disk from one node straight to another
// (engine.PeerImporter): the meter of the finished transfer, or nil and
// no error when there is no such path (nothing was made; relay it). A
// stream that broke on the way fails the move as a relayed one does (it
// is not resumed: only relayed exports resume).
func (s *Service) transferPeer(ctx context.Context, v store.VM, from, to store.Host, srcE, dstE engine.Engine, ran bool, progress Progress) (engine.Instance, *meter, error) {
	pi, ok := dstE.(engine.PeerImporter)
	if !ok || from.Local || to.Local {
		return engine.Instance{}, nil, nil
	}
	return s.viaPeer("disk", v.ID, progress, func() (engine.Instance, int64, error) {
		return pi.ImportDiskFromPeer(ctx, engine.ImportSpec{ID: v.ID, Name: v.Name, Owner: v.OwnerID, Start: ran}, srcE, progress)
	})
}

// viaPeer runs a node-to-node import (what: "disk" or "bundle" of VM id)
// and meters it: the meter of the finished transfer, or nil and no error
// when there is no such path (engine.ErrNoPeerPath: nothing was made on
// either node; the caller relays it).
func (s *Service) viaPeer(what, id string, progress Progress, imp func() (engine.Instance, int64, error)) (engine.Instance, *meter, error) {
	t0 := time.Now()
	inst, n, err := imp()
	switch {
	case err == nil:
		mt := &meter{progress: progress, start: t0, n: n, total: n, last: time.Now()}
		mt.done()
		return inst, mt, nil
	case errors.Is(err, engine.ErrNoPeerPath):
		s.log.Info("move: no node-to-node path, relaying the "+what, "vm_id", id, "err", err)
		return engine.Instance{}, nil, nil
	}
	return engine.Instance{}, nil, err
}

// ExportDisk implements engine.Transferer for the node's engine.
func (n *nodeEngine) ExportDisk(ctx context.Context, id string, w io.Writer) error {
	t, ok := n.Engine.(engine.Transferer)
	if !ok {
		return errs.New(errs.FailedPrecondition, "this host's engine does not ship disks")
	}
	return t.ExportDisk(ctx, id, w)
}

// ExportDiskFrom implements engine.DiskResumer for the node's engine.
func (n *nodeEngine) ExportDiskFrom(ctx context.Context, id string, off int64, w io.Writer) error {
	t, ok := n.Engine.(engine.DiskResumer)
	if !ok {
		return errs.New(errs.FailedPrecondition, "this host's engine does not resume disk streams")
	}
	return t.ExportDiskFrom(ctx, id, off, w)
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

// moveRecorded reports whether a move of VM id is recorded (under way,
// or interrupted and not settled yet).
func (s *Service) moveRecorded(ctx context.Context, id string) bool {
	_, err := store.GetMove(ctx, s.DB, id)
	return err == nil
}
