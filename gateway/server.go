package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/ssh"
	"github.com/charmbracelet/wish"
	gossh "golang.org/x/crypto/ssh"
)

// User is an authenticated Minions user.
type User struct {
	Name  string
	Admin bool
	// Key is the public key this session authenticated with (set for the
	// sessions of registered users): proof that the user holds it.
	Key gossh.PublicKey
	// Credential identifies the key the connection authenticated with
	// (opaque to the gateway; Users.Bind uses it). Empty: not revocable.
	Credential string
}

// Users maps public keys to users. Implementations must be safe for
// concurrent use.
type Users interface {
	// Authenticate returns the user owning key, or an errs.NotFound error
	// when the key is not registered. Any other error is treated as
	// "cannot decide now" and the client is told to retry later.
	Authenticate(ctx context.Context, key gossh.PublicKey) (User, error)
	// Register creates a user named name owning key. invite is the code
	// the user typed (already checked by the gateway against the policy).
	// Errors: errs.InvalidArgument for a bad name, errs.AlreadyExists for a
	// taken name or key, errs.PermissionDenied to refuse the sign-up.
	Register(ctx context.Context, name string, key gossh.PublicKey, invite string) (User, error)
	// Bind returns a context derived from ctx that ends as soon as the
	// credential u authenticated with is revoked (its key removed, its
	// user deleted), or at once if it is already gone; release ends the
	// watch. The gateway closes the connection when that context ends
	// before release.
	Bind(ctx context.Context, u User) (bound context.Context, release func())
}

// VMs gives the gateway the guest agent connection of a VM. Implementations
// must be safe for concurrent use.
type VMs interface {
	// Agent returns an SSH client connected to the guest agent of the VM
	// named vmName, if user may reach it. release is called once when the
	// gateway no longer uses the client (the client itself stays owned by
	// the implementation: the gateway never closes it). Errors:
	// errs.NotFound when the VM does not exist or is not the user's (never
	// reveal others' VMs; the gateway then treats the name as an ordinary
	// login name), errs.FailedPrecondition when the VM is not running, with
	// a message that says how to start it, errs.Unavailable when its agent
	// cannot be reached.
	Agent(ctx context.Context, user User, vmName string) (client *gossh.Client, release func(), err error)
}

// Commands runs one command of the Minions command grammar for user
// (`ssh host list --json`). interactive is true when the session has a PTY
// (destructive commands may then prompt on stdin; otherwise they need
// --yes, and output must be plain text without escape codes). It returns
// the process exit status.
type Commands interface {
	Run(ctx context.Context, user User, args []string, stdin io.Reader, stdout, stderr io.Writer, interactive bool) int
}

// Dashboard builds the TUI for an interactive session. renderer is the
// session's own lipgloss renderer: build every style from it.
type Dashboard func(sess ssh.Session, user User, renderer *lipgloss.Renderer) tea.Model

// ExitUnregistered is the exit status of a non-interactive session whose
// key is not registered.
const ExitUnregistered = 10

// Server is the SSH gateway.
type Server struct {
	cfg       Config
	log       *slog.Logger
	users     Users
	vms       VMs
	cmds      Commands
	dashboard Dashboard
	limiter   *failureLimiter
	conns     *connLimiter
	signer    gossh.Signer
	fwd       forwards // ssh -R and -A (forward.go)

	srv *ssh.Server
	ln  net.Listener

	baseCtx context.Context
	cancel  context.CancelFunc
	runOnce sync.Once
}

// New validates cfg, loads (or creates) the host key and binds the
// listening socket, so that Addr is valid and bind errors surface here.
// Serve with Run.
func New(cfg Config, users Users, vms VMs, cmds Commands, dashboard Dashboard) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if users == nil || vms == nil || cmds == nil || dashboard == nil {
		return nil, errors.New("gateway: users, vms, cmds and dashboard are required")
	}
	signer, err := LoadOrCreateHostKey(cfg.HostKeyPath)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Log.With("component", "gateway"),
		users:     users,
		vms:       vms,
		cmds:      cmds,
		dashboard: dashboard,
		limiter:   newFailureLimiter(cfg.AuthRate, time.Minute, nil),
		conns:     newConnLimiter(cfg),
		signer:    signer,
	}
	s.baseCtx, s.cancel = context.WithCancel(context.Background())

	idle := cfg.IdleTimeout
	if idle < 0 {
		idle = 0
	}
	srv, err := wish.NewServer(
		wish.WithAddress(cfg.Bind),
		wish.WithVersion("Minions"),
		wish.WithIdleTimeout(idle),
		// Public keys are checked in serverConfig (see auth.go); this
		// handler only explains to key-less clients why they fail. Having
		// it set also keeps charmbracelet/ssh from allowing no-auth logins.
		wish.WithKeyboardInteractiveAuth(s.keyboardInteractive),
		func(srv *ssh.Server) error {
			srv.AddHostKey(signer)
			srv.ServerConfigCallback = s.serverConfig
			srv.ConnCallback = s.admitConn // connection limits (connlimit.go)
			// Sessions go through handleSession; this is a fallback only.
			srv.Handler = func(sess ssh.Session) { s.frontDoor(sess, &windows{updates: make(chan ssh.Window, 1)}) }
			srv.ChannelHandlers = map[string]ssh.ChannelHandler{
				"session":      s.handleSession,
				"direct-tcpip": s.handleDirectTCPIP,
			}
			srv.RequestHandlers = map[string]ssh.RequestHandler{
				reqTCPIPForward:       s.handleTCPIPForward,
				reqCancelTCPIPForward: s.handleCancelTCPIPForward,
			}
			srv.SubsystemHandlers = map[string]ssh.SubsystemHandler{}
			srv.ConnectionFailedCallback = func(conn net.Conn, err error) {
				s.log.Debug("ssh handshake failed", "remote", conn.RemoteAddr().String(), "err", err)
			}
			return nil
		},
	)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	s.srv = srv
	ln, err := net.Listen("tcp", cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("gateway: listen %s: %w", cfg.Bind, err)
	}
	s.ln = ln
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// HostKey is the server's public host key (for known_hosts lines).
func (s *Server) HostKey() gossh.PublicKey { return s.signer.PublicKey() }

// Run serves connections until ctx ends, then stops accepting, lets open
// connections finish for Config.ShutdownGrace and closes the rest. It
// returns nil after a shutdown caused by ctx, or the error that stopped
// serving. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	err := errors.New("gateway: Run called twice")
	s.runOnce.Do(func() { err = s.run(ctx) })
	return err
}

func (s *Server) run(ctx context.Context) error {
	s.log.Info("ssh gateway listening", "addr", s.Addr().String(), "policy", s.cfg.Policy)
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.srv.Serve(s.ln) }()
	select {
	case err := <-serveErr:
		s.cancel()
		if errors.Is(err, ssh.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("gateway: serve: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("ssh gateway shutting down", "grace", s.cfg.ShutdownGrace.String())
	graceCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancel()
	if err := s.srv.Shutdown(graceCtx); err != nil {
		s.log.Info("closing remaining ssh connections", "err", err)
	}
	s.cancel() // ends sessions still running (dashboards, relays)
	_ = s.srv.Close()
	<-serveErr
	return nil
}
