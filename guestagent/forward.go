package guestagent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"golang.org/x/crypto/ssh"
)

// Remote port forwarding (RFC 4254 7.1, `ssh -R`): the host asks the agent
// to listen inside the guest with a "tcpip-forward" global request; every
// accepted connection comes back to the host as a "forwarded-tcpip"
// channel. Listeners belong to the SSH connection that asked for them:
// "cancel-tcpip-forward" closes one, the connection's end closes all.

// Request and channel names of remote forwarding.
const (
	reqTCPIPForward       = "tcpip-forward"
	reqCancelTCPIPForward = "cancel-tcpip-forward"
	chanForwardedTCPIP    = "forwarded-tcpip"
)

// forwardReq is the payload of tcpip-forward and cancel-tcpip-forward.
type forwardReq struct {
	Addr string
	Port uint32
}

// forwardedTCPIP is the extra data of a forwarded-tcpip channel: the
// address as the client asked for it, the port actually bound, and the
// peer that connected.
type forwardedTCPIP struct {
	Addr       string
	Port       uint32
	OriginAddr string
	OriginPort uint32
}

// remoteForwards holds the listeners of one SSH connection. Safe for
// concurrent use.
type remoteForwards struct {
	conn ssh.Conn
	log  *slog.Logger

	mu     sync.Mutex
	ls     map[forwardReq]net.Listener // key: requested address, bound port
	closed bool
	wg     sync.WaitGroup
}

func newRemoteForwards(conn ssh.Conn, log *slog.Logger) *remoteForwards {
	return &remoteForwards{conn: conn, log: log, ls: map[forwardReq]net.Listener{}}
}

// bindHost maps the address of a tcpip-forward request to the host to
// listen on. "localhost" is the IPv4 loopback; "", "*" and "0.0.0.0" are
// every address (as OpenSSH's GatewayPorts=clientspecified: the guest is
// the user's own machine, where they may listen anywhere anyway); other
// names must be IP literals.
func bindHost(addr string) (string, error) {
	switch addr {
	case "localhost":
		return "127.0.0.1", nil
	case "", "*":
		return "", nil
	}
	if net.ParseIP(addr) == nil {
		return "", fmt.Errorf("bind address %q is not an IP address or localhost", addr)
	}
	return addr, nil
}

// handle serves a tcpip-forward or cancel-tcpip-forward request and
// reports whether req was one.
func (f *remoteForwards) handle(req *ssh.Request) bool {
	switch req.Type {
	case reqTCPIPForward:
		port, err := f.listen(req.Payload)
		if err != nil {
			f.log.Info("remote forward refused", "err", err)
			req.Reply(false, nil)
			return true
		}
		// RFC 4254 7.1: the reply carries the port only when the client
		// asked for port 0.
		var reply []byte
		var p forwardReq
		if ssh.Unmarshal(req.Payload, &p) == nil && p.Port == 0 {
			reply = ssh.Marshal(struct{ Port uint32 }{port})
		}
		req.Reply(true, reply)
		return true
	case reqCancelTCPIPForward:
		req.Reply(f.cancel(req.Payload) == nil, nil)
		return true
	}
	return false
}

// listen opens the listener of a tcpip-forward request and returns the
// bound port. Accepting starts at once: connections that arrive before the
// host has seen the reply wait for it on the host side.
func (f *remoteForwards) listen(payload []byte) (uint32, error) {
	var p forwardReq
	if err := ssh.Unmarshal(payload, &p); err != nil {
		return 0, errors.New("bad tcpip-forward payload")
	}
	if p.Port > 65535 {
		return 0, fmt.Errorf("port %d out of range", p.Port)
	}
	host, err := bindHost(p.Addr)
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, errors.New("connection closing")
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(int(p.Port))))
	if err != nil {
		return 0, err
	}
	port := uint32(ln.Addr().(*net.TCPAddr).Port)
	key := forwardReq{Addr: p.Addr, Port: port}
	if _, dup := f.ls[key]; dup {
		ln.Close()
		return 0, fmt.Errorf("%s:%d is already forwarded", p.Addr, port)
	}
	f.ls[key] = ln
	f.wg.Add(1)
	go f.accept(ln, key)
	f.log.Info("remote forward listening", "addr", ln.Addr().String())
	return port, nil
}

func (f *remoteForwards) accept(ln net.Listener, key forwardReq) {
	defer f.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go f.forward(c, key)
	}
}

// forward hands one accepted connection to the host.
func (f *remoteForwards) forward(c net.Conn, key forwardReq) {
	origin := c.RemoteAddr().(*net.TCPAddr)
	ch, reqs, err := f.conn.OpenChannel(chanForwardedTCPIP, ssh.Marshal(forwardedTCPIP{
		Addr: key.Addr, Port: key.Port,
		OriginAddr: origin.IP.String(), OriginPort: uint32(origin.Port),
	}))
	if err != nil {
		f.log.Debug("forwarded-tcpip refused by the host", "err", err)
		c.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	splice(ch, c)
}

// cancel closes the listener named by a cancel-tcpip-forward payload.
func (f *remoteForwards) cancel(payload []byte) error {
	var p forwardReq
	if err := ssh.Unmarshal(payload, &p); err != nil {
		return errors.New("bad cancel-tcpip-forward payload")
	}
	f.mu.Lock()
	ln, ok := f.ls[p]
	delete(f.ls, p)
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("no forward on %s:%d", p.Addr, p.Port)
	}
	return ln.Close()
}

// closeAll closes every listener and waits for the accept loops; open
// forwarded connections end with the SSH connection.
func (f *remoteForwards) closeAll() {
	f.mu.Lock()
	f.closed = true
	for k, ln := range f.ls {
		ln.Close()
		delete(f.ls, k)
	}
	f.mu.Unlock()
	f.wg.Wait()
}
