package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/charmbracelet/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
)

// agentTimeout bounds VMs.Agent.
const agentTimeout = 30 * time.Second

func (s *Server) agent(ctx context.Context, u User, vm string) (*gossh.Client, func(), error) {
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	c, release, err := s.vms.Agent(ctx, u, vm)
	if err != nil {
		return nil, nil, err
	}
	if release == nil {
		release = func() {}
	}
	return c, release, nil
}

// channelSlot binds a channel's life to u's standing (bindConn) and takes
// one of u's session slots (sessionSlot rejects newChan when none is
// free: ok is false and nothing is held); done gives both back. vm is the
// VM the channel is for (the login name).
func (s *Server) channelSlot(ctx context.Context, conn *gossh.ServerConn, u User, newChan gossh.NewChannel) (vm string, done func(), ok bool) {
	unbind := s.bindConn(ctx, conn, u)
	slot, ok := s.sessionSlot(u, newChan)
	if !ok {
		unbind()
		return "", nil, false
	}
	return conn.User(), func() { slot(); unbind() }, true
}

// handleSession routes a "session" channel: to the VM named by the login
// name when the caller may reach it, otherwise to the front door.
func (s *Server) handleSession(srv *ssh.Server, conn *gossh.ServerConn, newChan gossh.NewChannel, ctx ssh.Context) {
	times := newSessionTimes(ctx)
	id := identityFromConn(conn)
	if id.state != stateUser {
		s.frontDoorSession(conn, newChan, ctx)
		return
	}
	vm, done, ok := s.channelSlot(ctx, conn, id.user, newChan)
	if !ok {
		return
	}
	defer done()
	client, release, err := s.agent(ctx, id.user, vm)
	times.mark(func(t *sessionTimes) *time.Time { return &t.agent })
	switch {
	case errors.Is(err, errs.NotFound):
		s.frontDoorSession(conn, newChan, ctx)
	case err != nil:
		s.unavailableSession(ctx, newChan, id.user, vm, err)
	default:
		defer release()
		a, areqs, err := client.OpenChannel("session", nil)
		times.mark(func(t *sessionTimes) *time.Time { return &t.opened })
		if err != nil {
			s.log.Warn("open agent session", "user", id.user.Name, "vm", vm, "err", err)
			_ = newChan.Reject(gossh.ConnectionFailed, fmt.Sprintf("vm %s: agent: %v", vm, err))
			return
		}
		u, ureqs, err := newChan.Accept()
		if err != nil {
			a.Close()
			return
		}
		ureqs, stopAgentFwd := s.agentForwarding(conn, client, a, ureqs) // forward.go
		defer stopAgentFwd()
		s.relay(id.user, vm, u, ureqs, a, areqs, times)
	}
}

// relay joins the user's session channel u to the agent's session channel a
// until both are done. Requests go both ways with their replies; the
// agent's exit-status/exit-signal reach the user after all of its output,
// followed by EOF and close, the order OpenSSH's sshd uses. times (may be
// nil) records the session's steps for the log.
func (s *Server) relay(u User, vm string, uc gossh.Channel, ureqs <-chan *gossh.Request, ac gossh.Channel, areqs <-chan *gossh.Request, times *sessionTimes) {
	start := time.Now()
	var out sync.WaitGroup
	out.Add(2)
	go func() { defer out.Done(); _, _ = copyBuf(uc, ac) }()
	go func() { defer out.Done(); _, _ = io.Copy(uc.Stderr(), ac.Stderr()) }()
	go func() {
		_, _ = copyBuf(ac, uc)
		_ = ac.CloseWrite()
	}()
	// reqMu is held while a user request is forwarded and answered, so
	// that the user channel is not closed between the agent's reply (which
	// precedes its exit on the wire) and the relayed reply.
	var reqMu sync.Mutex
	go func() {
		for r := range ureqs {
			reqMu.Lock()
			ok, err := ac.SendRequest(r.Type, r.WantReply, r.Payload)
			switch r.Type {
			case "shell", "exec", "subsystem":
				times.mark(func(t *sessionTimes) *time.Time { return &t.started })
			}
			if r.WantReply {
				_ = r.Reply(ok && err == nil, nil)
			}
			reqMu.Unlock()
		}
		// The user closed the channel (or the connection went away).
		_ = ac.Close()
	}()

	var exits []*gossh.Request
	for r := range areqs {
		if r.Type == "exit-status" || r.Type == "exit-signal" {
			times.mark(func(t *sessionTimes) *time.Time { return &t.exited })
			exits = append(exits, r)
			if r.WantReply {
				_ = r.Reply(true, nil)
			}
			continue
		}
		ok, err := uc.SendRequest(r.Type, r.WantReply, r.Payload)
		if r.WantReply {
			_ = r.Reply(ok && err == nil, nil)
		}
	}
	out.Wait()
	reqMu.Lock()
	_ = uc.CloseWrite()
	status := "none"
	for _, r := range exits {
		_, _ = uc.SendRequest(r.Type, false, r.Payload)
		status = describeExit(r)
	}
	_ = uc.Close()
	reqMu.Unlock()
	_ = ac.Close()
	s.log.Info("vm session ended", "user", u.Name, "vm", vm, "exit", status, "duration", time.Since(start).Round(time.Millisecond).String(),
		times.attrs(time.Now()))
}

func describeExit(r *gossh.Request) string {
	switch r.Type {
	case "exit-status":
		var p struct{ Status uint32 }
		if gossh.Unmarshal(r.Payload, &p) == nil {
			return fmt.Sprint(p.Status)
		}
	case "exit-signal":
		var p struct {
			Signal     string
			CoreDumped bool
			Msg, Lang  string
		}
		if gossh.Unmarshal(r.Payload, &p) == nil {
			return "SIG" + p.Signal
		}
	}
	return r.Type
}

// unavailableSession serves a session for a VM that exists but cannot be
// reached now (stopped, agent down). The user sees why; on an interactive
// shell of a stopped VM they are offered to start it, and on success the
// session continues as a relay with the requests recorded so far replayed.
func (s *Server) unavailableSession(ctx ssh.Context, newChan gossh.NewChannel, u User, vm string, cause error) {
	uc, ureqs, err := newChan.Accept()
	if err != nil {
		return
	}
	defer uc.Close()
	var recorded []*gossh.Request
	pty := false
	for r := range ureqs {
		switch r.Type {
		case "pty-req", "env", "window-change":
			if r.Type == "pty-req" {
				pty = true
			}
			recorded = append(recorded, r)
			if r.WantReply {
				_ = r.Reply(true, nil)
			}
		case "shell", "exec", "subsystem":
			_ = r.Reply(true, nil)
			out := io.Writer(uc)
			errOut := io.Writer(uc.Stderr())
			if pty {
				out, errOut = ssh.NewPtyWriter(out), ssh.NewPtyWriter(errOut)
			}
			fmt.Fprintf(errOut, "minions: %v\n", cause)
			if pty && r.Type == "shell" && errors.Is(cause, errs.FailedPrecondition) {
				if a, areqs, ok := s.offerStart(ctx, uc, out, errOut, u, vm); ok {
					for _, rec := range recorded {
						_, _ = a.SendRequest(rec.Type, rec.WantReply, rec.Payload)
					}
					if ok, err := a.SendRequest("shell", true, nil); err != nil || !ok {
						fmt.Fprintf(errOut, "minions: vm %s: shell refused by its agent\n", vm)
						a.Close()
						sendExit(uc, 1)
						return
					}
					s.relay(u, vm, uc, ureqs, a, areqs, nil)
					return
				}
			}
			sendExit(uc, errs.ExitCode(cause))
			return
		default:
			if r.WantReply {
				_ = r.Reply(false, nil)
			}
		}
	}
}

// offerStart asks whether to start vm and does it through the command
// grammar. On success it returns a fresh agent session channel; its
// release runs when the connection ends.
func (s *Server) offerStart(ctx ssh.Context, in io.Reader, out, errOut io.Writer, u User, vm string) (gossh.Channel, <-chan *gossh.Request, bool) {
	fmt.Fprintf(out, "Start %s now? [y/N] ", vm)
	var b [1]byte
	if _, err := in.Read(b[:]); err != nil {
		return nil, nil, false
	}
	answer := strings.ToLower(string(b[:]))
	fmt.Fprintf(out, "%s\n", strings.TrimSpace(answer))
	if answer != "y" {
		return nil, nil, false
	}
	if code := s.cmds.Run(ctx, u, []string{"start", vm}, nil, out, errOut, false); code != 0 {
		return nil, nil, false
	}
	client, release, err := s.agent(ctx, u, vm)
	if err != nil {
		fmt.Fprintf(errOut, "minions: %v\n", err)
		return nil, nil, false
	}
	a, areqs, err := client.OpenChannel("session", nil)
	if err != nil {
		release()
		fmt.Fprintf(errOut, "minions: vm %s: agent: %v\n", vm, err)
		return nil, nil, false
	}
	go func() { <-ctx.Done(); release() }()
	return a, areqs, true
}

func sendExit(c gossh.Channel, code int) {
	_, _ = c.SendRequest("exit-status", false, gossh.Marshal(struct{ Status uint32 }{uint32(code)}))
}

// handleDirectTCPIP relays a -L forward to the VM named by the login name:
// the agent dials the target inside the guest.
func (s *Server) handleDirectTCPIP(srv *ssh.Server, conn *gossh.ServerConn, newChan gossh.NewChannel, ctx ssh.Context) {
	id := identityFromConn(conn)
	switch id.state {
	case stateUser:
	case stateDenied:
		_ = newChan.Reject(gossh.Prohibited, id.msg)
		return
	default:
		_ = newChan.Reject(gossh.Prohibited, s.unregisteredMessage(id.key))
		return
	}
	vm, done, ok := s.channelSlot(ctx, conn, id.user, newChan)
	if !ok {
		return
	}
	defer done()
	client, release, err := s.agent(ctx, id.user, vm)
	if errors.Is(err, errs.NotFound) {
		_ = newChan.Reject(gossh.Prohibited, "port forwarding reaches VMs only: ssh -L ... <vm>@<host>")
		return
	}
	if err != nil {
		_ = newChan.Reject(gossh.Prohibited, err.Error())
		return
	}
	defer release()
	ac, areqs, err := client.OpenChannel("direct-tcpip", newChan.ExtraData())
	if err != nil {
		var oce *gossh.OpenChannelError
		if errors.As(err, &oce) {
			_ = newChan.Reject(oce.Reason, oce.Message)
		} else {
			_ = newChan.Reject(gossh.ConnectionFailed, err.Error())
		}
		return
	}
	uc, ureqs, err := newChan.Accept()
	if err != nil {
		ac.Close()
		return
	}
	go gossh.DiscardRequests(ureqs)
	go gossh.DiscardRequests(areqs)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, _ = copyBuf(ac, uc); _ = ac.CloseWrite() }()
	go func() { defer wg.Done(); _, _ = copyBuf(uc, ac); _ = uc.CloseWrite() }()
	wg.Wait()
	uc.Close()
	ac.Close()
}

// relayBufSize is the copy buffer of a relayed stream. Bigger than io.Copy's
// 32 KiB so that one Read drains several queued SSH packets: each Read of an
// x/crypto/ssh channel sends a window adjustment (a packet, a syscall).
const relayBufSize = 256 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

func copyBuf(dst io.Writer, src io.Reader) (int64, error) {
	b := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(b)
	return io.CopyBuffer(dst, src, *b)
}
