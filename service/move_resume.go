package service

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"

	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
)

// A relayed disk stream (the control plane between the source and a node
// target) resumes on both of its legs: a dropped export from the source
// with exportResumingFrom, a dropped stream to the target with the
// target's own offset (engine.ResumingImporter): the target keeps what it
// took and asks for the rest, which the control plane exports again from
// there. The meter counts the stream's bytes once: on a resumption it goes
// back to what the target holds and leaves out the new stream's header
// and what the target drops of it.

// transferResuming ships v's disk from src to ri (a node, over a
// connection that may drop) with both legs resuming: the import and the
// meter of the finished transfer.
func (s *Service) transferResuming(ctx context.Context, v store.VM, src engine.Transferer, ri engine.ResumingImporter, ran bool, progress Progress) (engine.Instance, *meter, error) {
	return s.importResuming(ctx, src, v.ID, ri, engine.ImportSpec{ID: v.ID, Name: v.Name, Owner: v.OwnerID, Start: ran}, progress)
}

// importResuming ships instance srcID's disk from src into ri's import
// spec (a move's, or a copy's with CopyOf) with both legs resuming: the
// import and the meter of the finished transfer.
func (s *Service) importResuming(ctx context.Context, src engine.Transferer, srcID string, ri engine.ResumingImporter, spec engine.ImportSpec, progress Progress) (engine.Instance, *meter, error) {
	mt := newMeter(nil, progress)
	from := func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
		return s.exportResumingFrom(ctx, src, srcID, at.Offset, mt.resumedWriter(w, at), progress)
	}
	inst, err := ri.ImportDiskResuming(ctx, spec, from, progress)
	if err == nil {
		mt.done()
	}
	return inst, mt, err
}

// resumedWriter is w counting into m the bytes of the stream that starts
// at (the whole stream for the zero ResumeAt) which the target keeps:
// the count goes back to what the target holds.
// Bytes of an earlier writer no longer count.
func (m *meter) resumedWriter(w io.Writer, at engine.ResumeAt) io.Writer {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gen++
	mw := &meterWriter{m: m, w: w, gen: m.gen}
	m.n = at.Taken // what the target has: the first stream's count from 0
	if at.Headed {
		mw.dropLine = true
		mw.skip = max(0, at.Taken-m.headLen-at.Offset) // of the trailer, which the target had
	} else {
		mw.skip = at.Taken // the target keeps the start it had
	}
	return mw
}

type meterWriter struct {
	m        *meter
	w        io.Writer
	gen      int
	dropLine bool  // the resumed stream's header: not the target's
	skip     int64 // then bytes the target drops
}

func (mw *meterWriter) Write(b []byte) (int, error) {
	n, err := mw.w.Write(b)
	c := b[:n]
	if mw.dropLine {
		if i := bytes.IndexByte(c, '\n'); i >= 0 {
			c, mw.dropLine = c[i+1:], false
		} else {
			c = nil
		}
	}
	if k := min(mw.skip, int64(len(c))); k > 0 {
		c, mw.skip = c[k:], mw.skip-k
	}
	mw.m.count(c, mw.gen)
	return n, err
}

// exportResumingFrom is exportResuming of the stream from byte off of
// the disk.
func (s *Service) exportResumingFrom(ctx context.Context, src engine.Transferer, id string, off int64, w io.Writer, progress Progress) error {
	p := resumePolicy
	p.Resumed = func(attempt int, at int64, err error) {
		s.log.Warn("disk stream dropped: resuming", "vm_id", id, "attempt", attempt, "bytes", at, "err", err)
		progress.Say(fmt.Sprintf("transfer resumed at %d MiB (attempt %d of %d: %v)", at>>20, attempt, p.Tries, err))
	}
	return engine.ExportResumingFrom(ctx, src, id, off, w, p)
}

// resumedPrefix starts the progress line of each resumption, on any leg.
const resumedPrefix = "transfer resumed at "

// countResumes is p counting the resumptions it says.
func countResumes(p Progress) (Progress, *atomic.Int32) {
	var n atomic.Int32
	return func(step string) {
		if strings.HasPrefix(step, resumedPrefix) {
			n.Add(1)
		}
		p.Say(step)
	}, &n
}
