package service

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"

	"github.com/minionsdev/minions/vsockcli"
)

// agentClient dials VM name's guest agent for c (authorization: c must
// see the VM; it must run). It is the one place frontend-facing streams
// get an agent connection, so moving agent dialing (to the per-host
// engine) changes only this function.
func (s *Service) agentClient(ctx context.Context, c Caller, name string) (*vsockcli.Client, error) {
	return s.Agent(ctx, c, name)
}

// Exec runs req in VM name's guest as c (see GuestBackend.Exec).
func (s *Service) Exec(ctx context.Context, c Caller, name string, req ExecRequest) (int, error) {
	g, err := s.OpenGuest(ctx, c, name)
	if err != nil {
		return -1, err
	}
	defer g.Close()
	return g.Exec(ctx, req)
}

// GuestSession is an open connection to one VM's guest agent, opened
// with the caller's authorization checked. It lets a frontend that must
// answer before streaming (the API's exec upgrade) learn of a refusal
// first. Close it once.
type GuestSession struct {
	cl *vsockcli.Client
}

// OpenGuest connects to VM name's guest agent for c: errs.NotFound when c
// may not see it, errs.FailedPrecondition when it does not run,
// errs.Unavailable when its agent does not answer.
func (s *Service) OpenGuest(ctx context.Context, c Caller, name string) (*GuestSession, error) {
	cl, err := s.agentClient(ctx, c, name)
	if err != nil {
		return nil, err
	}
	return &GuestSession{cl: cl}, nil
}

// Close closes the connection (ending what runs over it).
func (g *GuestSession) Close() error { return g.cl.Close() }

// Exec runs req (see GuestBackend.Exec). Several may run at once.
func (g *GuestSession) Exec(ctx context.Context, req ExecRequest) (int, error) {
	vreq := vsockcli.ExecRequest{Command: req.Command, Argv: req.Argv, Env: req.Env,
		Stdin: req.Stdin, Stdout: req.Stdout, Stderr: req.Stderr,
		TTY: req.TTY, Term: req.Term, Width: req.Width, Height: req.Height, Signals: req.Signals}
	if req.Resize != nil {
		resize := make(chan vsockcli.WindowSize, 1)
		done := make(chan struct{})
		defer close(done)
		go func() {
			for {
				select {
				case <-done:
					return
				case ws, ok := <-req.Resize:
					if !ok {
						return
					}
					select {
					case resize <- vsockcli.WindowSize{Width: ws.Width, Height: ws.Height}:
					case <-done:
						return
					}
				}
			}
		}()
		vreq.Resize = resize
	}
	return g.cl.Exec(ctx, vreq)
}

// PingGuest dials VM name's guest agent for c and returns the round trip
// of one ping (the dial not included), for metrics.
func (s *Service) PingGuest(ctx context.Context, c Caller, name string) (time.Duration, error) {
	g, err := s.OpenGuest(ctx, c, name)
	if err != nil {
		return 0, err
	}
	defer g.Close()
	start := time.Now()
	if _, err := g.cl.Ping(ctx); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// CleanGuestStatus returns st without terminal control in the strings the
// guest wrote (for frontends that print a status they did not clean
// themselves, e.g. one from a remote server).
func CleanGuestStatus(st GuestStatus) GuestStatus { return vsockcli.CleanStatus(st) }

// Forward opens a TCP connection to port on VM name's own loopback
// (127.0.0.1 in the guest), through its agent, for c: a port forward.
// Closing the connection releases everything it holds. Errors:
// errs.InvalidArgument for a port outside 1-65535, then those of
// OpenGuest, and errs.Unavailable when nothing accepts the connection in
// the guest.
func (s *Service) Forward(ctx context.Context, c Caller, name string, port int) (io.ReadWriteCloser, error) {
	if port < 1 || port > 65535 {
		return nil, errs.New(errs.InvalidArgument, "port %d: want 1-65535", port)
	}
	g, err := s.OpenGuest(ctx, c, name)
	if err != nil {
		return nil, err
	}
	conn, err := g.cl.SSH().Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		g.Close()
		return nil, errs.New(errs.Unavailable, "forward to port %d of vm %s: %v", port, name, err)
	}
	return &forwardConn{Conn: conn, g: g}, nil
}

// forwardConn is a forwarded connection that closes its agent connection
// with it.
type forwardConn struct {
	net.Conn
	g    *GuestSession
	once sync.Once
}

func (f *forwardConn) Close() error {
	err := f.Conn.Close()
	f.once.Do(func() { f.g.Close() })
	return err
}
