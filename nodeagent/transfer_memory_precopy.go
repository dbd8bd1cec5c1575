package nodeagent

import (
	"context"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/iocount"
	"github.com/minionsdev/minions/internal/movepause"
	"github.com/minionsdev/minions/vm/engine"
)

// Pre-copies of moves with memory (engine.PreCopier) node to node: the
// running VM's RAM goes from the source node straight to the target's
// direct listener, as a bundle does (transfer_peer_bundle.go: a
// single-use peerdisk ticket, import_precopy takes the parked connection,
// export_precopy with To dials it). The control plane relays no byte. A
// stream that drops resumes as a peer bundle does (transfer_resume.go: a
// new single-use ticket, the source's export from the target's offset),
// from the records the target holds (engine.PreCopyResumer). A pre-copy
// is a shortcut, not a step a move needs: any failure (after the resume's
// tries; an old node that does not know the calls included) leaves the
// move to ship the whole bundle.

// Method names of pre-copies (see wire.go).
const (
	mExportPreCopy = "export_precopy" // write a running instance's pre-copy into a stream
	mImportPreCopy = "import_precopy" // keep a pre-copy read from a stream
	mDropPreCopy   = "drop_precopy"   // forget an instance's pre-copy
)

var peerPreCopy = peerStream{imp: mImportPreCopy, exp: mExportPreCopy,
	peer:   func(r *Remote) *atomic.Int64 { return &r.preCopyPeer },
	failed: func(r *Remote) *atomic.Int64 { return &r.preCopyPeerFailed }}

// PreCopyPeer is a Remote's pre-copy node to node (service: moveMemory).
var _ engine.PreCopyPeer = (*Remote)(nil)

// PreCopyFromPeer implements engine.PreCopyPeer: the pre-copy of running
// instance id on from's node, kept on r's node, and its size in bytes.
// ErrNoPeerPath (wrapped): there is no direct path, nothing was made.
func (r *Remote) PreCopyFromPeer(ctx context.Context, id string, from engine.Engine, progress engine.Progress) (int64, error) {
	_, n, err := r.importFromPeer(ctx, peerPreCopy, engine.ImportSpec{ID: id}, from, progress)
	return n, err
}

var _ engine.PreCopyImporter = (*Remote)(nil)

// ImportPreCopyFrom implements engine.PreCopyImporter: the pre-copy src
// writes (the control plane's own host's) goes to r's node over the
// control plane's direct connection (or a fabric stream), resumed from
// the node's offset when it drops (transfer_resume.go).
func (r *Remote) ImportPreCopyFrom(ctx context.Context, id string, src engine.StreamSource, progress engine.Progress) (int64, error) {
	var n atomic.Int64
	count := func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
		return src(ctx, at, iocount.Writer{W: w, N: &n})
	}
	_, err := r.importResuming(ctx, mImportPreCopy, engine.ImportSpec{ID: id}, count, progress)
	return n.Load(), err
}

var _ engine.PreCopyExporter = (*Remote)(nil)

// ExportPreCopyFrom implements engine.PreCopyExporter: the node's
// pre-copy (off 0) or the rest of it (off: the target's records plus
// one) is copied into w as it arrives, over the control plane's direct
// connection (or a fabric stream).
func (r *Remote) ExportPreCopyFrom(ctx context.Context, id string, off int64, w io.Writer) error {
	return r.exportFrom(ctx, mExportPreCopy, id, off, w)
}

// DropPreCopy implements engine.PreCopyPeer.
func (r *Remote) DropPreCopy(ctx context.Context, id string) error {
	return r.call(ctx, mDropPreCopy, callRequest{ID: id}, nil, nil)
}

// PeerPreCopyCounts reports how many pre-copies this Remote took node to
// node, and how many such attempts found no path.
func (r *Remote) PeerPreCopyCounts() (peer, failed int64) {
	return r.preCopyPeer.Load(), r.preCopyPeerFailed.Load()
}

// runPreCopy serves the calls above on the node.
func (s *server) runPreCopy(ctx context.Context, method string, req callRequest, progress engine.Progress) (any, error) {
	pc, ok := s.cfg.Engine.(engine.PreCopier)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "this node's engine does not pre-copy")
	}
	switch method {
	case mDropPreCopy:
		return nil, pc.DropPreCopy(ctx, req.ID)
	case mExportPreCopy:
		export := func(ctx context.Context, id string, off int64, w io.Writer) error {
			if off == 0 {
				return pc.ExportPreCopy(ctx, id, w)
			}
			// The rest of a dropped stream, after the target's records.
			pr, ok := pc.(engine.PreCopyResumer)
			if !ok {
				return errs.New(errs.FailedPrecondition, "this node's engine does not resume pre-copies")
			}
			return pr.ExportPreCopyFrom(ctx, id, off, w)
		}
		if req.To != nil {
			return s.exportToPeerStep(ctx, req, export, nil, movepause.PreCopy)
		}
		// To the control plane's own host, over its stream.
		_, st, end, err := s.transferStream(ctx, req)
		if err != nil {
			return nil, err
		}
		defer end()
		w := &idleStream{ctx: ctx, st: st, pauseAfter: pauseAfter, pauseStep: movepause.PreCopy}
		if req.Offset != 0 {
			w.pauseAfter = 0 // the test-only pause is the first stream's
		}
		return nil, export(ctx, req.ID, req.Offset, w)
	case mImportPreCopy:
		_, st, end, err := s.transferStream(ctx, req)
		if err != nil {
			return nil, err
		}
		defer func() { end() }()
		progress(streamReady)
		mt := &byteMeter{r: &idleStream{ctx: ctx, st: st}, say: progress, start: time.Now()}
		pr, ok := pc.(engine.PreCopyResumer)
		if !req.Resume || !ok {
			if err := pc.ImportPreCopy(ctx, req.ID, mt); err != nil {
				return nil, err
			}
		} else {
			end = sync.OnceFunc(end) // and when the stream drops
			ri := &resumingImport{s: s, req: req, progress: progress, cur: end}
			defer ri.close()
			reopen := func(ctx context.Context, attempt int, at engine.ResumeAt) (io.Reader, error) {
				nr, err := ri.reopen(ctx, attempt, at)
				if err != nil {
					return nil, err
				}
				mt.r = nr // the meter counts every stream's bytes
				return mt, nil
			}
			if err := pr.ImportPreCopyResuming(ctx, req.ID, mt, reopen, importResume); err != nil {
				return nil, err
			}
		}
		mt.line(time.Now())
		if req.Meter {
			progress(streamBytes + strconv.FormatInt(mt.n, 10))
		}
		return engine.Instance{ID: req.ID}, nil
	}
	return nil, errs.New(errs.InvalidArgument, "unknown engine method %q", method)
}
