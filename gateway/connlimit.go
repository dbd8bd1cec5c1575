package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/charmbracelet/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
)

// sourceKey is what per-source limits count by: an IPv4 address, or the
// /64 an IPv6 address is in (one host or site usually holds a whole /64,
// so counting single IPv6 addresses would limit nothing).
func sourceKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return a.String()
	}
	p, _ := a.Prefix(64)
	return p.String()
}

// connLimiter caps concurrent connections, globally and per source, in
// two stages: every open connection (Config.MaxConnections,
// MaxConnectionsPerSource), and among them those not yet authenticated
// (MaxUnauthenticated, MaxUnauthenticatedPerSource), which also must
// authenticate within Config.LoginGrace. It also caps the concurrent
// sessions and forwards of each user (MaxSessionsPerUser). Safe for
// concurrent use.
type connLimiter struct {
	cfg Config

	mu       sync.Mutex
	conns    int
	bySource map[string]int
	unauth   int
	unauthBy map[string]int
	sessions map[string]int // by user name
}

func newConnLimiter(cfg Config) *connLimiter {
	return &connLimiter{cfg: cfg, bySource: map[string]int{}, unauthBy: map[string]int{}, sessions: map[string]int{}}
}

// tracked is one admitted connection.
type tracked struct {
	l      *connLimiter
	src    string
	over   string // why it is over a connection cap ("" if within): it may log in only to be told
	mu     sync.Mutex
	authed bool
	closed bool
	timer  *time.Timer
}

// admit counts a new connection from src, or returns why it is refused
// outright (the caps on connections logging in: refusing those must cost
// nothing, not even a key exchange). A connection over the caps on open
// connections is admitted with tracked.over set and not counted as open:
// it logs in only to be told why it cannot go on (a client shows that
// message; it would show nothing for a connection closed before the SSH
// handshake) and is closed soon after.
func (l *connLimiter) admit(src string) (*tracked, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.cfg
	switch {
	case c.MaxUnauthenticated > 0 && l.unauth >= c.MaxUnauthenticated:
		return nil, fmt.Sprintf("minions: the server has too many connections logging in (%d); try again later", c.MaxUnauthenticated)
	case c.MaxUnauthenticatedPerSource > 0 && l.unauthBy[src] >= c.MaxUnauthenticatedPerSource:
		return nil, fmt.Sprintf("minions: too many connections logging in from %s (limit %d); try again later", src, c.MaxUnauthenticatedPerSource)
	}
	t := &tracked{l: l, src: src}
	switch {
	case c.MaxConnections > 0 && l.conns >= c.MaxConnections:
		t.over = fmt.Sprintf("minions: the server has too many connections (%d); try again later", c.MaxConnections)
	case c.MaxConnectionsPerSource > 0 && l.bySource[src] >= c.MaxConnectionsPerSource:
		t.over = fmt.Sprintf("minions: too many connections from %s (limit %d); close some and try again", src, c.MaxConnectionsPerSource)
	default:
		l.conns++
		l.bySource[src]++
	}
	l.unauth++
	l.unauthBy[src]++
	return t, ""
}

// authenticated moves t from the unauthenticated count; idempotent.
func (t *tracked) authenticated() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.authed || t.closed {
		return
	}
	t.authed = true
	if t.timer != nil {
		t.timer.Stop()
	}
	t.l.mu.Lock()
	t.l.unauth--
	dec(t.l.unauthBy, t.src)
	t.l.mu.Unlock()
}

// release uncounts t; idempotent.
func (t *tracked) release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.closed = true
	if t.timer != nil {
		t.timer.Stop()
	}
	t.l.mu.Lock()
	defer t.l.mu.Unlock()
	if t.over == "" {
		t.l.conns--
		dec(t.l.bySource, t.src)
	}
	if !t.authed {
		t.l.unauth--
		dec(t.l.unauthBy, t.src)
	}
}

func dec(m map[string]int, k string) {
	if m[k] <= 1 {
		delete(m, k)
		return
	}
	m[k]--
}

// acquireSession counts one session or forward of user, or returns why it
// is refused. Call the returned release once when it ends.
func (l *connLimiter) acquireSession(user string) (func(), string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if max := l.cfg.MaxSessionsPerUser; max > 0 && l.sessions[user] >= max {
		return nil, fmt.Sprintf("minions: %s has too many open sessions (limit %d); close some and try again", user, max)
	}
	l.sessions[user]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			dec(l.sessions, user)
			l.mu.Unlock()
		})
	}, ""
}

// counts is for tests: open, unauthenticated and session counts.
func (l *connLimiter) counts() (conns, unauth, sessions int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.sessions {
		sessions += n
	}
	return l.conns, l.unauth, sessions
}

type trackedKey struct{}

// limitedConn uncounts its connection when closed.
type limitedConn struct {
	net.Conn
	t *tracked
}

func (c *limitedConn) Close() error {
	c.t.release()
	return c.Conn.Close()
}

// admitConn is the server's ConnCallback: it refuses a connection over a
// cap on connections logging in with a one-line message (sent before the
// SSH version exchange, which RFC 4253 allows; OpenSSH logs it with -v)
// and otherwise counts it until it closes, closing it if it has not
// authenticated within Config.LoginGrace.
func (s *Server) admitConn(ctx ssh.Context, conn net.Conn) net.Conn {
	ctx.SetValue(acceptedKey{}, time.Now())
	src := sourceKey(remoteIP(conn.RemoteAddr()))
	t, why := s.conns.admit(src)
	if t == nil {
		s.log.Warn("ssh connection refused", "remote", conn.RemoteAddr().String(), "source", src, "reason", why)
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = fmt.Fprintf(conn, "%s\r\n", why)
		return nil
	}
	ctx.SetValue(trackedKey{}, t)
	lc := &limitedConn{Conn: conn, t: t}
	ctx.SetValue(connKey{}, net.Conn(lc))
	if t.over != "" {
		s.log.Warn("ssh connection over the limits: it may log in to be told", "remote", conn.RemoteAddr().String(), "source", src, "reason", t.over)
	}
	if grace := s.cfg.LoginGrace; grace > 0 {
		t.mu.Lock()
		t.timer = time.AfterFunc(grace, func() {
			t.mu.Lock()
			authed := t.authed
			t.mu.Unlock()
			if !authed {
				s.log.Info("ssh connection closed: no login in time", "remote", conn.RemoteAddr().String(), "grace", grace.String())
				_ = lc.Close()
			}
		})
		t.mu.Unlock()
	}
	return lc
}

// overGrace is how long a connection over a connection cap stays open
// after logging in, to be told why (see connLimiter.admit).
const overGrace = 5 * time.Second

// authLog is gossh.ServerConfig.AuthLogCallback for the connection of ctx:
// a successful authentication ends its unauthenticated stage.
func authLog(ctx context.Context) func(gossh.ConnMetadata, string, error) {
	return func(_ gossh.ConnMetadata, _ string, err error) {
		if err != nil {
			return
		}
		if sc, ok := ctx.(interface{ SetValue(key, value any) }); ok {
			sc.SetValue(authedKey{}, time.Now())
		}
		t, ok := ctx.Value(trackedKey{}).(*tracked)
		if !ok {
			return
		}
		t.authenticated()
		if t.over != "" {
			if conn, ok := ctx.Value(connKey{}).(net.Conn); ok {
				time.AfterFunc(overGrace, func() { _ = conn.Close() })
			}
		}
	}
}

type connKey struct{}

// overLimit turns the permissions of a connection over a connection cap
// into a refusal that tells the client why (stateDenied, exit status of
// errs.ResourceExhausted).
func overLimit(ctx context.Context, perms *gossh.Permissions) *gossh.Permissions {
	t, ok := ctx.Value(trackedKey{}).(*tracked)
	if !ok || t.over == "" || perms == nil {
		return perms
	}
	ext := map[string]string{extState: stateDenied, extMsg: t.over, extCode: strconv.Itoa(errs.ExitCode(errs.ResourceExhausted))}
	if k, ok := perms.Extensions[extKey]; ok {
		ext[extKey] = k
	}
	return &gossh.Permissions{Extensions: ext}
}

// sessionSlot takes one of u's session slots for a channel, or rejects
// newChan with the reason and returns false.
func (s *Server) sessionSlot(u User, newChan gossh.NewChannel) (func(), bool) {
	release, why := s.conns.acquireSession(u.Name)
	if release == nil {
		s.log.Warn("ssh channel refused", "user", u.Name, "reason", why)
		_ = newChan.Reject(gossh.ResourceShortage, why)
		return nil, false
	}
	return release, true
}
