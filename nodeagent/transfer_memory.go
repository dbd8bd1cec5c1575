package nodeagent

import (
	"context"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/movepause"
	"github.com/minionsdev/minions/vm/engine"
)

// Moves with memory (engine.MemoryMover) over the fabric: suspend and
// resume are calls; bundles ride a stream as disk streams do (transfer.go):
// the direct path where there is one, a fabric stream otherwise;
// export_bundle has the node write one into it (from Offset of its body,
// engine.BundleResumer), import_bundle has the node read one from it once
// it said streamReady. An import_bundle with Resume resumes a dropped
// stream as import_disk does (transfer_resume.go), from a byte of the
// bundle's body.

// Method names of moves with memory (see wire.go).
const (
	mSuspend       = "suspend"         // suspend with memory for a move
	mResume        = "resume"          // resume a suspended instance
	mExportBundle  = "export_bundle"   // write a bundle into a stream
	mImportBundle  = "import_bundle"   // make an instance from a bundle
	mAgentTrustKey = "agent_trust_key" // the key the node's agents trust, from its engine
	mPrepareImage  = "prepare_image"   // make an image ready (fetched) on the node
)

var _ engine.MemoryMover = (*Remote)(nil)

// AgentTrustKey implements engine.MemoryMover: the key the node's
// engine has its agents trust.
func (r *Remote) AgentTrustKey(ctx context.Context) (string, error) {
	var line string
	err := r.call(ctx, mAgentTrustKey, callRequest{}, nil, &line)
	return line, err
}

// PrepareImage implements engine.MemoryMover.
func (r *Remote) PrepareImage(ctx context.Context, ref string) error {
	return r.call(ctx, mPrepareImage, callRequest{Name: ref}, nil, nil)
}

// Suspend implements engine.MemoryMover.
func (r *Remote) Suspend(ctx context.Context, id, trustKey string) error {
	defer r.agents.forget(id)
	return r.call(ctx, mSuspend, callRequest{ID: id, TrustKey: trustKey}, nil, nil)
}

// Resume implements engine.MemoryMover.
func (r *Remote) Resume(ctx context.Context, id string) (engine.Instance, error) {
	defer r.agents.forget(id)
	return r.instance(ctx, mResume, callRequest{ID: id}, nil)
}

// ExportBundle implements engine.MemoryMover: the node's bundle is copied
// into w as it arrives.
func (r *Remote) ExportBundle(ctx context.Context, id string, w io.Writer) error {
	return r.ExportBundleFrom(ctx, id, 0, w)
}

var (
	_ engine.BundleResumer          = (*Remote)(nil)
	_ engine.BundleResumingImporter = (*Remote)(nil)
)

// ExportBundleFrom implements engine.BundleResumer.
func (r *Remote) ExportBundleFrom(ctx context.Context, id string, off int64, w io.Writer) error {
	return r.exportFrom(ctx, mExportBundle, id, off, w)
}

// exportFrom asks the node (method: a bundle or a pre-copy export) for
// id's stream from off and copies it into w as it arrives, over the
// control plane's direct connection (or a fabric stream).
func (r *Remote) exportFrom(ctx context.Context, method, id string, off int64, w io.Writer) error {
	sid := newToken()
	st, direct, err := r.openDisk(ctx, sid, id)
	if err != nil {
		return err
	}
	defer st.Close()
	copied := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(w, st, make([]byte, engine.DiskStreamBuffer))
		if err != nil {
			st.Close()
		}
		copied <- err
	}()
	if err := r.call(ctx, method, callRequest{ID: id, Stream: sid, Direct: direct, Offset: off}, nil, nil); err != nil {
		st.Close()
		return err
	}
	select {
	case err := <-copied:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ImportBundle implements engine.MemoryMover: rd is copied to the node
// while it imports.
func (r *Remote) ImportBundle(ctx context.Context, spec engine.ImportSpec, rd io.Reader, progress engine.Progress) (engine.Instance, error) {
	sid := newToken()
	st, direct, err := r.openDisk(ctx, sid, spec.ID)
	if err != nil {
		return engine.Instance{}, err
	}
	defer st.Close()
	var once sync.Once
	p := func(step string) {
		if step == streamReady {
			// A bundle that stops coming (the export failed) closes the
			// stream, so the node's import ends now rather than at its
			// idle deadline.
			once.Do(func() {
				go func() {
					if _, err := io.CopyBuffer(st, rd, make([]byte, engine.DiskStreamBuffer)); err != nil {
						st.Close()
					}
				}()
			})
			return
		}
		progress.Say(step)
	}
	defer r.agents.forget(spec.ID)
	return r.instance(ctx, mImportBundle, callRequest{ID: spec.ID, Stream: sid, Import: &spec, Direct: direct}, p)
}

// ImportBundleResuming implements engine.BundleResumingImporter: src's
// bundle is copied to the node while it imports, and written again from
// the node's offset, into a new stream, each time the node says its
// stream dropped (as ImportDiskResuming).
func (r *Remote) ImportBundleResuming(ctx context.Context, spec engine.ImportSpec, src engine.StreamSource, progress engine.Progress) (engine.Instance, error) {
	defer r.agents.forget(spec.ID)
	return r.importResuming(ctx, mImportBundle, spec, src, progress)
}

// runMemory serves the calls above on the node.
func (s *server) runMemory(ctx context.Context, method string, req callRequest, progress engine.Progress) (any, error) {
	m, ok := s.cfg.Engine.(engine.MemoryMover)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "this node's engine does not move vms with memory")
	}
	switch method {
	case mAgentTrustKey:
		return m.AgentTrustKey(ctx)
	case mPrepareImage:
		return nil, m.PrepareImage(ctx, req.Name)
	case mSuspend:
		return nil, m.Suspend(ctx, req.ID, req.TrustKey)
	case mResume:
		return m.Resume(ctx, req.ID)
	case mExportBundle:
		if req.To != nil {
			return s.exportToPeer(ctx, req, s.exportBundleFunc(m), nil) // transfer_peer_bundle.go
		}
		_, st, end, err := s.transferStream(ctx, req)
		if err != nil {
			return nil, err
		}
		defer end()
		// Idle deadlines as for disk streams: a bundle stream whose relay
		// (the control plane) died must end the export, which holds the
		// instance's lock, rather than block it for ever.
		w := &idleStream{ctx: ctx, st: st, pauseAfter: pauseAfter}
		if req.Offset != 0 {
			br, ok := m.(engine.BundleResumer)
			if !ok {
				return nil, errs.New(errs.FailedPrecondition, "this node's engine does not resume bundles")
			}
			return nil, br.ExportBundleFrom(ctx, req.ID, req.Offset, w)
		}
		return nil, m.ExportBundle(ctx, req.ID, w)
	case mImportBundle:
		if req.Import == nil {
			return nil, errs.New(errs.InvalidArgument, "import_bundle: missing argument")
		}
		_, st, end, err := s.transferStream(ctx, req)
		if err != nil {
			return nil, err
		}
		defer func() { end() }()
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = s.cfg.Conn.Flush(fctx)
		cancel()
		if err != nil {
			return nil, errs.New(errs.Unavailable, "import bundle: %v", err)
		}
		progress(streamReady)
		var r io.Reader = &idleStream{ctx: ctx, st: st}
		if n := cutImport.Swap(0); n > 0 {
			r = &cutReader{c: st, left: n} // test only: a dropped stream
		}
		if req.Resume {
			end = sync.OnceFunc(end) // and when the stream drops
			ri := &resumingImport{s: s, req: req, progress: progress, cur: end}
			defer ri.close()
			r = engine.NewBundleResumingReader(ctx, r, ri.reopen, importResume)
		}
		if !req.Meter {
			return m.ImportBundle(ctx, *req.Import, r, pauseImported(ctx, progress))
		}
		// A node-to-node bundle (transfer_peer_bundle.go): the control
		// plane sees no byte of it, so the node says how far it got.
		mt := &byteMeter{r: r, say: progress, start: time.Now()}
		inst, err := m.ImportBundle(ctx, *req.Import, mt, pauseImported(ctx, progress))
		if err == nil {
			mt.line(time.Now())
			progress(streamBytes + strconv.FormatInt(mt.n, 10))
		}
		return inst, err
	}
	return nil, errs.New(errs.InvalidArgument, "unknown engine method %q", method)
}

// pauseImported wraps an import's progress with the test-only
// movepause.Imported step: after the disk (and snapshots) are in place,
// before the next step (the boot or the resume).
func pauseImported(ctx context.Context, progress engine.Progress) engine.Progress {
	disk := false
	return func(step string) {
		if disk && step != "disk" && step != "snapshots" {
			disk = false
			movepause.At(ctx, movepause.Imported) // test only: the disk is in place
		}
		disk = disk || step == "disk"
		progress(step)
	}
}
