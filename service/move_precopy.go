package service

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
)

// A move with memory to a node pre-copies the VM's RAM to the target
// while it still runs (engine.PreCopier): the suspend then ships only
// the RAM that changed since, which shortens the downtime. Node to node
// the control plane relays no byte (engine.PreCopyPeer); from the control
// plane's own host its engine writes the pre-copy into the node's import
// over the direct connection (engine.PreCopyImporter). A dropped stream
// resumes from what the target holds. Into the control plane's host
// there is no pre-copy (it stages the bundle; the whole RAM ships). The
// pre-copy is a shortcut: when it cannot be made (either end lacks it, no
// direct path, the VM's RAM is not a file of its own, any failure after
// the resume's tries) the move ships the whole bundle as before, and
// whatever the pre-copy left on either end is dropped. It is the move's
// first step after "prepare", before the suspend, under the move's
// placement claim on the target: a crash during it leaves the source
// running (it was never suspended; SettleMoves finds it so) and, on the
// target, a RAM file no instance names, dropped by the undo's Destroy,
// after ten minutes, or by the stale RAM file sweep after a restart.

// preCopy runs the pre-copy of VM v from host from to host to, and
// reports its figures: ok when the target holds it.
func (s *Service) preCopy(ctx context.Context, v store.VM, from, to store.Host, srcE, dstE engine.Engine, progress Progress) (ms, bytes int64, ok bool) {
	if to.Local {
		return 0, 0, false // the control plane's host stages bundles: no pre-copy into it
	}
	var run func() (int64, error)
	var src, dst dropper
	if from.Local {
		// From the control plane's own host: its engine writes the
		// pre-copy into the node's import (over the direct connection).
		pc, ok1 := srcE.(engine.PreCopyResumer)
		pi, ok2 := dstE.(engine.PreCopyImporter)
		if !ok1 || !ok2 {
			return 0, 0, false
		}
		src, dst = pc, pi
		run = func() (int64, error) {
			return pi.ImportPreCopyFrom(ctx, v.ID, func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
				if at.Offset == 0 {
					return pc.ExportPreCopy(ctx, v.ID, w)
				}
				return pc.ExportPreCopyFrom(ctx, v.ID, at.Offset, w)
			}, progress)
		}
	} else {
		pd, ok1 := dstE.(engine.PreCopyPeer)
		ps, ok2 := srcE.(engine.PreCopyPeer)
		if !ok1 || !ok2 {
			return 0, 0, false
		}
		src, dst = ps, pd
		run = func() (int64, error) { return pd.PreCopyFromPeer(ctx, v.ID, srcE, progress) }
	}
	progress.Say("precopy")
	t0 := time.Now()
	n, err := run()
	if err != nil {
		lvl := s.log.Warn
		if errors.Is(err, engine.ErrNoPeerPath) || errs.ClassOf(err) == errs.FailedPrecondition {
			lvl = s.log.Info
		}
		lvl("move: no pre-copy (the whole bundle ships after the suspend)", "vm_id", v.ID, "from", from.Name, "to", to.Name, "err", err)
		s.dropPreCopy(ctx, v.ID, src, dst)
		return 0, 0, false
	}
	return time.Since(t0).Milliseconds(), n, true
}

// dropper is either end of a pre-copy.
type dropper interface {
	DropPreCopy(ctx context.Context, id string) error
}

// dropPreCopy forgets VM id's pre-copy on both nodes (best effort).
func (s *Service) dropPreCopy(ctx context.Context, id string, ends ...dropper) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, e := range ends {
		if err := e.DropPreCopy(dctx, id); err != nil {
			s.log.Debug("move: drop pre-copy", "vm_id", id, "err", err)
		}
	}
}

// nodeEngine's engine.PreCopier: the node's engine's.

var _ engine.PreCopier = (*nodeEngine)(nil)

func (n *nodeEngine) preCopier() (engine.PreCopier, error) {
	p, ok := n.Engine.(engine.PreCopier)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "this host's engine does not pre-copy")
	}
	return p, nil
}

// ExportPreCopy implements engine.PreCopier.
func (n *nodeEngine) ExportPreCopy(ctx context.Context, id string, w io.Writer) error {
	p, err := n.preCopier()
	if err != nil {
		return err
	}
	return p.ExportPreCopy(ctx, id, w)
}

var _ engine.PreCopyResumer = (*nodeEngine)(nil)

func (n *nodeEngine) preCopyResumer() (engine.PreCopyResumer, error) {
	p, ok := n.Engine.(engine.PreCopyResumer)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "this host's engine does not resume pre-copies")
	}
	return p, nil
}

// ExportPreCopyFrom implements engine.PreCopyResumer.
func (n *nodeEngine) ExportPreCopyFrom(ctx context.Context, id string, off int64, w io.Writer) error {
	p, err := n.preCopyResumer()
	if err != nil {
		return err
	}
	return p.ExportPreCopyFrom(ctx, id, off, w)
}

// ImportPreCopyResuming implements engine.PreCopyResumer.
func (n *nodeEngine) ImportPreCopyResuming(ctx context.Context, id string, r io.Reader, reopen engine.Reopen, pol engine.ResumePolicy) error {
	p, err := n.preCopyResumer()
	if err != nil {
		return err
	}
	return p.ImportPreCopyResuming(ctx, id, r, reopen, pol)
}

// ImportPreCopy implements engine.PreCopier.
func (n *nodeEngine) ImportPreCopy(ctx context.Context, id string, r io.Reader) error {
	p, err := n.preCopier()
	if err != nil {
		return err
	}
	return p.ImportPreCopy(ctx, id, r)
}

// DropPreCopy implements engine.PreCopier.
func (n *nodeEngine) DropPreCopy(ctx context.Context, id string) error {
	p, err := n.preCopier()
	if err != nil {
		return err
	}
	return p.DropPreCopy(ctx, id)
}
