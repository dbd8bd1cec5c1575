package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/iocount"
	"github.com/minionsdev/minions/internal/movepause"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
)

// A move with memory to a node pre-copies the VM's RAM to the target
// while it still runs (engine.PreCopier): the suspend then ships only
// the RAM that changed since, which shortens the downtime. Node to node
// the control plane relays no byte (engine.PreCopyPeer); from the control
// plane's own host its engine writes the pre-copy into the node's import
// over the direct connection (engine.PreCopyImporter); into it, its
// engine reads the node's (engine.PreCopyExporter) and the staged bundle
// adopts it. A dropped stream resumes from what the target holds. The
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
	var run func() (int64, error)
	var src, dst dropper
	switch {
	case to.Local:
		// Into the control plane's own host: its engine reads the node's
		// pre-copy over the direct connection, and the staged bundle
		// adopts it (StageBundle).
		se, ok1 := srcE.(engine.PreCopyExporter)
		dl, ok2 := dstE.(engine.PreCopyResumer)
		if !ok1 || !ok2 {
			return 0, 0, false
		}
		src, dst = se, dl
		run = func() (int64, error) { return preCopyIn(ctx, v.ID, se, dl, progress) }
	case from.Local:
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
					// As a source node's agent does (nodeagent): test only.
					return pc.ExportPreCopy(ctx, v.ID, movepause.Writer(ctx, w, pauseAfter, movepause.PreCopy))
				}
				return pc.ExportPreCopyFrom(ctx, v.ID, at.Offset, w)
			}, progress)
		}
	default:
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

// preCopyIn has this host's engine dl keep the pre-copy of VM id that
// node engine se writes, resumed from dl's records each time the stream
// drops; it returns the bytes read.
func preCopyIn(ctx context.Context, id string, se engine.PreCopyExporter, dl engine.PreCopyResumer, progress Progress) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var n atomic.Int64
	var wg sync.WaitGroup
	var cur *io.PipeReader
	open := func(off int64) io.Reader {
		pr, pw := io.Pipe()
		wg.Add(1)
		go func() {
			defer wg.Done()
			pw.CloseWithError(se.ExportPreCopyFrom(ctx, id, off, pw))
		}()
		cur = pr
		return iocount.Reader{R: pr, N: &n}
	}
	r := open(0)
	reopen := func(ctx context.Context, attempt int, at engine.ResumeAt) (io.Reader, error) {
		cur.CloseWithError(errs.New(errs.Unavailable, "pre-copy stream resumed")) // the dropped export ends
		progress.Say(fmt.Sprintf("%s%d MiB (attempt %d: the pre-copy's stream dropped)", resumedPrefix, n.Load()>>20, attempt))
		return open(at.Offset), nil
	}
	err := dl.ImportPreCopyResuming(ctx, id, r, reopen, engine.ResumePolicy{})
	cur.Close()
	cancel()
	wg.Wait()
	return n.Load(), err
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
