package nodeagent

import (
	"context"
	"io"
	"net"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/movepause"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// Live migration (engine.LiveMigrator) over the fabric. The calls are
// plain engine calls; the two byte channels of a migration ride streams
// like the agent's (stream.go), so no port is opened between hosts:
//
//   - live_dial: the node connects to a channel ("nbd" or "migration") of
//     its incoming instance and splices it to a stream, as dial_agent.
//   - live_migrate: the node opens two streams (Stream: the disk,
//     Stream2: the memory), says streamReady, and runs MigrateOut on
//     them; the caller copies its own two connections (usually the
//     target's live_dial streams) to them.

// liveResult answers live_finish.
type liveResult struct {
	Instance engine.Instance `json:"instance"`
	Resumed  time.Duration   `json:"resumed"`
}

var _ engine.LiveMigrator = (*Remote)(nil)

// DescribeOut implements engine.LiveMigrator.
func (r *Remote) DescribeOut(ctx context.Context, id string) ([]byte, error) {
	var out []byte
	err := r.call(ctx, mLiveDescribe, callRequest{ID: id}, nil, &out)
	return out, err
}

// PrepareIncoming implements engine.LiveMigrator.
func (r *Remote) PrepareIncoming(ctx context.Context, spec engine.IncomingSpec, progress engine.Progress) (engine.Instance, error) {
	return r.instance(ctx, mLivePrepare, callRequest{ID: spec.ID, Incoming: &spec}, progress)
}

// DialIncoming implements engine.LiveMigrator.
func (r *Remote) DialIncoming(ctx context.Context, id, channel string) (net.Conn, error) {
	sid := newToken()
	st, err := newStream(r.cfg.Conn, streamOut(r.cfg.ID, sid), streamIn(r.cfg.ID, sid), "control", "node:"+r.cfg.ID+"/"+id+"/"+channel)
	if err != nil {
		return nil, err
	}
	if err := r.call(ctx, mLiveDial, callRequest{ID: id, Stream: sid, Kind: channel}, nil, nil); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// MigrateOut implements engine.LiveMigrator: nbd and mig are copied to
// and from the node's two streams.
func (r *Remote) MigrateOut(ctx context.Context, id, trustKey string, nbd, mig io.ReadWriteCloser, progress engine.Progress) (hypervisor.MigrationStats, error) {
	var stats hypervisor.MigrationStats
	defer nbd.Close()
	defer mig.Close()
	defer r.agents.forget(id)
	sids := [2]string{newToken(), newToken()}
	var sts [2]*stream
	for i, sid := range sids {
		st, err := newStream(r.cfg.Conn, streamOut(r.cfg.ID, sid), streamIn(r.cfg.ID, sid), "control", "node:"+r.cfg.ID+"/"+id)
		if err != nil {
			return stats, err
		}
		defer st.Close()
		sts[i] = st
	}
	var once sync.Once
	var wg sync.WaitGroup
	defer wg.Wait()
	p := func(step string) {
		if step == streamReady {
			once.Do(func() {
				wg.Add(2)
				go func() { defer wg.Done(); splice(nbd, sts[0]) }()
				go func() { defer wg.Done(); splice(mig, sts[1]) }()
			})
			return
		}
		progress.Say(step)
	}
	err := r.call(ctx, mLiveMigrate, callRequest{ID: id, Stream: sids[0], Stream2: sids[1], TrustKey: trustKey}, p, &stats)
	if err != nil {
		nbd.Close()
		mig.Close()
		sts[0].Close()
		sts[1].Close()
	}
	return stats, err
}

// FinishIncoming implements engine.LiveMigrator.
func (r *Remote) FinishIncoming(ctx context.Context, id string, progress engine.Progress) (engine.Instance, time.Duration, error) {
	var res liveResult
	err := r.call(ctx, mLiveFinish, callRequest{ID: id}, progress, &res)
	return res.Instance, res.Resumed, err
}

// AbortIncoming implements engine.LiveMigrator.
func (r *Remote) AbortIncoming(ctx context.Context, id string) error {
	return r.call(ctx, mLiveAbort, callRequest{ID: id}, nil, nil)
}

// ResumeOut implements engine.LiveMigrator.
func (r *Remote) ResumeOut(ctx context.Context, id string) error {
	return r.call(ctx, mLiveResume, callRequest{ID: id}, nil, nil)
}

// liveEngine is the node's engine as a LiveMigrator.
func (s *server) liveEngine() (engine.LiveMigrator, error) {
	lm, ok := s.cfg.Engine.(engine.LiveMigrator)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "this node's engine does not move vms live")
	}
	return lm, nil
}

// runLive serves the live_* calls.
func (s *server) runLive(ctx context.Context, method string, req callRequest, progress engine.Progress) (any, error) {
	lm, err := s.liveEngine()
	if err != nil {
		return nil, err
	}
	switch method {
	case mLiveDescribe:
		return lm.DescribeOut(ctx, req.ID) // []byte: base64 in JSON
	case mLivePrepare:
		if req.Incoming == nil || req.Incoming.ID != req.ID {
			return nil, errs.New(errs.InvalidArgument, "%s: missing or mismatched argument", method)
		}
		return lm.PrepareIncoming(ctx, *req.Incoming, progress)
	case mLiveDial:
		return nil, s.liveDial(ctx, lm, req)
	case mLiveMigrate:
		return s.liveMigrate(ctx, lm, req, progress)
	case mLiveFinish:
		inst, resumed, err := lm.FinishIncoming(ctx, req.ID, progress)
		if err != nil {
			return nil, err
		}
		return liveResult{Instance: inst, Resumed: resumed}, nil
	case mLiveAbort:
		return nil, lm.AbortIncoming(ctx, req.ID)
	case mLiveResume:
		return nil, lm.ResumeOut(ctx, req.ID)
	}
	return nil, errs.New(errs.InvalidArgument, "unknown engine method %q", method)
}

// liveDial connects to a channel of the incoming instance and splices it
// to a new stream (as dialAgent).
func (s *server) liveDial(ctx context.Context, lm engine.LiveMigrator, req callRequest) error {
	if !tokenRE().MatchString(req.Stream) {
		return errs.New(errs.InvalidArgument, "live dial: bad stream id")
	}
	c, err := lm.DialIncoming(ctx, req.ID, req.Kind)
	if err != nil {
		return err
	}
	st, err := newStream(s.cfg.Conn, streamIn(s.cfg.ID, req.Stream), streamOut(s.cfg.ID, req.Stream), "node:"+req.ID, "control")
	if err != nil {
		c.Close()
		return err
	}
	s.mu.Lock()
	s.streams[st] = true
	s.mu.Unlock()
	go func() {
		splice(c, st)
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
	}()
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.cfg.Conn.Flush(fctx); err != nil {
		st.Close()
		return errs.New(errs.Unavailable, "live dial: %w", err)
	}
	return nil
}

// liveMigrate opens the two streams of a migration and runs MigrateOut on
// them once the caller was told to start copying.
func (s *server) liveMigrate(ctx context.Context, lm engine.LiveMigrator, req callRequest, progress engine.Progress) (hypervisor.MigrationStats, error) {
	var stats hypervisor.MigrationStats
	if !tokenRE().MatchString(req.Stream) || !tokenRE().MatchString(req.Stream2) || req.Stream == req.Stream2 {
		return stats, errs.New(errs.InvalidArgument, "live migrate: bad stream ids")
	}
	var sts []*stream
	defer func() {
		for _, st := range sts {
			s.endStream(st)
		}
	}()
	for _, sid := range []string{req.Stream, req.Stream2} {
		st, err := newStream(s.cfg.Conn, streamIn(s.cfg.ID, sid), streamOut(s.cfg.ID, sid), "node:"+req.ID, "control")
		if err != nil {
			return stats, err
		}
		s.mu.Lock()
		s.streams[st] = true
		s.mu.Unlock()
		sts = append(sts, st)
		// A cancelled call (mCancel, mCancelMoves) ends the migration's
		// streams at once.
		stop := context.AfterFunc(ctx, func() { st.Close() })
		defer stop()
	}
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := s.cfg.Conn.Flush(fctx)
	cancel()
	if err != nil {
		return stats, errs.New(errs.Unavailable, "live migrate: %v", err)
	}
	progress(streamReady)
	p := func(step string) {
		if step == "migrate memory" { // the qemu driver's step after the mirror is in sync
			movepause.At(ctx, movepause.Mirrored) // test only: the disk mirror in sync
		}
		progress(step)
	}
	return lm.MigrateOut(ctx, req.ID, req.TrustKey, sts[0], sts[1], p)
}
