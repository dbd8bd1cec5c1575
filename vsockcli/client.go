package vsockcli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/vsock"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/textsafe"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// Endpoint kinds (hypervisor.AgentEndpoint.Kind).
const (
	KindHybrid = "hybrid-vsock"
	KindVsock  = "vsock"
)

// Config configures Dial.
type Config struct {
	// Signer is the host's key, the one the agent trusts (required).
	Signer ssh.Signer
	// HostKey checks the agent's host key (required; pin it on first
	// contact, e.g. with ssh.FixedHostKey afterwards).
	HostKey ssh.HostKeyCallback
	// User is the guest account to act as (default "root").
	User string
	// Timeout bounds connecting and the SSH handshake (default 10 s).
	Timeout time.Duration
	// Retry is the least time between the starts of two of WaitReady's
	// attempts (default 50 ms): it paces quick failures (a socket not
	// there yet); an attempt that failed after a longer wait is retried
	// at once.
	Retry time.Duration
	// NoPing makes WaitReady return once the SSH handshake is done,
	// without pinging the agent: for a caller whose first request comes
	// at once and may as well be the ping (a fork's re-identification).
	// Each round trip to a guest just restored under TCG on a loaded
	// host costs tens to hundreds of ms.
	NoPing bool
	// Observe, if set, is told how long each phase of WaitReady took:
	// "connect" (the stream to the agent: for hybrid vsock, until the
	// relay's CONNECT was answered, so its link to the guest is up),
	// "handshake" (SSH key exchange and authentication), "ping", and
	// "retry" (a failed attempt and the pause after it). It is called on
	// WaitReady's goroutine and must not block.
	Observe func(phase string, took time.Duration)
}

// Validate reports whether c is usable.
func (c *Config) Validate() error {
	if c.Signer == nil {
		return errs.New(errs.InvalidArgument, "agent client config: no signer")
	}
	if c.HostKey == nil {
		return errs.New(errs.InvalidArgument, "agent client config: no host key callback")
	}
	if c.Timeout < 0 || c.Retry < 0 {
		return errs.New(errs.InvalidArgument, "agent client config: negative timeout or retry interval")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.User == "" {
		c.User = "root"
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Retry == 0 {
		c.Retry = 50 * time.Millisecond
	}
	return c
}

// Client is an SSH connection to one guest agent. It is safe for
// concurrent use; every call opens its own request or channel.
type Client struct {
	ssh *ssh.Client
	// release, when set, makes Close hand the connection back to its
	// owner instead of closing it (see Lease).
	release func()
}

// DialStream connects to ep and returns the raw stream to the agent (for
// hybrid vsock, after the CONNECT handshake).
func DialStream(ctx context.Context, ep hypervisor.AgentEndpoint) (net.Conn, error) {
	switch ep.Kind {
	case KindHybrid:
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", ep.Path)
		if err != nil {
			return nil, errs.New(errs.Unavailable, "dial agent %s: %w", ep.Path, err)
		}
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
		err = connectHybrid(c, ep.Port)
		stop()
		if err != nil {
			c.Close()
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, errs.New(errs.Unavailable, "dial agent %s: %w", ep.Path, err)
		}
		c.SetDeadline(time.Time{})
		return c, nil
	case KindVsock:
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			c, err := vsock.Dial(ep.CID, ep.Port, nil)
			ch <- result{c, err}
		}()
		select {
		case r := <-ch:
			if r.err != nil {
				return nil, errs.New(errs.Unavailable, "dial agent vsock %d:%d: %w", ep.CID, ep.Port, r.err)
			}
			return r.c, nil
		case <-ctx.Done():
			go func() {
				if r := <-ch; r.c != nil {
					r.c.Close()
				}
			}()
			return nil, errs.New(errs.Unavailable, "dial agent vsock %d:%d: %w", ep.CID, ep.Port, ctx.Err())
		}
	}
	return nil, errs.New(errs.InvalidArgument, "dial agent: unknown endpoint kind %q", ep.Kind)
}

// connectHybrid runs the client side of the hybrid vsock handshake. It
// reads the reply byte by byte so no stream byte is consumed.
func connectHybrid(c net.Conn, port uint32) error {
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		return err
	}
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("read connect reply: %w", err)
		}
		if b[0] == '\n' {
			break
		}
		if line = append(line, b[0]); len(line) > 64 {
			return errors.New("connect reply too long")
		}
	}
	if !strings.HasPrefix(string(line), "OK ") {
		return fmt.Errorf("connect refused: %q", line)
	}
	return nil
}

// Dial connects to the agent at ep and completes the SSH handshake.
func Dial(ctx context.Context, ep hypervisor.AgentEndpoint, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	c, err := DialStream(ctx, ep)
	if err != nil {
		return nil, err
	}
	return NewClient(ctx, c, cfg)
}

// agentKex is the key exchange of the agent connection: X25519 alone,
// without the default's ML-KEM-768 hybrid. The agent's side of every
// handshake runs in the guest, under TCG often, and right after a fork or
// a warm restore on code TCG has not translated yet: its CPU time is the
// wait. The connection never leaves the host (a unix socket to the
// hypervisor's virtio-serial port or vsock), so a recorded-now,
// broken-later attacker would have to record it on the host itself.
var agentKex = []string{ssh.KeyExchangeCurve25519}

// NewClient runs the SSH handshake on an established stream to an agent.
// On error c is closed.
func NewClient(ctx context.Context, c net.Conn, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		c.Close()
		return nil, err
	}
	cfg = cfg.withDefaults()
	dl := time.Now().Add(cfg.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	c.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	conn, chans, reqs, err := ssh.NewClientConn(c, "minions-agent", &ssh.ClientConfig{
		Config:          ssh.Config{KeyExchanges: agentKex},
		User:            cfg.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(cfg.Signer)},
		HostKeyCallback: cfg.HostKey,
		Timeout:         cfg.Timeout,
	})
	stop()
	if err != nil {
		c.Close()
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, errs.New(errs.Unauthenticated, "agent handshake: %w", err)
		}
		return nil, errs.New(errs.Unavailable, "agent handshake: %w", err)
	}
	c.SetDeadline(time.Time{})
	return &Client{ssh: ssh.NewClient(conn, chans, reqs)}, nil
}

// WaitReady dials ep and pings the agent (unless cfg.NoPing), retrying
// (temporary failures only: not an authentication or host key failure)
// until it answers or ctx ends. An attempt starts at most every cfg.Retry:
// one that failed after waiting longer (an agent relay that held the
// CONNECT until its own bound while the guest booted) is followed at once
// by the next, so the pause never adds to the boot of a guest that came
// up meanwhile. Each attempt is bounded by cfg.Timeout. The phases' times
// go to cfg.Observe.
func WaitReady(ctx context.Context, ep hypervisor.AgentEndpoint, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	observe := cfg.Observe
	if observe == nil {
		observe = func(string, time.Duration) {}
	}
	var last error
	for {
		t0 := time.Now()
		c, err := waitAttempt(ctx, ep, cfg, observe)
		if err == nil {
			return c, nil
		}
		if errors.Is(err, errs.Unauthenticated) || errors.Is(err, errs.InvalidArgument) {
			return nil, err
		}
		last = err
		if pause := cfg.withDefaults().Retry - time.Since(t0); pause > 0 {
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, errs.New(errs.Unavailable, "wait for agent: %w (last error: %v)", ctx.Err(), last)
			case <-t.C:
			}
		} else if ctx.Err() != nil {
			return nil, errs.New(errs.Unavailable, "wait for agent: %w (last error: %v)", ctx.Err(), last)
		}
		observe("retry", time.Since(t0))
	}
}

// waitAttempt is one attempt of WaitReady: dial, handshake, ping.
func waitAttempt(ctx context.Context, ep hypervisor.AgentEndpoint, cfg Config, observe func(string, time.Duration)) (*Client, error) {
	cfg = cfg.withDefaults()
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	t0 := time.Now()
	conn, err := DialStream(dctx, ep)
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	c, err := NewClient(dctx, conn, cfg)
	if err != nil {
		return nil, err
	}
	t2 := time.Now()
	observe("connect", t1.Sub(t0))
	observe("handshake", t2.Sub(t1))
	if cfg.NoPing {
		return c, nil
	}
	if _, err := c.Ping(ctx); err != nil {
		c.Close()
		return nil, err
	}
	observe("ping", time.Since(t2))
	return c, nil
}

// SSH returns the underlying SSH client (for the gateway, which relays
// channels to the agent one to one).
func (c *Client) SSH() *ssh.Client { return c.ssh }

// Close closes the connection; on a lease it calls the lease's release
// function instead (once) and leaves the connection open.
func (c *Client) Close() error {
	if c.release != nil {
		c.release()
		return nil
	}
	return c.ssh.Close()
}

// Lease returns a client on c's connection whose Close calls release
// (once, however often Close is called) instead of closing the
// connection: a pool lends its connection out this way. Closing c itself
// still closes the connection under every lease.
func (c *Client) Lease(release func()) *Client {
	var once sync.Once
	return &Client{ssh: c.ssh, release: func() { once.Do(release) }}
}

// call sends a Minions global request and decodes its JSON reply.
func (c *Client) call(ctx context.Context, name string, req, resp any) error {
	payload, err := json.Marshal(req)
	if err != nil {
		return err
	}
	type result struct {
		ok    bool
		reply []byte
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		ok, reply, err := c.ssh.SendRequest(name, true, payload)
		ch <- result{ok, reply, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		return errs.New(errs.Unavailable, "agent %s: %w", name, ctx.Err())
	}
	if r.err != nil {
		return errs.New(errs.Unavailable, "agent %s: %w", name, r.err)
	}
	if !r.ok {
		var e proto.Error
		if json.Unmarshal(r.reply, &e) == nil && e.Error != "" {
			return errs.New(errs.FailedPrecondition, "agent %s: %s", name, e.Error)
		}
		return errs.New(errs.FailedPrecondition, "agent %s: request refused", name)
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(r.reply, resp); err != nil {
		return fmt.Errorf("agent %s: decode reply: %w", name, err)
	}
	return nil
}

// Ping checks the agent answers.
func (c *Client) Ping(ctx context.Context) (proto.PingReply, error) {
	var r proto.PingReply
	return r, c.call(ctx, proto.ReqPing, struct{}{}, &r)
}

// Status returns the guest's status.
// Every string in it comes from the guest and is cleaned of terminal
// control (textsafe.Clean) before it leaves this package.
func (c *Client) Status(ctx context.Context) (proto.Status, error) {
	var r proto.Status
	err := c.call(ctx, proto.ReqStatus, struct{}{}, &r)
	return CleanStatus(r), err
}

// CleanStatus strips terminal control from every guest-supplied string of
// st (hostname, kernel, addresses, agent version, machine ID).
func CleanStatus(st proto.Status) proto.Status {
	st.Hostname = textsafe.Clean(st.Hostname)
	st.Kernel = textsafe.Clean(st.Kernel)
	st.AgentVersion = textsafe.Clean(st.AgentVersion)
	st.MachineID = textsafe.Clean(st.MachineID)
	st.AgentWarning = textsafe.Clean(st.AgentWarning)
	st.Addrs = textsafe.Strings(append([]string(nil), st.Addrs...))
	return st
}

// Configure applies cfg in the guest.
func (c *Client) Configure(ctx context.Context, cfg proto.Configure) error {
	return c.call(ctx, proto.ReqConfigure, cfg, nil)
}

// FSFreeze freezes the guest's writable filesystems and returns their
// mount points. They thaw on FSThaw, when this connection closes, or after
// the agent's timeout (30 s).
func (c *Client) FSFreeze(ctx context.Context) ([]string, error) {
	var r proto.FreezeReply
	return r.Frozen, c.call(ctx, proto.ReqFSFreeze, struct{}{}, &r)
}

// FSThaw thaws what FSFreeze froze; it is idempotent.
func (c *Client) FSThaw(ctx context.Context) error {
	return c.call(ctx, proto.ReqFSThaw, struct{}{}, nil)
}

// GrowFS grows the guest's root filesystem to its disk and returns its new
// size in bytes.
func (c *Client) GrowFS(ctx context.Context) (int64, error) {
	var r proto.GrowReply
	return r.Size, c.call(ctx, proto.ReqGrowFS, struct{}{}, &r)
}

// Shutdown asks the guest to power off (or reboot). It returns once the
// agent acknowledged; the VM goes down shortly after.
func (c *Client) Shutdown(ctx context.Context, reboot bool) error {
	return c.call(ctx, proto.ReqShutdown, proto.Shutdown{Reboot: reboot}, nil)
}

// DialTCP opens a TCP connection from inside the guest (direct-tcpip).
func (c *Client) DialTCP(ctx context.Context, addr string) (net.Conn, error) {
	conn, err := c.ssh.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, errs.New(errs.Unavailable, "dial %s in guest: %w", addr, err)
	}
	return conn, nil
}

// SFTP opens an sftp session; the caller closes it.
func (c *Client) SFTP() (*sftp.Client, error) {
	s, err := sftp.NewClient(c.ssh)
	if err != nil {
		return nil, errs.New(errs.Unavailable, "agent sftp: %w", err)
	}
	return s, nil
}

// WriteFile writes data to name in the guest atomically (a temporary file
// renamed over name) with the given mode.
func (c *Client) WriteFile(ctx context.Context, name string, data []byte, mode os.FileMode) error {
	s, err := c.SFTP()
	if err != nil {
		return err
	}
	defer s.Close()
	defer context.AfterFunc(ctx, func() { s.Close() })()
	tmp := path.Join(path.Dir(name), "."+path.Base(name)+".minions-tmp")
	f, err := s.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		s.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		s.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := s.Chmod(tmp, mode); err != nil {
		s.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := s.PosixRename(tmp, name); err != nil {
		s.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// ReadFile reads name from the guest.
func (c *Client) ReadFile(ctx context.Context, name string) ([]byte, error) {
	s, err := c.SFTP()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	defer context.AfterFunc(ctx, func() { s.Close() })()
	f, err := s.Open(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errs.New(errs.NotFound, "read %s: %w", name, err)
		}
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	defer f.Close()
	data, err := io.ReadAll(bufio.NewReaderSize(f, 1<<16))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return data, nil
}

// ShellQuote quotes argv for /bin/sh so that the shell sees exactly these
// words.
func ShellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
		}) < 0 {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
