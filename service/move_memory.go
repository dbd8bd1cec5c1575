package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/movepause"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// Moving a VM with its memory (issue 15, `move --memory`): the target's
// agent key is asked for, the source suspends the VM (its guest agent told
// to accept the target's key too; its memory and device state saved on
// the source, its hypervisor stopped), the source's bundle (disk, saved
// state, snapshots) is shipped to the target, which resumes it from its
// memory with an address of its own subnet (the guest's eth0 moved to it,
// its clock stepped; hostname, machine-id and keys unchanged: it is the
// same VM), then the control plane's row switches to the target and the
// source's copy is destroyed. Processes keep running; the guest is not
// running from the suspend to the resume on the target (the downtime).
//
// Durable as a cold move (store.Move with Mode memory): before the switch
// the source's saved state is the VM, so an interrupted move (SettleMoves)
// or a failed one destroys the target's copy and resumes the source from
// its memory; after it the source's copy is destroyed.
//
// A stopped VM moves cold. Onto the control plane's own host (whose
// engine shares the control plane's row) the bundle is staged, the switch
// makes the row this host's (engine.Local's AdoptBundle), and the VM
// resumes after the switch; a failed resume switches back.

// MoveStats are a move's figures (Move's result only).
type MoveStats struct {
	Mode string `json:"mode"`
	// WallMS is the whole move, from the first step to the last.
	WallMS int64 `json:"wall_ms"`
	// DowntimeMS is how long the guest did not run (memory: from the
	// suspend to the resume on the target; cold: from the stop to the
	// start there).
	DowntimeMS int64 `json:"downtime_ms,omitempty"`
	// SuspendMS is the part of the downtime spent saving the memory on
	// the source (memory only); the rest is shipping and resuming.
	SuspendMS int64 `json:"suspend_ms,omitempty"`
	// TransferMS (memory) is the part of the downtime after the suspend
	// until the target had the bundle's files (the rest is its resume).
	TransferMS int64 `json:"transfer_ms,omitempty"`
	// PreCopyMS and PreCopyBytes (memory) are the pre-copy of the RAM
	// to the target while the VM still ran (move_precopy.go), before the
	// downtime; absent when the move made none.
	PreCopyMS    int64 `json:"precopy_ms,omitempty"`
	PreCopyBytes int64 `json:"precopy_bytes,omitempty"`
	// PreCopyResumed is how often the pre-copy's stream dropped and
	// resumed from what the target held.
	PreCopyResumed int `json:"precopy_resumed,omitempty"`
	// PauseMS (live) bounds how long the guest did not run: DowntimeMS
	// (the hypervisor's own figure: source paused to the end of the
	// memory stream), the disk mirror's last writes and the target's
	// resume. MirrorMS is the disk mirror until in sync; RAMBytes and
	// DiskBytes what was sent.
	PauseMS   int64 `json:"pause_ms,omitempty"`
	MirrorMS  int64 `json:"mirror_ms,omitempty"`
	RAMBytes  int64 `json:"ram_bytes,omitempty"`
	DiskBytes int64 `json:"disk_bytes,omitempty"`
}

// bundleAdopter is this host's engine when it shares the control plane's
// store (engine.Local): a move onto it stages the bundle, then adopts the
// row.
type bundleAdopter interface {
	StageBundle(ctx context.Context, spec engine.ImportSpec, r io.Reader, progress engine.Progress) error
	AdoptBundle(ctx context.Context, q store.Q, id string) error
	ResumeAdopted(ctx context.Context, id string, start bool, progress engine.Progress) (engine.Instance, error)
}

// memoryMovers returns the engines of a move as MemoryMovers.
func memoryMovers(v store.VM, from, to store.Host, srcE, dstE engine.Engine, what string) (engine.MemoryMover, engine.MemoryMover, error) {
	src, ok1 := srcE.(engine.MemoryMover)
	dst, ok2 := dstE.(engine.MemoryMover)
	if _, ok := dstE.(bundleAdopter); to.Local && !ok {
		ok2 = false
	}
	if !ok1 || !ok2 {
		return nil, nil, errs.New(errs.FailedPrecondition, "move vm %s: the engines of %s and %s cannot move %s", v.Name, from.Name, to.Name, what)
	}
	return src, dst, nil
}

// moveMemory moves running VM v from host from to host to with its memory.
func (s *Service) moveMemory(ctx context.Context, v store.VM, from, to store.Host, srcE, dstE engine.Engine, preCopy bool, progress Progress) (VM, error) {
	src, dst, err := memoryMovers(v, from, to, srcE, dstE, "a vm with its memory")
	if err != nil {
		return VM{}, err
	}
	if !s.moving.add(v.ID) {
		return VM{}, errs.New(errs.FailedPrecondition, "vm %s is already being moved", v.Name)
	}
	defer s.moving.done(v.ID)
	t0 := time.Now()
	fromID := from.ID
	if from.Local {
		fromID = ""
	}
	rec := store.Move{VMID: v.ID, FromHost: fromID, ToHost: to.ID, Step: store.MoveTransfer, Mode: store.MoveMemory, WasRunning: true, CreatedAt: t0.UTC()}
	if err := s.DB.Tx(ctx, func(q store.Q) error { return store.InsertMove(ctx, q, rec) }); err != nil {
		return VM{}, fmt.Errorf("move vm %s: %w", v.Name, err)
	}
	forget := func() {
		s.DB.Tx(context.WithoutCancel(ctx), func(q store.Q) error { return store.DeleteMove(ctx, q, v.ID) })
	}
	s.log.Info("move vm with memory", "vm_id", v.ID, "vm", v.Name, "from", from.Name, "to", to.Name)
	progress.Say("prepare")
	trust, err := dst.AgentTrustKey(ctx)
	if err != nil {
		forget()
		return VM{}, fmt.Errorf("move vm %s: the agent key of %s: %w", v.Name, to.Name, err)
	}
	// The image, fetched by the target while the VM still runs.
	if err := dst.PrepareImage(ctx, v.Image); err != nil {
		forget()
		return VM{}, fmt.Errorf("move vm %s: image %s on %s: %w", v.Name, v.Image, to.Name, err)
	}
	// The RAM, pre-copied while the VM runs (move_precopy.go).
	var preMS, preBytes int64
	pre := false
	if s.moving.crashes("precopy") {
		return VM{}, errMoveCrashed
	}
	var preResumed int
	if preCopy {
		pp, n := countResumes(progress)
		preMS, preBytes, pre = s.preCopy(ctx, v, from, to, srcE, dstE, pp)
		preResumed = int(n.Load())
	}
	progress.Say("suspend")
	suspended := time.Now()
	err = src.Suspend(ctx, v.ID, trust)
	suspendTook := time.Since(suspended)
	if err != nil {
		if pre {
			s.dropPreCopy(ctx, v.ID, srcE.(engine.PreCopyPeer), dstE.(engine.PreCopyPeer))
		}
		// A failed suspend leaves it running; one that did not answer may
		// not have: resume it in any case (if that fails too, the record
		// stays and SettleMoves resumes it).
		if s.resumeSource(ctx, src, from, v.ID) {
			forget()
		}
		return VM{}, fmt.Errorf("move vm %s: suspend: %w", v.Name, err)
	}
	if inst, err := srcE.Get(ctx, v.ID); err == nil {
		s.syncMoved(ctx, from, inst)
	}
	movepause.At(ctx, movepause.Suspended) // test only (internal/movepause)
	// From here a failure before the switch resumes the source.
	restore := func(cause error, targetClean bool) error {
		if s.resumeSource(ctx, src, from, v.ID) && targetClean {
			forget()
		} // else SettleMoves finishes the undo (the source may be restarting)
		return fmt.Errorf("move vm %s to %s: %w", v.Name, to.Name, cause)
	}
	if s.moving.crashes("transfer") {
		return VM{}, errMoveCrashed
	}
	progress, resumes := countResumes(serialProgress(progress))
	var shipped shipClock
	progress = shipped.wrap(progress)
	progress.Say("transfer")
	spec := engine.ImportSpec{ID: v.ID, Name: v.Name, Owner: v.OwnerID}
	ad, _ := dstE.(bundleAdopter)
	var inst engine.Instance
	var mt *meter
	peer := false // the bundle went node to node
	if to.Local {
		_, err = s.shipBundle(ctx, src, v.ID, func(r io.Reader) (engine.Instance, error) {
			return engine.Instance{}, ad.StageBundle(ctx, spec, r, progress)
		})
		if err == nil {
			// As a target node's agent does (nodeagent): test only.
			movepause.At(ctx, movepause.Imported)
		}
	} else if inst, mt, err = s.bundlePeer(ctx, from, srcE, dstE, spec, progress); err == nil && mt == nil {
		bsrc := src
		if from.Local {
			bsrc = pausedExport{src} // as a source node's agent does: test only
		}
		inst, mt, err = s.importBundle(ctx, bsrc, dst, spec, progress)
	} else {
		peer = err == nil
	}
	resumed := time.Now()
	shippedAt := shipped.when(resumed)
	if s.moving.crashes("switch") {
		return VM{}, errMoveCrashed
	}
	if err != nil {
		clean := true
		if errs.ClassOf(err) != errs.AlreadyExists {
			clean = s.undoImport(ctx, dstE, v.ID, err)
		}
		return VM{}, restore(err, clean)
	}
	progress.Say("switch")
	err = s.DB.Tx(ctx, func(q store.Q) error {
		if to.Local {
			if err := ad.AdoptBundle(ctx, q, v.ID); err != nil {
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
	if to.Local {
		// Here the resume comes after the switch; a failed one switches
		// back (the source's saved state is still there).
		progress.Say("resume")
		if _, err := ad.ResumeAdopted(ctx, v.ID, false, progress); err != nil {
			back := s.DB.Tx(context.WithoutCancel(ctx), func(q store.Q) error {
				if err := store.SwitchVMHost(ctx, q, v.ID, from.ID, v.NodeIP, v.NodeMAC, vm.Stopped); err != nil {
					return err
				}
				return store.SetMoveStep(ctx, q, v.ID, store.MoveTransfer)
			})
			if back != nil {
				s.log.Error("move: switch back after a failed resume", "vm_id", v.ID, "err", back)
				return VM{}, fmt.Errorf("move vm %s to %s: resume: %w (and switching back failed: %v; it is settled later)", v.Name, to.Name, err, back)
			}
			return VM{}, restore(err, s.undoImport(ctx, dstE, v.ID, err))
		}
		resumed = time.Now()
	} else {
		s.syncRow(ctx, to.ID, inst)
	}
	if s.moving.crashes("cleanup") {
		return VM{}, errMoveCrashed
	}
	movepause.At(ctx, movepause.Switched) // test only
	progress.Say("cleanup")
	if err := s.destroySource(ctx, srcE, v.ID); err != nil {
		s.log.Warn("move: destroy the source copy (settled later)", "vm_id", v.ID, "host", from.Name, "err", err)
	}
	stats := &MoveStats{Mode: store.MoveMemory, WallMS: time.Since(t0).Milliseconds(), DowntimeMS: resumed.Sub(suspended).Milliseconds(),
		SuspendMS: suspendTook.Milliseconds(), TransferMS: shippedAt.Sub(suspended.Add(suspendTook)).Milliseconds(),
		PreCopyMS: preMS, PreCopyBytes: preBytes, PreCopyResumed: preResumed}
	s.log.Info("vm moved with memory", "vm_id", v.ID, "vm", v.Name, "from", from.Name, "to", to.Name,
		"wall_ms", stats.WallMS, "downtime_ms", stats.DowntimeMS, "suspend_ms", stats.SuspendMS, "transfer_ms", stats.TransferMS, "node_to_node", peer,
		"precopy_ms", stats.PreCopyMS, "precopy_bytes", stats.PreCopyBytes, "precopy_resumed", stats.PreCopyResumed)
	out := s.current(ctx, v.ID)
	out.Move = stats
	if mt != nil {
		out.Transfer = mt.stats()
		out.Transfer.Resumed = int(resumes.Load())
		out.Transfer.NodeToNode = peer
	}
	return out, nil
}

// shipClock notes when the target of a move with memory has the
// bundle's files: the first step it says after "disk" that is not a
// transfer line ("snapshots", "network", ...).
type shipClock struct {
	mu   sync.Mutex
	disk bool
	at   time.Time
}

func (c *shipClock) wrap(p Progress) Progress {
	return func(step string) {
		c.mu.Lock()
		if c.at.IsZero() {
			if c.disk && step != "disk" && !strings.HasPrefix(step, "transfer") {
				c.at = time.Now()
			}
			c.disk = c.disk || step == "disk"
		}
		c.mu.Unlock()
		p.Say(step)
	}
}

// when is the time noted, or end if none was (a staged bundle: its
// files are in place when the staging returns).
func (c *shipClock) when(end time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() {
		return end
	}
	return c.at
}

// bundlePeer ships the bundle of VM spec.ID from one node straight to
// another (engine.BundlePeerImporter: the control plane relays no byte;
// a dropped stream resumes node to node): the meter of the finished
// transfer, or nil and no error when there is no such path (nothing was
// made on either node; the caller relays it).
func (s *Service) bundlePeer(ctx context.Context, from store.Host, srcE, dstE engine.Engine, spec engine.ImportSpec, progress Progress) (engine.Instance, *meter, error) {
	pi, ok := dstE.(engine.BundlePeerImporter)
	if !ok || from.Local {
		return engine.Instance{}, nil, nil
	}
	return s.viaPeer("bundle", spec.ID, progress, func() (engine.Instance, int64, error) {
		return pi.ImportBundleFromPeer(ctx, spec, srcE, progress)
	})
}

// importBundle ships the source's bundle of VM spec.ID into the target's
// import (a node's: not the control plane's own host): where both ends
// can, a stream that drops on the way to the target resumes from the
// target's offset, the source exporting again from there
// (engine.BundleResumingImporter); otherwise it is piped as by
// shipBundle. The meter counts the bundle's bytes once.
func (s *Service) importBundle(ctx context.Context, src, dst engine.MemoryMover, spec engine.ImportSpec, progress Progress) (engine.Instance, *meter, error) {
	mt := newMeter(nil, progress)
	ri, ok1 := dst.(engine.BundleResumingImporter)
	br, ok2 := src.(engine.BundleResumer)
	var inst engine.Instance
	var err error
	if ok1 && ok2 {
		from := func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
			return br.ExportBundleFrom(ctx, spec.ID, at.Offset, mt.resumedWriter(w, at))
		}
		inst, err = ri.ImportBundleResuming(ctx, spec, from, progress)
	} else {
		inst, err = s.shipBundle(ctx, src, spec.ID, func(r io.Reader) (engine.Instance, error) {
			mt.r = r
			return dst.ImportBundle(ctx, spec, mt, progress)
		})
	}
	if err == nil {
		mt.done()
	}
	return inst, mt, err
}

// shipBundle pipes the source's bundle of VM id into the target's import
// imp. An import that failed because the export did is reported as the
// export's error.
func (s *Service) shipBundle(ctx context.Context, src engine.MemoryMover, id string, imp func(io.Reader) (engine.Instance, error)) (engine.Instance, error) {
	pr, pw := io.Pipe()
	exported := make(chan error, 1)
	go func() {
		err := src.ExportBundle(ctx, id, pw)
		pw.CloseWithError(err)
		exported <- err
	}()
	inst, err := imp(pr)
	pr.CloseWithError(errors.New("import ended"))
	eerr := <-exported
	if err != nil {
		if eerr != nil && errs.ClassOf(err) == errs.InvalidArgument {
			err = eerr
		}
		return inst, err
	}
	if eerr != nil {
		// The target verified the whole bundle, so this is the export's own
		// late failure; the copy is good, yet be safe and undo it.
		return inst, eerr
	}
	return inst, nil
}

// pauseAfter is the number of bytes an export from the control plane's
// own host writes before its test-only movepause step (mid-stream), as
// a node's export does.
const pauseAfter = 64 << 10

// pausedExport is the control plane's own host's engine as the source of
// a move with memory, its bundle export pausing at the test-only
// movepause.Transfer step (internal/movepause) as a node's does.
type pausedExport struct{ engine.MemoryMover }

var _ engine.BundleResumer = pausedExport{}

// ExportBundle implements engine.MemoryMover.
func (p pausedExport) ExportBundle(ctx context.Context, id string, w io.Writer) error {
	return p.MemoryMover.ExportBundle(ctx, id, movepause.Writer(ctx, w, pauseAfter, movepause.Transfer))
}

// ExportBundleFrom implements engine.BundleResumer (the first stream
// pauses, not a resumed one).
func (p pausedExport) ExportBundleFrom(ctx context.Context, id string, off int64, w io.Writer) error {
	br, ok := p.MemoryMover.(engine.BundleResumer)
	if !ok {
		return errs.New(errs.FailedPrecondition, "this host's engine does not resume bundles")
	}
	if off == 0 {
		w = movepause.Writer(ctx, w, pauseAfter, movepause.Transfer)
	}
	return br.ExportBundleFrom(ctx, id, off, w)
}

// resumeSource runs the source's copy again after a failed or interrupted
// move with memory: from its saved memory if it was suspended; a source
// that was not suspended and is stopped is started (its memory was never
// saved, so there is none to lose). It reports whether the source runs.
func (s *Service) resumeSource(ctx context.Context, src engine.MemoryMover, from store.Host, id string) bool {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	inst, err := src.Resume(rctx, id)
	if errs.ClassOf(err) == errs.FailedPrecondition {
		if e, ok := src.(engine.Engine); ok {
			inst, err = e.Start(rctx, id, nil)
		}
	}
	if err != nil {
		s.log.Warn("move: resume the source (settled later)", "vm_id", id, "err", err)
		return false
	}
	s.syncMoved(ctx, from, inst)
	return true
}

// settleMemoryMove settles an interrupted move with memory before its
// switch: the target's copy is destroyed, the source resumed from its
// memory. It reports whether the move's record may go.
func (s *Service) settleMemoryMove(ctx context.Context, m store.Move, from store.Host, srcE, dstE engine.Engine) error {
	if !s.undoImport(ctx, dstE, m.VMID, errors.New("move interrupted")) {
		return fmt.Errorf("settle move of vm %s: the target copy is not removed yet", m.VMID)
	}
	src, ok := srcE.(engine.MemoryMover)
	if !ok {
		return fmt.Errorf("settle move of vm %s: the source's engine cannot resume it", m.VMID)
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	inst, err := src.Resume(rctx, m.VMID)
	if errs.ClassOf(err) == errs.FailedPrecondition {
		// Never suspended (the move stopped before its suspend): it may
		// be running already, or stopped.
		if inst, err = srcE.Get(rctx, m.VMID); err == nil && inst.State == vm.Stopped {
			inst, err = srcE.Start(rctx, m.VMID, nil)
		}
	}
	if err != nil {
		return fmt.Errorf("settle move of vm %s: resume the source: %w", m.VMID, err)
	}
	s.syncMoved(ctx, from, inst)
	return nil
}

// NodeEngine's MemoryMover: the node's engine, with owners as stand-ins.

var _ engine.MemoryMover = (*nodeEngine)(nil)

func (n *nodeEngine) memoryMover() (engine.MemoryMover, error) {
	m, ok := n.Engine.(engine.MemoryMover)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "this host's engine does not move vms with memory")
	}
	return m, nil
}

// AgentTrustKey implements engine.MemoryMover.
func (n *nodeEngine) AgentTrustKey(ctx context.Context) (string, error) {
	m, err := n.memoryMover()
	if err != nil {
		return "", err
	}
	return m.AgentTrustKey(ctx)
}

// PrepareImage implements engine.MemoryMover.
func (n *nodeEngine) PrepareImage(ctx context.Context, ref string) error {
	m, err := n.memoryMover()
	if err != nil {
		return err
	}
	return m.PrepareImage(ctx, ref)
}

// Suspend implements engine.MemoryMover.
func (n *nodeEngine) Suspend(ctx context.Context, id, trustKey string) error {
	m, err := n.memoryMover()
	if err != nil {
		return err
	}
	return m.Suspend(ctx, id, trustKey)
}

// Resume implements engine.MemoryMover.
func (n *nodeEngine) Resume(ctx context.Context, id string) (engine.Instance, error) {
	m, err := n.memoryMover()
	if err != nil {
		return engine.Instance{}, err
	}
	return m.Resume(ctx, id)
}

var _ engine.BundleResumer = (*nodeEngine)(nil)

// ExportBundleFrom implements engine.BundleResumer.
func (n *nodeEngine) ExportBundleFrom(ctx context.Context, id string, off int64, w io.Writer) error {
	m, ok := n.Engine.(engine.BundleResumer)
	if !ok {
		return errs.New(errs.FailedPrecondition, "this host's engine does not resume bundles")
	}
	return m.ExportBundleFrom(ctx, id, off, w)
}

// ExportBundle implements engine.MemoryMover.
func (n *nodeEngine) ExportBundle(ctx context.Context, id string, w io.Writer) error {
	m, err := n.memoryMover()
	if err != nil {
		return err
	}
	return m.ExportBundle(ctx, id, w)
}

// ImportBundle implements engine.MemoryMover: the owner tag is recorded
// as a stand-in user, as for ImportDisk.
func (n *nodeEngine) ImportBundle(ctx context.Context, spec engine.ImportSpec, r io.Reader, progress engine.Progress) (engine.Instance, error) {
	m, err := n.memoryMover()
	if err != nil {
		return engine.Instance{}, err
	}
	if err := n.s.standIn(ctx, spec.Owner); err != nil {
		return engine.Instance{}, err
	}
	return m.ImportBundle(ctx, spec, r, progress)
}
