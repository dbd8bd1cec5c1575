package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/ssh"
	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/gateway"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/tui"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"
)

// startGateway runs the SSH front door (dashboard, commands, `ssh vm@host`)
// and returns its bound address ("" when cfg.SSHBind is off).
func startGateway(ctx context.Context, g *errgroup.Group, cfg config.Config, e *local.Installation, log *slog.Logger, paths local.Paths) (string, error) {
	if cfg.SSHBind == "" {
		return "", nil
	}
	fe := &frontend{svc: e.Service, urls: vmURL(cfg)}
	srv, err := gateway.New(gateway.Config{
		Bind: cfg.SSHBind, HostKeyPath: filepath.Join(paths.State, "keys", "ssh_host_ed25519"),
		Policy: cfg.Policy, InviteCode: cfg.InviteCode, Log: log,
	}, fe, fe, fe, fe.dashboard)
	if err != nil {
		return "", err
	}
	g.Go(func() error { return srv.Run(ctx) })
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
	svc  *service.Service
	urls func(string) string
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

// Agent lends the VM's pooled agent connection (the engine keeps one per
// running VM); release returns it.
func (f *frontend) Agent(ctx context.Context, u gateway.User, vm string) (*gossh.Client, func(), error) {
	c, err := f.caller(ctx, u)
	if err != nil {
		return nil, nil, err
	}
	cl, err := f.svc.Agent(ctx, c, vm)
	if err != nil {
		return nil, nil, err
	}
	return cl.SSH(), func() { cl.Close() }, nil
}

func (f *frontend) Run(ctx context.Context, u gateway.User, args []string, stdin io.Reader, stdout, stderr io.Writer, interactive bool) int {
	c, err := f.caller(ctx, u)
	if err != nil {
		return cli.Run(ctx, &cli.Env{Stdin: stdin, Stdout: stdout, Stderr: stderr, Remote: true,
			Open: func(context.Context, *cli.Global) (service.Backend, error) { return nil, err }}, args)
	}
	env := &cli.Env{Stdin: stdin, Stdout: stdout, Stderr: stderr, Remote: true, Interactive: interactive,
		Open: func(context.Context, *cli.Global) (service.Backend, error) {
			return f.svc.As(c).WithSessionKey(u.Key), nil
		}}
	return cli.Run(ctx, env, args)
}

func (f *frontend) dashboard(sess ssh.Session, u gateway.User, r *lipgloss.Renderer) tea.Model {
	c, err := f.caller(sess.Context(), u)
	if err != nil {
		return errModel{err}
	}
	m, err := tui.New(tui.Options{Backend: f.svc.As(c), URL: f.urls,
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
