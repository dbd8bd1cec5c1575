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

// A move with memory between two nodes pre-copies the VM's RAM to the
// target while it still runs (engine.PreCopier; node to node, the
// control plane relays no byte): the suspend then ships only the RAM
// that changed since, which shortens the downtime. The pre-copy is a
// shortcut: when it cannot be made (either node lacks it, no direct
// path, the VM's RAM is not a file of its own, any failure) the move
// ships the whole bundle as before, and whatever the pre-copy left on
// either node is dropped. It is the move's first step after "prepare",
// before the suspend: a crash during it leaves the source running (it
// was never suspended; SettleMoves finds it so) and, on the target, a
// RAM file no instance names, dropped by the undo's Destroy, after ten
// minutes, or by the stale RAM file sweep after a restart.

// preCopy runs the pre-copy of VM v from host from to host to, and
// reports its figures: ok when the target holds it.
func (s *Service) preCopy(ctx context.Context, v store.VM, from, to store.Host, srcE, dstE engine.Engine, progress Progress) (ms, bytes int64, ok bool) {
	if from.Local || to.Local {
		return 0, 0, false
	}
	dst, ok1 := dstE.(engine.PreCopyPeer)
	src, ok2 := srcE.(engine.PreCopyPeer)
	if !ok1 || !ok2 {
		return 0, 0, false
	}
	progress.Say("precopy")
	t0 := time.Now()
	n, err := dst.PreCopyFromPeer(ctx, v.ID, srcE, progress)
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

// dropPreCopy forgets VM id's pre-copy on both nodes (best effort).
func (s *Service) dropPreCopy(ctx context.Context, id string, ends ...engine.PreCopyPeer) {
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
