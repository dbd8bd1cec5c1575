package gateway

import (
	"cmp"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// Registration policies for unknown keys.
const (
	PolicyOpen   = "open"   // anyone with a key may pick a name and sign up
	PolicyInvite = "invite" // sign-up needs Config.InviteCode
	PolicyClosed = "closed" // no sign-up; an admin adds keys
)

// Defaults applied by Config.withDefaults for zero fields.
const (
	DefaultBind          = "0.0.0.0:2222"
	DefaultPolicy        = PolicyClosed
	DefaultAuthRate      = 10
	DefaultIdleTimeout   = time.Hour
	DefaultShutdownGrace = 10 * time.Second

	DefaultMaxConnections              = 1000
	DefaultMaxConnectionsPerSource     = 50
	DefaultMaxUnauthenticated          = 100
	DefaultMaxUnauthenticatedPerSource = 10
	DefaultLoginGrace                  = 30 * time.Second
	DefaultMaxSessionsPerUser          = 50
)

// Config configures the gateway. The zero value of every field means its
// default.
type Config struct {
	// Bind is the TCP address to listen on. Default "0.0.0.0:2222".
	Bind string
	// HostKeyPath is the server's persistent ed25519 host key (OpenSSH
	// PEM). It is created with mode 0600 (its directory 0700) on first start.
	// Required.
	HostKeyPath string
	// Policy governs what an unknown key may do: "open", "invite" or
	// "closed". Default "closed".
	Policy string
	// InviteCode is the code a new user must type under the "invite"
	// policy. Required (and only allowed) with that policy.
	InviteCode string
	// AuthRate is how many failed authentications a client IP may cause per
	// minute before it is refused (with a message) until the minute is
	// over. Default 10; must not be negative.
	AuthRate int
	// IdleTimeout closes a connection that has seen no traffic for this
	// long. Default 1h; a negative value disables it.
	IdleTimeout time.Duration
	// ShutdownGrace is how long Run waits for open connections to finish
	// after its context ends before closing them. Default 10s.
	ShutdownGrace time.Duration

	// Connection limits. A source is an IPv4 address or an IPv6 /64. A
	// connection over a limit is closed at once with a one-line reason;
	// a session or forward over MaxSessionsPerUser is refused with the
	// reason ("resource shortage"). Zero means the default, a negative
	// value means no limit.

	// MaxConnections caps open connections. Default 1000.
	MaxConnections int
	// MaxConnectionsPerSource caps open connections per source. Default 50.
	MaxConnectionsPerSource int
	// MaxUnauthenticated caps connections that have not authenticated
	// yet (handshakes, logins in progress). Default 100.
	MaxUnauthenticated int
	// MaxUnauthenticatedPerSource is MaxUnauthenticated per source.
	// Default 10.
	MaxUnauthenticatedPerSource int
	// LoginGrace closes a connection that has not authenticated this long
	// after it was accepted. Default 30s.
	LoginGrace time.Duration
	// MaxSessionsPerUser caps the concurrent sessions (shells, commands,
	// `ssh vm@host`, dashboards) and port forwards of one user over all
	// their connections. Default 50.
	MaxSessionsPerUser int

	// Log receives the gateway's logs (component=gateway). Default
	// slog.Default().
	Log *slog.Logger
}

func (c Config) withDefaults() Config {
	c.Bind = cmp.Or(c.Bind, DefaultBind)
	c.Policy = cmp.Or(c.Policy, DefaultPolicy)
	c.AuthRate = cmp.Or(c.AuthRate, DefaultAuthRate)
	c.IdleTimeout = cmp.Or(c.IdleTimeout, DefaultIdleTimeout)
	c.ShutdownGrace = cmp.Or(c.ShutdownGrace, DefaultShutdownGrace)
	// A defaulted per-source cap never exceeds an explicit global one.
	if c.MaxConnectionsPerSource == 0 && c.MaxConnections > 0 && c.MaxConnections < DefaultMaxConnectionsPerSource {
		c.MaxConnectionsPerSource = c.MaxConnections
	}
	if c.MaxUnauthenticatedPerSource == 0 && c.MaxUnauthenticated > 0 && c.MaxUnauthenticated < DefaultMaxUnauthenticatedPerSource {
		c.MaxUnauthenticatedPerSource = c.MaxUnauthenticated
	}
	for _, f := range []struct {
		v   *int
		def int
	}{
		{&c.MaxConnections, DefaultMaxConnections},
		{&c.MaxConnectionsPerSource, DefaultMaxConnectionsPerSource},
		{&c.MaxUnauthenticated, DefaultMaxUnauthenticated},
		{&c.MaxUnauthenticatedPerSource, DefaultMaxUnauthenticatedPerSource},
		{&c.MaxSessionsPerUser, DefaultMaxSessionsPerUser},
	} {
		switch {
		case *f.v == 0:
			*f.v = f.def
		case *f.v < 0:
			*f.v = 0 // no limit
		}
	}
	switch {
	case c.LoginGrace == 0:
		c.LoginGrace = DefaultLoginGrace
	case c.LoginGrace < 0:
		c.LoginGrace = 0 // no limit
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return c
}

// Validate reports the first problem with c (after defaults), as an
// errs.InvalidArgument error.
func (c Config) Validate() error {
	c = c.withDefaults()
	if _, _, err := net.SplitHostPort(c.Bind); err != nil {
		return errs.New(errs.InvalidArgument, "gateway config: bind %q: %w", c.Bind, err)
	}
	if c.HostKeyPath == "" {
		return errs.New(errs.InvalidArgument, "gateway config: host key path is required")
	}
	switch c.Policy {
	case PolicyOpen, PolicyClosed:
		if c.InviteCode != "" {
			return errs.New(errs.InvalidArgument, "gateway config: invite code set but policy is %q", c.Policy)
		}
	case PolicyInvite:
		if c.InviteCode == "" {
			return errs.New(errs.InvalidArgument, "gateway config: policy \"invite\" needs an invite code")
		}
	default:
		return errs.New(errs.InvalidArgument, "gateway config: policy %q: want open, invite or closed", c.Policy)
	}
	if c.AuthRate < 0 {
		return errs.New(errs.InvalidArgument, "gateway config: auth rate %d: must not be negative", c.AuthRate)
	}
	if c.MaxConnectionsPerSource > 0 && c.MaxConnections > 0 && c.MaxConnectionsPerSource > c.MaxConnections {
		return errs.New(errs.InvalidArgument, "gateway config: max connections per source %d exceeds max connections %d", c.MaxConnectionsPerSource, c.MaxConnections)
	}
	if c.MaxUnauthenticatedPerSource > 0 && c.MaxUnauthenticated > 0 && c.MaxUnauthenticatedPerSource > c.MaxUnauthenticated {
		return errs.New(errs.InvalidArgument, "gateway config: max unauthenticated per source %d exceeds max unauthenticated %d", c.MaxUnauthenticatedPerSource, c.MaxUnauthenticated)
	}
	if c.LoginGrace > 0 && c.LoginGrace < time.Second {
		return errs.New(errs.InvalidArgument, "gateway config: login grace %s: want at least 1s", c.LoginGrace)
	}
	if c.ShutdownGrace < 0 {
		return errs.New(errs.InvalidArgument, "gateway config: shutdown grace %s: must not be negative", c.ShutdownGrace)
	}
	return nil
}

// String is for logs.
func (c Config) String() string {
	c = c.withDefaults()
	return fmt.Sprintf("bind=%s policy=%s auth_rate=%d/min idle=%s max_conns=%d/%d per source max_unauth=%d/%d per source login_grace=%s max_sessions_per_user=%d",
		c.Bind, c.Policy, c.AuthRate, c.IdleTimeout, c.MaxConnections, c.MaxConnectionsPerSource,
		c.MaxUnauthenticated, c.MaxUnauthenticatedPerSource, c.LoginGrace, c.MaxSessionsPerUser)
}
