package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/movepause"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// Live moves (`move --live`, issue 15): QEMU live migration with
// non-shared storage between the engines of two hosts
// (engine.LiveMigrator): the target prepares a paused copy waiting on two
// channels (its disk over NBD, the migration stream), the source mirrors
// its disk's top layer and then migrates its memory through them while it
// runs (each channel is a pair of fabric streams spliced here, no port is
// opened between hosts), and ends paused. Then the control plane's row
// switches to the target (the decision: from here the target's copy is
// the VM), the target resumes and its network moves to its host's
// subnet (a new MAC and address; hostname, machine-id and keys stay), and
// the source's copy is destroyed. Processes keep running; TCP connections
// to the old address break (the address cannot move between subnets).
//
// Failures: before the switch the target's copy is removed and the source
// runs on (MigrateOut resumes it; ResumeOut makes sure). A target that
// fails to resume after the switch switches back. The move record
// (store.Move, mode live) lets SettleMoves finish the same way after a
// crash of this process: before the switch, abort the target and resume
// the source; after it, resume the target if it waits and destroy the
// source.
//
// The control plane's own host (engine.Local, whose store is this one)
// takes part as either end. As the target (liveAdopter) its copy is
// staged without a record, and the switch makes the control plane's row
// this host's (AdoptIncoming) in the same transaction as the move's step.
// As the source, the row holds the running source's handle, so the switch
// is the move's step alone (the decision: from here the target's copy is
// the VM); the row goes to the target once the target runs (done again
// by SettleMoves if this process died between the two).

// liveAdopter is this host's engine when it shares the control plane's
// store (engine.Local): a live move onto it stages the incoming copy and
// the switch adopts the row.
type liveAdopter interface {
	StageIncoming(ctx context.Context, spec engine.IncomingSpec, progress engine.Progress) (engine.Instance, error)
	AdoptIncoming(ctx context.Context, q store.Q, id string) error
}

// moveLive moves the running VM v from host from to host to while it
// runs (see above).
func (s *Service) moveLive(ctx context.Context, v store.VM, from, to store.Host, srcE, dstE engine.Engine, progress Progress) (VM, error) {
	src, ok1 := srcE.(engine.LiveMigrator)
	dst, ok2 := dstE.(engine.LiveMigrator)
	ad, isAd := dstE.(liveAdopter)
	switch {
	case !ok1 || !ok2 || to.Local && !isAd:
		return VM{}, errs.New(errs.FailedPrecondition, "move vm %s: the engines of %s and %s cannot move vms live", v.Name, from.Name, to.Name)
	case v.State != vm.Running:
		return VM{}, errs.New(errs.FailedPrecondition, "move vm %s: it is %s; only a running vm moves live (move a stopped vm without --live)", v.Name, v.State)
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
	start := time.Now()
	fromID := from.ID
	if from.Local {
		fromID = ""
	}
	rec := store.Move{VMID: v.ID, FromHost: fromID, ToHost: to.ID, Step: store.MoveTransfer, Mode: store.MoveLive, WasRunning: true, CreatedAt: time.Now().UTC()}
	if err := s.DB.Tx(ctx, func(q store.Q) error { return store.InsertMove(ctx, q, rec) }); err != nil {
		return VM{}, fmt.Errorf("move vm %s: %w", v.Name, err)
	}
	s.log.Info("move vm live", "vm_id", v.ID, "vm", v.Name, "from", from.Name, "to", to.Name)
	dropRec := func() {
		s.DB.Tx(context.WithoutCancel(ctx), func(q store.Q) error { return store.DeleteMove(ctx, q, v.ID) })
	}
	// fail undoes a move that did not switch: the target's copy removed,
	// the source running.
	fail := func(cause error, target bool) (VM, error) {
		clean := true
		if target {
			clean = s.abortIncoming(ctx, dst, v.ID, cause)
		}
		if s.resumeOut(ctx, src, v.ID) && clean {
			dropRec()
		} // else SettleMoves finishes the undo (the source may be restarting)
		return VM{}, fmt.Errorf("move vm %s to %s: %w", v.Name, to.Name, cause)
	}

	progress.Say("prepare")
	desc, err := src.DescribeOut(ctx, v.ID)
	if err != nil {
		return fail(err, false)
	}
	spec := engine.IncomingSpec{ID: v.ID, Name: v.Name, Owner: v.OwnerID, Image: v.Image, CPUs: v.CPUs, MemoryMiB: v.MemoryMiB,
		DiskGiB: v.DiskGiB, Port: v.Port, Source: desc}
	var inst engine.Instance
	if to.Local {
		inst, err = ad.StageIncoming(ctx, spec, progress)
	} else {
		inst, err = dst.PrepareIncoming(ctx, spec, progress)
	}
	if err != nil {
		return fail(err, errs.ClassOf(err) != errs.AlreadyExists)
	}
	movepause.At(ctx, movepause.Prepared) // test only (internal/movepause)
	if s.moving.crashes("transfer") {
		return VM{}, errMoveCrashed
	}
	progress.Say("migrate")
	var conns []net.Conn
	for _, ch := range []string{hypervisor.ChannelNBD, hypervisor.ChannelMigration} {
		c, err := dst.DialIncoming(ctx, v.ID, ch)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return fail(err, true)
		}
		conns = append(conns, c)
	}
	trust, err := dst.AgentTrustKey(ctx)
	if err != nil {
		conns[0].Close()
		conns[1].Close()
		return fail(err, true)
	}
	mp := progress
	if from.Local {
		// As a source node's agent does (nodeagent): test only.
		mp = func(step string) {
			if step == "migrate memory" { // the qemu driver's step after the mirror is in sync
				movepause.At(ctx, movepause.Mirrored)
			}
			progress.Say(step)
		}
	}
	stopWatch := func() {}
	if !to.Local {
		stopWatch = s.watchIncoming(ctx, dstE, v.ID, conns)
	}
	st, err := src.MigrateOut(ctx, v.ID, trust, conns[0], conns[1], mp)
	migrated := time.Now()
	stopWatch()
	if err != nil {
		return fail(err, true)
	}
	movepause.At(ctx, movepause.Migrated) // test only
	if s.moving.crashes("switch") {
		return VM{}, errMoveCrashed
	}

	progress.Say("switch")
	err = s.DB.Tx(ctx, func(q store.Q) error {
		switch {
		case to.Local:
			if err := ad.AdoptIncoming(ctx, q, v.ID); err != nil {
				return err
			}
		case from.Local:
			// The row (the source's handle) goes to the target once it
			// runs, below: this step is the decision.
		default:
			if err := store.SwitchVMHost(ctx, q, v.ID, to.ID, inst.IP, inst.MAC, vm.Running); err != nil {
				return err
			}
		}
		return store.SetMoveStep(ctx, q, v.ID, store.MoveCleanup)
	})
	if err != nil {
		return fail(err, true)
	}
	resuming := time.Now()
	inst, resumed, err := dst.FinishIncoming(ctx, v.ID, progress)
	if err != nil {
		return VM{}, s.switchBack(ctx, v, from, v.NodeIP, v.NodeMAC, src, dst, err)
	}
	if err := s.switchFromLocal(ctx, v.ID, from, to, inst); err != nil {
		return VM{}, fmt.Errorf("move vm %s: it runs on %s, but recording that failed (settled later): %w", v.Name, to.Name, err)
	}
	s.syncMoved(ctx, to, inst)
	if s.moving.crashes("cleanup") {
		return VM{}, errMoveCrashed
	}
	movepause.At(ctx, movepause.Switched) // test only
	progress.Say("cleanup")
	if err := s.destroySource(ctx, srcE, v.ID); err != nil {
		s.log.Warn("move: destroy the source copy (settled later)", "vm_id", v.ID, "host", from.Name, "err", err)
	}
	res := &MoveStats{Mode: store.MoveLive, DowntimeMS: st.Downtime.Milliseconds(),
		PauseMS:  (st.Downtime + st.Handover + resuming.Sub(migrated) + resumed).Milliseconds(),
		WallMS:   time.Since(start).Milliseconds(),
		MirrorMS: st.MirrorTime.Milliseconds(), RAMBytes: st.RAMBytes, DiskBytes: st.DiskBytes}
	progress.Say(fmt.Sprintf("downtime %d ms (guest paused about %d ms), whole move %.1f s", res.DowntimeMS, res.PauseMS, float64(res.WallMS)/1000))
	s.log.Info("vm moved live", "vm_id", v.ID, "vm", v.Name, "from", from.Name, "to", to.Name, "downtime_ms", res.DowntimeMS,
		"pause_ms", res.PauseMS, "wall_ms", res.WallMS, "ram_bytes", res.RAMBytes, "disk_bytes", res.DiskBytes)
	out := s.current(ctx, v.ID)
	out.Move = res
	out.Warnings = append(out.Warnings, fmt.Sprintf("its address changed from %s to %s (host %s's subnet): TCP connections to the old address were cut; its processes kept running", view(v).IP, out.IP, to.Name))
	return out, nil
}

// switchBack undoes the switch of a live move whose target did not
// resume: the row back to the source, the target removed, the source
// resumed (it is paused with the state it handed over, and its disk is
// as it was).
func (s *Service) switchBack(ctx context.Context, v store.VM, from store.Host, ip, mac string, src, dst engine.LiveMigrator, cause error) error {
	// The row switches back to the source node and its address there; a
	// source on this host kept the row (see moveLive): only the step goes
	// back.
	back := s.DB.Tx(context.WithoutCancel(ctx), func(q store.Q) error {
		if from.Local {
			if cur, err := store.GetVMByID(ctx, q, v.ID); err != nil {
				return err
			} else if cur.HostID != "" {
				return errs.New(errs.FailedPrecondition, "vm %s was recorded on host %s already", v.Name, cur.HostID)
			}
		} else if err := store.SwitchVMHost(ctx, q, v.ID, from.ID, ip, mac, vm.Running); err != nil {
			return err
		}
		return store.SetMoveStep(ctx, q, v.ID, store.MoveTransfer)
	})
	if back != nil {
		s.log.Error("move: switch back after a failed resume", "vm_id", v.ID, "err", back)
		return fmt.Errorf("move vm %s: resume on the target: %w (and switching back failed: %v; it is settled later)", v.Name, cause, back)
	}
	clean := s.abortIncoming(ctx, dst, v.ID, cause)
	if s.resumeOut(ctx, src, v.ID) && clean {
		s.DB.Tx(context.WithoutCancel(ctx), func(q store.Q) error { return store.DeleteMove(ctx, q, v.ID) })
	}
	return fmt.Errorf("move vm %s: resume on the target: %w (the vm runs on at its source)", v.Name, cause)
}

// incomingWatch is how often watchIncoming asks the target.
var incomingWatch = 2 * time.Second

// watchIncoming closes conns, the target's channels of a live migration
// of VM id, once the target's copy is gone (its node agent restarted
// meanwhile and removed the half-made copy): streams to a process that
// died are never read again, so the source's migration would wait on
// them for ever. The source then fails its migration and runs on. The
// returned func stops the watch.
func (s *Service) watchIncoming(ctx context.Context, dst engine.Engine, id string, conns []net.Conn) func() {
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(incomingWatch)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
			}
			if _, err := dst.Get(wctx, id); errs.ClassOf(err) == errs.NotFound {
				s.log.Warn("move: the target's copy is gone mid-migration; ending it", "vm_id", id)
				for _, c := range conns {
					c.Close()
				}
				return
			}
		}
	}()
	return func() { cancel(); <-done }
}

// switchFromLocal records VM id on host to after a live move from this
// host whose target runs (inst); a no-op for other moves or when done.
func (s *Service) switchFromLocal(ctx context.Context, id string, from, to store.Host, inst engine.Instance) error {
	if !from.Local {
		return nil
	}
	return s.DB.Tx(context.WithoutCancel(ctx), func(q store.Q) error {
		cur, err := store.GetVMByID(ctx, q, id)
		if err != nil || cur.HostID == to.ID {
			return err
		}
		return store.SwitchVMHost(ctx, q, id, to.ID, inst.IP, inst.MAC, inst.State)
	})
}

// abortIncoming removes the target's copy of a live move; it reports
// whether the target is known clean.
func (s *Service) abortIncoming(ctx context.Context, dst engine.LiveMigrator, id string, cause error) bool {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := dst.AbortIncoming(actx, id); err != nil {
		s.log.Warn("move: remove the target copy", "vm_id", id, "err", err, "cause", cause)
		return false
	}
	return true
}

// resumeOut makes sure the source of a live move that did not switch
// runs (it is paused after a completed migration). It reports whether it
// does.
func (s *Service) resumeOut(ctx context.Context, src engine.LiveMigrator, id string) bool {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := src.ResumeOut(rctx, id); err != nil {
		s.log.Warn("move: resume the source (settled later)", "vm_id", id, "err", err)
		return false
	}
	return true
}

// settleLive finishes an interrupted live move m (SettleMoves): before the
// switch the target's copy is removed and the source resumed; after it
// the target is resumed if it still waits (if it cannot be, the move is
// switched back) and the source destroyed.
func (s *Service) settleLive(ctx context.Context, m store.Move, from, to store.Host, srcE, dstE engine.Engine) error {
	src, ok1 := srcE.(engine.LiveMigrator)
	dst, ok2 := dstE.(engine.LiveMigrator)
	if !ok1 || !ok2 {
		return errs.New(errs.FailedPrecondition, "settle live move of vm %s: an engine cannot move vms live", m.VMID)
	}
	if m.Step != store.MoveCleanup {
		if !s.abortIncoming(ctx, dst, m.VMID, errors.New("move interrupted")) {
			return fmt.Errorf("settle move of vm %s: the target copy is not removed yet", m.VMID)
		}
		if !s.resumeOut(ctx, src, m.VMID) {
			return fmt.Errorf("settle move of vm %s: the source does not run yet", m.VMID)
		}
		s.log.Info("interrupted live move rolled back", "vm_id", m.VMID, "from", from.Name, "to", to.Name)
		return s.DB.Tx(ctx, func(q store.Q) error { return store.DeleteMove(ctx, q, m.VMID) })
	}
	inst, err := dstE.Get(ctx, m.VMID)
	if err == nil && inst.State == vm.Creating {
		inst, _, err = dst.FinishIncoming(ctx, m.VMID, nil)
	}
	if err == nil {
		if err := s.switchFromLocal(ctx, m.VMID, from, to, inst); err != nil {
			return fmt.Errorf("settle move of vm %s: %w", m.VMID, err)
		}
		s.syncMoved(ctx, to, inst)
	}
	if err != nil {
		if errs.ClassOf(err) == errs.Unavailable {
			return fmt.Errorf("settle move of vm %s: %w", m.VMID, err) // next time
		}
		// The target's copy is gone (its node agent restarted before it
		// resumed, and removed it) or cannot resume: the source, paused
		// with the state it handed over, is the VM.
		v, gerr := store.GetVMByID(ctx, s.DB, m.VMID)
		old, serr := srcE.Get(ctx, m.VMID)
		if jerr := errors.Join(gerr, serr); jerr != nil {
			return jerr
		}
		return s.switchBack(ctx, v, from, old.IP, old.MAC, src, dst, err)
	}
	if err := s.destroySource(ctx, srcE, m.VMID); err != nil {
		return fmt.Errorf("settle move of vm %s: destroy the source copy: %w", m.VMID, err)
	}
	s.log.Info("interrupted live move settled: the source copy removed", "vm_id", m.VMID, "from", from.Name)
	return nil
}

var _ engine.LiveMigrator = (*nodeEngine)(nil)

func (n *nodeEngine) live() (engine.LiveMigrator, error) {
	lm, ok := n.Engine.(engine.LiveMigrator)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "this host's engine does not move vms live")
	}
	return lm, nil
}

// DescribeOut implements engine.LiveMigrator for the node's engine.
func (n *nodeEngine) DescribeOut(ctx context.Context, id string) ([]byte, error) {
	lm, err := n.live()
	if err != nil {
		return nil, err
	}
	return lm.DescribeOut(ctx, id)
}

// PrepareIncoming implements engine.LiveMigrator for the node's engine:
// the owner tag is recorded as a stand-in user, as for Create.
func (n *nodeEngine) PrepareIncoming(ctx context.Context, spec engine.IncomingSpec, progress engine.Progress) (engine.Instance, error) {
	lm, err := n.live()
	if err != nil {
		return engine.Instance{}, err
	}
	if err := n.s.standIn(ctx, spec.Owner); err != nil {
		return engine.Instance{}, err
	}
	return lm.PrepareIncoming(ctx, spec, progress)
}

// DialIncoming implements engine.LiveMigrator for the node's engine.
func (n *nodeEngine) DialIncoming(ctx context.Context, id, channel string) (net.Conn, error) {
	lm, err := n.live()
	if err != nil {
		return nil, err
	}
	return lm.DialIncoming(ctx, id, channel)
}

// MigrateOut implements engine.LiveMigrator for the node's engine.
func (n *nodeEngine) MigrateOut(ctx context.Context, id, trustKey string, nbd, mig io.ReadWriteCloser, progress engine.Progress) (hypervisor.MigrationStats, error) {
	lm, err := n.live()
	if err != nil {
		nbd.Close()
		mig.Close()
		return hypervisor.MigrationStats{}, err
	}
	return lm.MigrateOut(ctx, id, trustKey, nbd, mig, progress)
}

// FinishIncoming implements engine.LiveMigrator for the node's engine.
func (n *nodeEngine) FinishIncoming(ctx context.Context, id string, progress engine.Progress) (engine.Instance, time.Duration, error) {
	lm, err := n.live()
	if err != nil {
		return engine.Instance{}, 0, err
	}
	return lm.FinishIncoming(ctx, id, progress)
}

// AbortIncoming implements engine.LiveMigrator for the node's engine.
func (n *nodeEngine) AbortIncoming(ctx context.Context, id string) error {
	lm, err := n.live()
	if err != nil {
		return err
	}
	return lm.AbortIncoming(ctx, id)
}

// ResumeOut implements engine.LiveMigrator for the node's engine.
func (n *nodeEngine) ResumeOut(ctx context.Context, id string) error {
	lm, err := n.live()
	if err != nil {
		return err
	}
	return lm.ResumeOut(ctx, id)
}
