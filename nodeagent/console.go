package nodeagent

import (
	"context"
	"io"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/consolelog"
)

// A VM's console log is a file on its node: CopyConsole has the node copy
// it (consolelog.Copy, following it with follow) into a stream of the
// node's subjects, as DialAgent does for the agent channel.

// CopyConsole writes instance id's console log to w, older (rotated)
// output first; with follow it keeps writing what the guest prints until
// ctx ends (then it returns nil) or the node ends the stream.
func (r *Remote) CopyConsole(ctx context.Context, id string, follow bool, w io.Writer) error {
	sid := newToken()
	st, err := newStream(r.cfg.Conn, streamOut(r.cfg.ID, sid), streamIn(r.cfg.ID, sid), "control", "node:"+r.cfg.ID+"/"+id+"/console")
	if err != nil {
		return err
	}
	defer st.Close()
	if err := r.call(ctx, mConsole, callRequest{ID: id, Stream: sid, Follow: follow}, nil, nil); err != nil {
		return err
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			st.Close()
		case <-done:
		}
	}()
	_, err = io.Copy(w, st)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// console starts copying the console log into a new stream; it ends when
// the copy does (not following: at the end of the log) or the caller
// closes the stream.
func (s *server) console(ctx context.Context, req callRequest) error {
	if !tokenRE().MatchString(req.Stream) {
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
	go func() { io.Copy(io.Discard, st); cancel() }() // the caller closed it
	go func() {
		defer func() {
			cancel()
			st.Close()
			s.mu.Lock()
			delete(s.streams, st)
			s.mu.Unlock()
		}()
		if err := consolelog.Copy(cctx, path, req.Follow, st); err != nil && cctx.Err() == nil {
			s.log.Debug("console copy", "vm_id", req.ID, "err", err)
		}
	}()
	fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
	defer fcancel()
	if err := s.cfg.Conn.Flush(fctx); err != nil {
		cancel()
		return errs.New(errs.Unavailable, "console: %w", err)
	}
	return nil
}
