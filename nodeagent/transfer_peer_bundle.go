package nodeagent

import (
	"context"
	"io"
	"sync/atomic"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// Bundles node to node: a move with memory between two nodes ships the
// source's bundle (engine.MemoryMover) the way a cold move ships a disk
// (transfer_peer.go): the target issues a single-use peerdisk ticket
// naming the source's certificate, import_bundle takes the connection
// parked for it (Direct, Peer), and export_bundle with To dials the
// target and writes the bundle into it. The control plane relays no byte
// and sees only the calls' answers and the target's byte progress. A
// stream that drops resumes from the target's byte of the bundle's body
// with a new ticket (transfer_resume.go; the source's ExportBundleFrom).
// No path (no direct listener on either node, no route) is ErrNoPeerPath
// with nothing made: the caller relays the bundle as before.

var peerBundle = peerStream{imp: mImportBundle, exp: mExportBundle,
	peer:   func(r *Remote) *atomic.Int64 { return &r.bundlePeer },
	failed: func(r *Remote) *atomic.Int64 { return &r.bundlePeerFailed },
	cap:    CapPeerBundle}

var _ engine.BundlePeerImporter = (*Remote)(nil)

// ImportBundleFromPeer implements engine.BundlePeerImporter: instance
// spec.ID made on r's node from the bundle of the same (suspended or
// stopped) instance on from's node, written node to node; the bundle's
// size in bytes. from must be another *Remote of this control plane, and
// both nodes need direct listeners the source can reach: else it is
// ErrNoPeerPath (wrapped) and nothing was made on either node. Any other
// failure is the import's or the export's (the import has undone itself,
// as ImportBundle does).
func (r *Remote) ImportBundleFromPeer(ctx context.Context, spec engine.ImportSpec, from engine.Engine, progress engine.Progress) (engine.Instance, int64, error) {
	defer r.agents.forget(spec.ID)
	return r.importFromPeer(ctx, peerBundle, spec, from, progress)
}

// PeerBundleCounts reports how many bundles this Remote imported node to
// node, and how many such attempts found no path.
func (r *Remote) PeerBundleCounts() (peer, failed int64) {
	return r.bundlePeer.Load(), r.bundlePeerFailed.Load()
}

// exportBundleFunc is the node's bundle export.
func (s *server) exportBundleFunc(m engine.MemoryMover) exportFunc {
	return func(ctx context.Context, id string, off int64, w io.Writer) error {
		if off == 0 {
			return m.ExportBundle(ctx, id, w)
		}
		br, ok := m.(engine.BundleResumer)
		if !ok {
			return errs.New(errs.FailedPrecondition, "this node's engine does not resume bundles")
		}
		return br.ExportBundleFrom(ctx, id, off, w)
	}
}
