package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/charmbracelet/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
)

// Keys of the permission extensions that carry the identity of the key that
// authenticated a connection.
const (
	extState = "minions-state" // one of the state* values
	extKey   = "minions-key"   // the public key in wire format
	extUser  = "minions-user"
	extCred  = "minions-cred"  // User.Credential
	extAdmin = "minions-admin" // "1" for admins
	extMsg   = "minions-msg"   // stateDenied: what to tell the client
	extCode  = "minions-code"  // stateDenied: exit status
)

const (
	stateUser    = "user"    // a registered key
	stateUnknown = "unknown" // an unregistered key, may sign up
	stateDenied  = "denied"  // let in only to be told why it cannot go on
)

// identity is who a connection is, decided once at authentication.
type identity struct {
	state string
	key   gossh.PublicKey
	user  User
	msg   string // stateDenied
	code  int    // stateDenied
	ip    string
}

// authTimeout bounds a Users call made during authentication.
const authTimeout = 10 * time.Second

func (s *Server) serverConfig(ctx ssh.Context) *gossh.ServerConfig {
	return &gossh.ServerConfig{
		// The returned Permissions are per key: x/crypto/ssh attaches those
		// of the key that actually authenticated to the connection.
		PublicKeyCallback: func(meta gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
			perms, err := s.publicKey(meta, key)
			return overLimit(ctx, perms), err // connection caps (connlimit.go)
		},
		AuthLogCallback: authLog(ctx), // ends the login grace (connlimit.go)
	}
}

func (s *Server) publicKey(meta gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
	ip := remoteIP(meta.RemoteAddr())
	ext := map[string]string{extKey: string(key.Marshal())}
	ctx, cancel := context.WithTimeout(s.baseCtx, authTimeout)
	defer cancel()
	u, err := s.users.Authenticate(ctx, key)
	switch {
	case err == nil:
		ext[extState] = stateUser
		ext[extUser] = u.Name
		ext[extCred] = u.Credential
		if u.Admin {
			ext[extAdmin] = "1"
		}
	case errors.Is(err, errs.NotFound):
		if wait := s.limiter.Blocked(ip); wait > 0 {
			ext[extState] = stateDenied
			ext[extMsg] = rateLimitMessage(ip, wait)
			ext[extCode] = strconv.Itoa(errs.ExitCode(errs.ResourceExhausted))
			s.log.Warn("ssh auth rate limited", "remote_ip", ip, "wait", wait.Round(time.Second).String())
		} else {
			ext[extState] = stateUnknown
		}
	default:
		s.log.Error("ssh authenticate key", "remote_ip", ip, "fingerprint", gossh.FingerprintSHA256(key), "err", err)
		ext[extState] = stateDenied
		ext[extMsg] = "minions: cannot check your key right now; try again in a moment"
		ext[extCode] = strconv.Itoa(errs.ExitCode(errs.Unavailable))
	}
	return &gossh.Permissions{Extensions: ext}, nil
}

func rateLimitMessage(ip string, wait time.Duration) string {
	secs := int((wait + time.Second - 1) / time.Second)
	return fmt.Sprintf("minions: too many failed authentication attempts from %s; try again in %ds", ip, secs)
}

// keyboardInteractive never lets a client in: it tells key-less clients
// (and people typing passwords) what to do instead, and counts the attempt
// as a failure.
func (s *Server) keyboardInteractive(ctx ssh.Context, challenge gossh.KeyboardInteractiveChallenge) bool {
	ip := remoteIP(ctx.RemoteAddr())
	msg := "minions accepts SSH public keys only: create one with `ssh-keygen -t ed25519` and connect again\n"
	if wait := s.limiter.Blocked(ip); wait > 0 {
		msg = rateLimitMessage(ip, wait) + "\n"
	} else {
		s.limiter.Fail(ip)
	}
	_, _ = challenge("", msg, nil, nil)
	return false
}

// identityOf returns the identity of the connection behind ctx.
func identityOf(ctx ssh.Context) identity {
	conn, _ := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	id := identity{state: stateDenied, msg: "minions: not authenticated", code: errs.ExitCode(errs.Unauthenticated)}
	if conn == nil || conn.Permissions == nil {
		return id
	}
	return identityFromConn(conn)
}

func identityFromConn(conn *gossh.ServerConn) identity {
	ext := conn.Permissions.Extensions
	id := identity{state: ext[extState], ip: remoteIP(conn.RemoteAddr())}
	if k, err := gossh.ParsePublicKey([]byte(ext[extKey])); err == nil {
		id.key = k
	}
	switch id.state {
	case stateUser:
		id.user = User{Name: ext[extUser], Admin: ext[extAdmin] == "1", Credential: ext[extCred]}
	case stateUnknown:
	default:
		id.state = stateDenied
		id.msg = ext[extMsg]
		id.code, _ = strconv.Atoi(ext[extCode])
		if id.msg == "" || id.code == 0 {
			id.msg, id.code = "minions: not authenticated", errs.ExitCode(errs.Unauthenticated)
		}
	}
	if id.key == nil && id.state != stateDenied {
		id.state, id.msg, id.code = stateDenied, "minions: not authenticated", errs.ExitCode(errs.Unauthenticated)
	}
	return id
}

// unregisteredMessage is the one line a non-interactive unknown key gets.
func (s *Server) unregisteredMessage(key gossh.PublicKey) string {
	fp := gossh.FingerprintSHA256(key)
	if s.cfg.Policy == PolicyClosed {
		return fmt.Sprintf("minions: key %s is not registered and sign-up is closed; ask an admin for an account, then add the key with `minions ssh-key add`", fp)
	}
	return fmt.Sprintf("minions: key %s is not registered; sign up interactively with `ssh -t <host>`", fp)
}

func remoteIP(a net.Addr) string {
	if a == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
