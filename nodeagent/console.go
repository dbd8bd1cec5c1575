package nodeagent

import (
	"context"
	"io"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/consolelog"
)

// CopyConsole writes VM id's console log on the node to w (older,
// rotated output first); with follow it keeps writing what the guest
// prints until ctx ends (it returns nil) or the VM is destroyed. The log
// rides a stream of the node's own subjects (stream.go), with its flow
// control: a slow w slows the node's reader, nothing piles up.
func (r *Remote) CopyConsole(ctx context.Context, id string, follow bool, w io.Writer) error {
	sid := newToken()
	st, err := newStream(r.cfg.Conn, streamOut(r.cfg.ID, sid), streamIn(r.cfg.ID, sid), "control", "node:"+r.cfg.ID+"/"+id+"/console")
	if err != nil {
		return err
	}
	defer st.Close()
	if err := r.call(ctx, mConsoleCopy, callRequest{ID: id, Stream: sid, Follow: follow}, nil, nil); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	_, err = io.Copy(w, st)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// consoleCopy starts copying the console log of req.ID to a new stream
// (the call returns once the stream is in place; the copy outlives it).
func (s *server) consoleCopy(ctx context.Context, req callRequest) error {
	if !tokenRE.MatchString(req.Stream) {
		return errs.New(errs.InvalidArgument, "console: bad stream id")
	}
	path, err := s.cfg.Engine.ConsoleLog(ctx, req.ID)
	if err != nil {
		return err
	}
	st, err := newStream(s.cfg.Conn, streamIn(s.cfg.ID, req.Stream), streamOut(s.cfg.ID, req.Stream), "node:"+req.ID+"/console", "control")
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.streams[st] = true
	s.mu.Unlock()
	cctx, cancel := context.WithCancel(s.ctx)
	s.wg.Add(2)
	go func() { // a follow waiting for output notices the reader left
		defer s.wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for !st.done() {
			select {
			case <-cctx.Done():
				return
			case <-t.C:
			}
		}
		cancel()
	}()
	go func() {
		defer s.wg.Done()
		defer cancel()
		if err := consolelog.Copy(cctx, path, req.Follow, st); err != nil && !st.done() {
			s.log.Debug("console copy", "vm_id", req.ID, "err", err)
		}
		st.Close()
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
	}()
	fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
	defer fcancel()
	if err := s.cfg.Conn.Flush(fctx); err != nil {
		st.Close()
		return errs.New(errs.Unavailable, "console: %w", err)
	}
	return nil
}
