package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
)

// SocketName is the API socket in the daemon's run directory.
const SocketName = "api.sock"

// Peer is the process at the other end of a unix socket connection.
type Peer struct {
	PID, UID, GID int
}

type peerKey struct{}

// PeerFrom returns the peer stored by ConnContext, if the request came
// over a unix socket.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// ConnContext is http.Server.ConnContext for the API: on a unix socket it
// records the peer's credentials (SO_PEERCRED), which make a uid-0 peer the
// admin "root" without a token. TCP connections carry no peer.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)})
}

// NewServer returns an http.Server for h with the API's connection
// context and header/idle timeouts. Per-request timeouts are the
// handler's (streams have none), so there is no write timeout.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ConnContext:       ConnContext,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}

// ListenUnix listens on the API socket path, replacing a stale socket
// file. The socket is mode 0666: anyone who can reach the directory may
// connect, and only a uid-0 peer or a valid token gets anywhere (keep the
// directory 0711 or stricter to narrow that further).
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, errs.New(errs.AlreadyExists, "a daemon already listens on %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// CheckTransport refuses to serve the API in plain HTTP on an address
// beyond loopback: tokens and everything they unlock would cross the
// network in clear. tls says a certificate is configured; insecure is the
// operator's explicit choice of plain HTTP (for instance behind a
// TLS-terminating proxy), which the caller should log loudly. It returns
// an errs.FailedPrecondition error that says what to pass.
func CheckTransport(addr string, tls, insecure bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return errs.New(errs.InvalidArgument, "bind address %q: %v", addr, err)
	}
	if tls || insecure || isLoopback(host) {
		return nil
	}
	return errs.New(errs.FailedPrecondition, "refusing to serve the api on %s in plain http: pass --tls-cert and --tls-key (tls_cert, tls_key), "+
		"or --insecure-http (insecure_http) if something else encrypts the traffic, or bind to 127.0.0.1", addr)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ListenTCP listens for the API on addr: with certFile and keyFile (PEM)
// as TLS (1.2 or newer) on any address; without them only on loopback
// unless insecure (see CheckTransport). A certificate that cannot be
// loaded is an errs.InvalidArgument error.
func ListenTCP(addr, certFile, keyFile string, insecure bool) (net.Listener, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errs.New(errs.InvalidArgument, "api tls: a certificate needs its key and a key its certificate (--tls-cert and --tls-key)")
	}
	useTLS := certFile != ""
	if err := CheckTransport(addr, useTLS, insecure); err != nil {
		return nil, err
	}
	var cfg *tls.Config
	if useTLS {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, errs.New(errs.InvalidArgument, "api tls: load %s and %s: %v", certFile, keyFile, err)
		}
		cfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	if cfg != nil {
		return tls.NewListener(l, cfg), nil
	}
	return l, nil
}

// CheckBind refuses a TCP bind address that is not loopback while no
// authentication is configured (no admin token and no user token), so a
// fresh install never offers an open API to the network.
func CheckBind(addr string, authConfigured bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return errs.New(errs.InvalidArgument, "bind address %q: %v", addr, err)
	}
	if authConfigured {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return errs.New(errs.FailedPrecondition, "refusing to bind the api to %s without authentication: create a token first (`minions token create`) or bind to 127.0.0.1", addr)
	}
	return nil
}
