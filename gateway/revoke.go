package gateway

import (
	"context"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// revokeGrace is how long a connection lives on after its credential is
// revoked.
const revokeGrace = 500 * time.Millisecond

// bindConn ties conn to the credential u authenticated with: when
// Users.Bind reports it revoked (the key removed, the user deleted), the
// whole connection is closed, which ends every session, relay and forward
// on it. ctx is the connection's context. The returned function ends the
// watch; call it when the channel that asked for it ends. Every channel of
// a connection binds, so a connection whose key was removed cannot open a
// new channel either.
func (s *Server) bindConn(ctx context.Context, conn *gossh.ServerConn, u User) func() {
	bound, release := s.users.Bind(ctx, u)
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
			return
		case <-bound.Done():
		}
		select {
		case <-done:
			return
		default:
		}
		if ctx.Err() != nil {
			return // the connection ended by itself
		}
		// A moment for what is in flight, such as the output and exit
		// status of the `ssh-key rm` that removed this very key.
		t := time.NewTimer(revokeGrace)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.log.Info("ssh connection closed: credential revoked", "user", u.Name, "remote", conn.RemoteAddr().String(),
			"reason", context.Cause(bound).Error())
		_ = conn.Close()
	}()
	return func() {
		close(done)
		release()
	}
}
