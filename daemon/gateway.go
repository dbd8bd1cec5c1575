package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/ssh"
	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/gateway"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/tui"
	"github.com/minionsdev/minions/vsockcli"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"
)

// startGateway runs the SSH front door (dashboard, commands, `ssh vm@host`)
// and returns its bound address ("" when cfg.SSHBind is off).
func startGateway(ctx context.Context, g *errgroup.Group, cfg config.Config, e *Env, log *slog.Logger, paths Paths) (string, error) {
	if cfg.SSHBind == "" {
		return "", nil
	}
	fe := &frontend{svc: e.Service, urls: vmURL(cfg),
		agents: newAgentPool(e.Service, agentIdle, log.With("component", "gateway"))}
	srv, err := gateway.New(gateway.Config{
		Bind: cfg.SSHBind, HostKeyPath: filepath.Join(paths.State, "keys", "ssh_host_ed25519"),
		Policy: cfg.Policy, InviteCode: cfg.InviteCode, Log: log,
	}, fe, fe, fe, fe.dashboard)
	if err != nil {
		return "", err
	}
	g.Go(func() error {
		defer fe.agents.closeAll()
		return srv.Run(ctx)
	})
	return srv.Addr().String(), nil
}

// vmURL returns the URL a VM is served at, or "".
func vmURL(cfg config.Config) func(string) string {
	return func(vm string) string {
		switch {
		case cfg.Domain != "" && cfg.ProxyBind != "":
			return "https://" + vm + "." + cfg.Domain
		case cfg.HTTPBind != "":
			_, port, _ := splitPort(cfg.HTTPBind)
			return "http://" + vm + ".localhost:" + port
		}
		return ""
	}
}

// frontend adapts the service to the gateway's interfaces.
type frontend struct {
	svc    *service.Service
	urls   func(string) string
	agents *agentPool
}

func (f *frontend) caller(ctx context.Context, u gateway.User) (service.Caller, error) {
	return f.svc.CallerByName(ctx, u.Name)
}

func (f *frontend) Authenticate(ctx context.Context, key gossh.PublicKey) (gateway.User, error) {
	c, err := f.svc.UserByKey(ctx, key)
	if err != nil {
		return gateway.User{}, err
	}
	return gateway.User{Name: c.Name, Admin: c.Admin, Credential: c.Cred.ID}, nil
}

// Bind ends the returned context when the key behind u is removed or its
// user deleted (service.BindCredential).
func (f *frontend) Bind(ctx context.Context, u gateway.User) (context.Context, func()) {
	c, err := f.caller(ctx, u)
	if err != nil {
		if errors.Is(err, errs.NotFound) {
			bound, cancel := context.WithCancelCause(ctx)
			cancel(service.ErrCredentialRevoked)
			return bound, func() {}
		}
		// Cannot tell now: keep the session unbound rather than cut it.
		bound, cancel := context.WithCancel(ctx)
		return bound, cancel
	}
	if u.Credential != "" {
		c.Cred = service.Credential{Kind: service.CredSSHKey, ID: u.Credential}
	}
	return f.svc.BindCredential(ctx, c)
}

func (f *frontend) Register(ctx context.Context, name string, key gossh.PublicKey, invite string) (gateway.User, error) {
	c, err := f.svc.RegisterUser(ctx, name, key)
	if err != nil {
		return gateway.User{}, err
	}
	u := gateway.User{Name: c.Name, Admin: c.Admin}
	if kc, err := f.svc.UserByKey(ctx, key); err == nil {
		u.Credential = kc.Cred.ID
	}
	return u, nil
}

func (f *frontend) Agent(ctx context.Context, u gateway.User, vm string) (*gossh.Client, func(), error) {
	c, err := f.caller(ctx, u)
	if err != nil {
		return nil, nil, err
	}
	return f.agents.get(ctx, c, vm)
}

func (f *frontend) Run(ctx context.Context, u gateway.User, args []string, stdin io.Reader, stdout, stderr io.Writer, interactive bool) int {
	c, err := f.caller(ctx, u)
	if err != nil {
		return cli.Run(ctx, &cli.Env{Stdin: stdin, Stdout: stdout, Stderr: stderr, Remote: true,
			Open: func(context.Context, *cli.Global) (cli.Backend, error) { return nil, err }}, args)
	}
	env := &cli.Env{Stdin: stdin, Stdout: stdout, Stderr: stderr, Remote: true, Interactive: interactive,
		Open: func(context.Context, *cli.Global) (cli.Backend, error) {
			return &cli.Local{Svc: f.svc, Caller: c, SessionKey: u.Key}, nil
		},
		Extra: remoteCommands()}
	return cli.Run(ctx, env, args)
}

func (f *frontend) dashboard(sess ssh.Session, u gateway.User, r *lipgloss.Renderer) tea.Model {
	c, err := f.caller(sess.Context(), u)
	if err != nil {
		return errModel{err}
	}
	m, err := tui.New(tui.Options{Backend: dashBackend{be: &cli.Local{Svc: f.svc, Caller: c}, url: f.urls},
		Renderer: r, User: u.Name, Admin: u.Admin, Context: sess.Context()})
	if err != nil {
		return errModel{err}
	}
	return m
}

// errModel shows an error and quits.
type errModel struct{ err error }

func (m errModel) Init() tea.Cmd                       { return tea.Quit }
func (m errModel) Update(tea.Msg) (tea.Model, tea.Cmd) { return m, tea.Quit }
func (m errModel) View() string                        { return "minions: " + m.err.Error() + "\n" }

// agentIdle is how long an agent connection nobody uses stays open.
const agentIdle = 30 * time.Second

// agentPingTimeout bounds the liveness check of a pooled agent connection.
const agentPingTimeout = 3 * time.Second

// agentPool shares one agent connection per running VM among the gateway's
// sessions and forwards, so that a session costs one channel on an open
// SSH connection instead of a dial and a handshake with the guest.
// Authorisation is checked on every get (service.Get as the caller); the
// connection is keyed by VM ID, hypervisor PID and start time, so a
// restarted, renamed or re-created VM never gets another's connection. A
// connection is closed when it has been unused for idle, and forgotten as
// soon as it dies (the VM stopped) or stops answering a ping, which every
// reuse sends first. Safe for concurrent use.
type agentPool struct {
	svc  agentSource
	idle time.Duration
	log  *slog.Logger

	mu     sync.Mutex
	conns  map[string]*pooledAgent
	closed bool
}

// agentSource is what the pool needs of the service.
type agentSource interface {
	// Get returns the VM named name if c may see it.
	Get(ctx context.Context, c service.Caller, name string) (service.VM, error)
	// Agent dials the agent of the VM named name for c.
	Agent(ctx context.Context, c service.Caller, name string) (*vsockcli.Client, error)
}

var _ agentSource = (*service.Service)(nil)

type pooledAgent struct {
	cl    *vsockcli.Client
	refs  int
	dead  bool
	timer *time.Timer
}

func newAgentPool(svc agentSource, idle time.Duration, log *slog.Logger) *agentPool {
	return &agentPool{svc: svc, idle: idle, log: log, conns: map[string]*pooledAgent{}}
}

// get returns the agent connection of vm for caller c and its release
// function (call it once). Errors are those of service.Agent.
func (p *agentPool) get(ctx context.Context, c service.Caller, vm string) (*gossh.Client, func(), error) {
	v, err := p.svc.Get(ctx, c, vm)
	if err != nil {
		return nil, nil, err
	}
	if v.Status != store.StateRunning || v.PID == 0 {
		// Not pooled: service.Agent says why (stopped, paused, ...).
		cl, err := p.svc.Agent(ctx, c, vm)
		if err != nil {
			return nil, nil, err
		}
		return cl.SSH(), func() { cl.Close() }, nil
	}
	key := fmt.Sprintf("%s/%d/%d", v.ID, v.PID, v.StartedAt.UnixNano())
	if pa := p.take(key); pa != nil {
		// A connection to a hung guest must not hang the session: it
		// answers a ping, or a fresh dial decides.
		pctx, cancel := context.WithTimeout(ctx, agentPingTimeout)
		_, err := pa.cl.Ping(pctx)
		cancel()
		if err == nil {
			return pa.cl.SSH(), p.releaser(key, pa), nil
		}
		p.log.Warn("pooled agent connection does not answer; dialing again", "vm_id", v.ID, "err", err)
		p.mu.Lock()
		pa.dead = true
		if p.conns[key] == pa {
			delete(p.conns, key)
		}
		p.mu.Unlock()
		p.releaser(key, pa)()
	}
	cl, err := p.svc.Agent(ctx, c, vm)
	if err != nil {
		return nil, nil, err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		cl.Close()
		return nil, nil, errs.New(errs.Unavailable, "gateway is shutting down")
	}
	if pa := p.conns[key]; pa != nil && !pa.dead { // another session dialed too
		p.mu.Unlock()
		cl.Close()
		if pa := p.take(key); pa != nil {
			return pa.cl.SSH(), p.releaser(key, pa), nil
		}
		return p.get(ctx, c, vm)
	}
	pa := &pooledAgent{cl: cl, refs: 1}
	p.conns[key] = pa
	p.mu.Unlock()
	go func() {
		err := cl.SSH().Wait()
		p.mu.Lock()
		pa.dead = true
		if p.conns[key] == pa {
			delete(p.conns, key)
		}
		p.mu.Unlock()
		p.log.Debug("agent connection closed", "vm_id", v.ID, "err", err)
	}()
	return cl.SSH(), p.releaser(key, pa), nil
}

// take returns the live pooled connection under key with a reference
// taken, or nil.
func (p *agentPool) take(key string) *pooledAgent {
	p.mu.Lock()
	defer p.mu.Unlock()
	pa := p.conns[key]
	if pa == nil || pa.dead || p.closed {
		return nil
	}
	pa.refs++
	if pa.timer != nil {
		pa.timer.Stop()
		pa.timer = nil
	}
	return pa
}

func (p *agentPool) releaser(key string, pa *pooledAgent) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			pa.refs--
			if pa.refs > 0 {
				return
			}
			if pa.dead || p.closed {
				pa.cl.Close()
				return
			}
			pa.timer = time.AfterFunc(p.idle, func() {
				p.mu.Lock()
				defer p.mu.Unlock()
				if pa.refs == 0 && pa.timer != nil {
					pa.dead = true
					if p.conns[key] == pa {
						delete(p.conns, key)
					}
					pa.cl.Close()
				}
			})
		})
	}
}

// closeAll closes every connection nobody uses and makes the pool close
// the others on their last release.
func (p *agentPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for key, pa := range p.conns {
		delete(p.conns, key)
		if pa.timer != nil {
			pa.timer.Stop()
		}
		if pa.refs == 0 {
			pa.cl.Close()
		}
	}
}
