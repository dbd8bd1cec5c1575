package gateway

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/charmbracelet/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
)

// frontDoor serves every session that does not reach a VM: the dashboard,
// commands, help, sign-up and refusals.
func (s *Server) frontDoor(sess ssh.Session, w *windows) {
	ctx := sess.Context()
	id := identityOf(ctx)
	_, _, isPty := sess.Pty()
	cmd := sess.Command()

	switch id.state {
	case stateDenied:
		fmt.Fprintln(sess.Stderr(), id.msg)
		_ = sess.Exit(id.code)
		return
	case stateUnknown:
		if !isPty || len(cmd) > 0 || sess.Subsystem() != "" {
			s.limiter.Fail(id.ip)
			s.log.Info("unregistered key refused", "remote_ip", id.ip, "fingerprint", fingerprint(id))
			fmt.Fprintln(sess.Stderr(), s.unregisteredMessage(id.key))
			_ = sess.Exit(ExitUnregistered)
			return
		}
		in := newSessionInput(sess)
		user, ok := s.signUp(sess, in, w, id)
		if !ok {
			_ = sess.Exit(ExitUnregistered)
			return
		}
		if conn, ok := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn); ok {
			defer s.bindConn(ctx, conn, user)()
		}
		s.runTea(sess, in, w, s.dashboard(sess, user, newRenderer(sess)))
		_ = sess.Exit(0)
		return
	}

	user := id.user
	user.Key = id.key
	if isPty && len(cmd) == 0 {
		s.runTea(sess, newSessionInput(sess), w, s.dashboard(sess, user, newRenderer(sess)))
		_ = sess.Exit(0)
		return
	}
	if len(cmd) == 0 {
		cmd = []string{"help"}
	}
	cctx, cancel := s.sessionContext(ctx)
	defer cancel()
	code := s.cmds.Run(cctx, user, cmd, sess, sess, sess.Stderr(), isPty)
	s.log.Info("ssh command", "user", user.Name, "cmd", cmd[0], "exit", code)
	_ = sess.Exit(code)
}

// sessionContext is ctx, also cancelled when the server stops.
func (s *Server) sessionContext(ctx context.Context) (context.Context, context.CancelFunc) {
	c, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.baseCtx, cancel)
	return c, func() { stop(); cancel() }
}

// signUp runs the registration screen for an unknown key and returns the
// new user.
func (s *Server) signUp(sess ssh.Session, in *sessionInput, w *windows, id identity) (User, bool) {
	ctx := sess.Context()
	m := newRegisterModel(newRenderer(sess), s.cfg.Policy, fingerprint(id), func(name, invite string) (User, error) {
		return s.register(ctx, id, name, invite)
	})
	final := s.runTea(sess, in, w, m)
	rm, ok := final.(registerModel)
	if !ok || rm.user == nil {
		return User{}, false
	}
	return *rm.user, true
}

// register checks the policy and the invite code, then registers. A refused
// attempt counts as a failed authentication; once the client IP is over the
// limit the error is errs.ResourceExhausted.
func (s *Server) register(ctx context.Context, id identity, name, invite string) (User, error) {
	if wait := s.limiter.Blocked(id.ip); wait > 0 {
		return User{}, errs.New(errs.ResourceExhausted, "%s", rateLimitMessage(id.ip, wait))
	}
	switch s.cfg.Policy {
	case PolicyClosed:
		return User{}, errs.New(errs.PermissionDenied, "sign-up is closed")
	case PolicyInvite:
		if subtle.ConstantTimeCompare([]byte(invite), []byte(s.cfg.InviteCode)) != 1 {
			s.limiter.Fail(id.ip)
			s.log.Warn("wrong invite code", "remote_ip", id.ip, "fingerprint", fingerprint(id))
			return User{}, errs.New(errs.PermissionDenied, "wrong invite code")
		}
	}
	u, err := s.users.Register(ctx, name, id.key, invite)
	if err != nil {
		if errors.Is(err, errs.PermissionDenied) {
			s.limiter.Fail(id.ip)
		}
		return User{}, fmt.Errorf("register %s: %w", name, err)
	}
	s.log.Info("user registered", "user", u.Name, "remote_ip", id.ip, "fingerprint", fingerprint(id))
	return u, nil
}

func fingerprint(id identity) string {
	if id.key == nil {
		return ""
	}
	return gosshFingerprint(id.key)
}
