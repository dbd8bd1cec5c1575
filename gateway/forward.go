package gateway

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/charmbracelet/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
)

// Forwards that the guest opens back to the user: `ssh -R` (remote port
// forwarding) and `ssh -A` (agent forwarding). Both are allowed only on a
// connection whose login name is a VM the caller may reach (VMs.Agent
// decides, as for a session); the dashboard and the command front door get
// neither.
//
// The guest agent's connection is shared by every session on that VM
// (several users may be on it), so the channels it opens back are routed by
// what they carry: a forwarded-tcpip channel by the address and port its
// listener was asked for, an auth-agent@openssh.com channel by a random
// token the gateway gave the session (see docs/agent-protocol.md). A
// channel that matches no route is refused.

const (
	reqTCPIPForward       = "tcpip-forward"
	reqCancelTCPIPForward = "cancel-tcpip-forward"
	chanForwardedTCPIP    = "forwarded-tcpip"
	reqAuthAgent          = "auth-agent-req@openssh.com"
	chanAuthAgent         = "auth-agent@openssh.com"
)

// pendingWait bounds how long a forwarded-tcpip channel that matches no
// route waits for tcpip-forward requests still in flight.
const pendingWait = 10 * time.Second

type fwdKey struct {
	Addr string
	Port uint32
}

// forwards is the gateway's forwarding state. The zero value is ready.
// Safe for concurrent use.
type forwards struct {
	mu    sync.Mutex
	muxes map[*gossh.Client]*fwdMux
	conns map[*gossh.ServerConn]*connForwards
}

// fwdMux receives the channels one agent connection opens to the host and
// routes them to user connections.
type fwdMux struct {
	mu      sync.Mutex
	changed *sync.Cond // signalled when pending drops
	pending int        // tcpip-forward requests in flight
	tcp     map[fwdKey]*gossh.ServerConn
	agents  map[string]*gossh.ServerConn
}

// connForwards is what one user connection forwards remotely.
type connForwards struct {
	mu   sync.Mutex
	done bool
	fwds map[fwdKey]*remoteForward
}

type remoteForward struct {
	client  *gossh.Client
	mux     *fwdMux
	release func()
}

// mux returns the router of client, starting it on first use.
func (f *forwards) mux(client *gossh.Client) (*fwdMux, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m := f.muxes[client]; m != nil {
		return m, nil
	}
	tcp := client.HandleChannelOpen(chanForwardedTCPIP)
	agents := client.HandleChannelOpen(chanAuthAgent)
	if tcp == nil || agents == nil {
		return nil, errors.New("agent connection already routes forwarded channels")
	}
	m := &fwdMux{tcp: map[fwdKey]*gossh.ServerConn{}, agents: map[string]*gossh.ServerConn{}}
	m.changed = sync.NewCond(&m.mu)
	if f.muxes == nil {
		f.muxes = map[*gossh.Client]*fwdMux{}
	}
	f.muxes[client] = m
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for nc := range tcp {
			go m.forwardedTCPIP(nc)
		}
	}()
	go func() {
		defer wg.Done()
		for nc := range agents {
			go m.authAgent(nc)
		}
	}()
	go func() {
		// Both end when the agent connection is gone.
		wg.Wait()
		f.mu.Lock()
		if f.muxes[client] == m {
			delete(f.muxes, client)
		}
		f.mu.Unlock()
	}()
	return m, nil
}

// forwardedTCPIP routes a connection accepted by a guest listener to the
// user connection that asked for the listener.
func (m *fwdMux) forwardedTCPIP(nc gossh.NewChannel) {
	var p struct {
		Addr       string
		Port       uint32
		OriginAddr string
		OriginPort uint32
	}
	if err := gossh.Unmarshal(nc.ExtraData(), &p); err != nil {
		_ = nc.Reject(gossh.ConnectionFailed, "bad forwarded-tcpip payload")
		return
	}
	key := fwdKey{p.Addr, p.Port}
	deadline := time.Now().Add(pendingWait)
	m.mu.Lock()
	conn := m.tcp[key]
	// A connection can beat the reply of its tcpip-forward to the
	// gateway: wait for requests in flight to be routed.
	for conn == nil && m.pending > 0 && time.Now().Before(deadline) {
		// The timer takes the lock, so it cannot fire between this
		// check and Wait.
		t := time.AfterFunc(time.Until(deadline), func() {
			m.mu.Lock()
			m.changed.Broadcast()
			m.mu.Unlock()
		})
		m.changed.Wait()
		t.Stop()
		conn = m.tcp[key]
	}
	m.mu.Unlock()
	if conn == nil {
		_ = nc.Reject(gossh.Prohibited, "no such forward")
		return
	}
	pipeChannel(nc, conn, chanForwardedTCPIP, nc.ExtraData())
}

// authAgent routes an agent connection from the guest to the user's
// session that asked for agent forwarding.
func (m *fwdMux) authAgent(nc gossh.NewChannel) {
	var p struct{ Token string }
	if err := gossh.Unmarshal(nc.ExtraData(), &p); err != nil {
		_ = nc.Reject(gossh.Prohibited, "no agent forwarding for this channel")
		return
	}
	m.mu.Lock()
	conn := m.agents[p.Token]
	m.mu.Unlock()
	if conn == nil {
		_ = nc.Reject(gossh.Prohibited, "no agent forwarding for this channel")
		return
	}
	pipeChannel(nc, conn, chanAuthAgent, nil)
}

// pipeChannel opens a channel of typ on the user's connection and joins it
// to the guest's channel nc, or refuses nc when the user refuses.
func pipeChannel(nc gossh.NewChannel, user *gossh.ServerConn, typ string, extra []byte) {
	uc, ureqs, err := user.OpenChannel(typ, extra)
	if err != nil {
		var oce *gossh.OpenChannelError
		if errors.As(err, &oce) {
			_ = nc.Reject(oce.Reason, oce.Message)
		} else {
			_ = nc.Reject(gossh.ConnectionFailed, err.Error())
		}
		return
	}
	gc, greqs, err := nc.Accept()
	if err != nil {
		uc.Close()
		return
	}
	go gossh.DiscardRequests(ureqs)
	go gossh.DiscardRequests(greqs)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, _ = copyBuf(gc, uc); _ = gc.CloseWrite() }()
	go func() { defer wg.Done(); _, _ = copyBuf(uc, gc); _ = uc.CloseWrite() }()
	wg.Wait()
	uc.Close()
	gc.Close()
}

// forwardingUser returns the user of an authenticated, registered
// connection, or why it is neither.
func (s *Server) forwardingUser(conn *gossh.ServerConn) (User, error) {
	id := identityFromConn(conn)
	switch id.state {
	case stateUser:
		return id.user, nil
	case stateDenied:
		return User{}, errs.New(errs.PermissionDenied, "%s", id.msg)
	}
	return User{}, errs.New(errs.Unauthenticated, "key not registered")
}

// handleTCPIPForward serves a user's tcpip-forward request (`ssh -R`): the
// guest agent of the connection's VM listens, and each connection it
// accepts comes back to this user as a forwarded-tcpip channel. The
// forward lasts until cancelled or until the user's connection ends.
func (s *Server) handleTCPIPForward(ctx ssh.Context, _ *ssh.Server, req *gossh.Request) (bool, []byte) {
	conn, _ := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	if conn == nil {
		return false, nil
	}
	var p fwdKey
	if err := gossh.Unmarshal(req.Payload, &p); err != nil {
		return false, nil
	}
	u, err := s.forwardingUser(conn)
	if err != nil {
		s.log.Info("remote forward refused", "err", err)
		return false, nil
	}
	vm := conn.User()
	client, release, err := s.agent(ctx, u, vm)
	if err != nil {
		// NotFound: a dashboard login or another's VM, told apart nowhere.
		s.log.Info("remote forward refused", "user", u.Name, "vm", vm, "err", err)
		return false, nil
	}
	m, err := s.fwd.mux(client)
	if err != nil {
		release()
		s.log.Warn("remote forward", "user", u.Name, "vm", vm, "err", err)
		return false, nil
	}
	cf := s.fwd.connState(ctx, conn)
	m.mu.Lock()
	m.pending++
	m.mu.Unlock()
	ok, reply, err := client.SendRequest(reqTCPIPForward, true, req.Payload)
	key := p
	if ok && err == nil && p.Port == 0 {
		var r struct{ Port uint32 }
		if gossh.Unmarshal(reply, &r) != nil {
			ok = false
		}
		key.Port = r.Port
	}
	m.mu.Lock()
	if ok && err == nil {
		m.tcp[key] = conn
	}
	m.pending--
	m.changed.Broadcast()
	m.mu.Unlock()
	if !ok || err != nil {
		release()
		s.log.Info("remote forward refused by the agent", "user", u.Name, "vm", vm, "addr", p.Addr, "port", p.Port, "err", err)
		return false, nil
	}
	rf := &remoteForward{client: client, mux: m, release: release}
	if !cf.add(key, rf) {
		rf.cancel(key) // the connection ended meanwhile
		return false, nil
	}
	s.log.Info("remote forward", "user", u.Name, "vm", vm, "addr", key.Addr, "port", key.Port)
	return true, reply
}

// handleCancelTCPIPForward serves cancel-tcpip-forward: the guest's
// listener closes.
func (s *Server) handleCancelTCPIPForward(ctx ssh.Context, _ *ssh.Server, req *gossh.Request) (bool, []byte) {
	conn, _ := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	var p fwdKey
	if conn == nil || gossh.Unmarshal(req.Payload, &p) != nil {
		return false, nil
	}
	s.fwd.mu.Lock()
	cf := s.fwd.conns[conn]
	s.fwd.mu.Unlock()
	if cf == nil {
		return false, nil
	}
	cf.mu.Lock()
	rf := cf.fwds[p]
	delete(cf.fwds, p)
	cf.mu.Unlock()
	if rf == nil {
		return false, nil
	}
	return rf.cancel(p), nil
}

// connState returns the forwards of conn, creating them (and their
// clean-up at the connection's end) on first use.
func (f *forwards) connState(ctx ssh.Context, conn *gossh.ServerConn) *connForwards {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cf := f.conns[conn]; cf != nil {
		return cf
	}
	cf := &connForwards{fwds: map[fwdKey]*remoteForward{}}
	if f.conns == nil {
		f.conns = map[*gossh.ServerConn]*connForwards{}
	}
	f.conns[conn] = cf
	go func() {
		<-ctx.Done() // the connection closed
		f.mu.Lock()
		delete(f.conns, conn)
		f.mu.Unlock()
		cf.mu.Lock()
		cf.done = true
		fwds := cf.fwds
		cf.fwds = nil
		cf.mu.Unlock()
		for k, rf := range fwds {
			rf.cancel(k)
		}
	}()
	return cf
}

// add records a forward; false when the connection has ended.
func (cf *connForwards) add(k fwdKey, rf *remoteForward) bool {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	if cf.done {
		return false
	}
	cf.fwds[k] = rf
	return true
}

// cancel closes the guest's listener, unroutes it and releases the agent
// connection. It reports whether the agent closed a listener.
func (rf *remoteForward) cancel(k fwdKey) bool {
	rf.mux.mu.Lock()
	delete(rf.mux.tcp, k)
	rf.mux.mu.Unlock()
	ok, _, err := rf.client.SendRequest(reqCancelTCPIPForward, true, gossh.Marshal(k))
	rf.release()
	return ok && err == nil
}

// agentForwarding returns the session requests of a VM session with
// auth-agent-req@openssh.com taken out and served: the guest agent gets
// it with a fresh route token, and its auth-agent@openssh.com channels
// carrying that token are relayed to conn. Every other request passes
// through in order. stop removes the route; call it when the session ends.
func (s *Server) agentForwarding(conn *gossh.ServerConn, client *gossh.Client, ac gossh.Channel, reqs <-chan *gossh.Request) (out <-chan *gossh.Request, stop func()) {
	o := make(chan *gossh.Request)
	var (
		mu      sync.Mutex
		token   string
		m       *fwdMux
		stopped bool
	)
	go func() {
		defer close(o)
		for r := range reqs {
			if r.Type != reqAuthAgent {
				o <- r
				continue
			}
			ok := false
			mu.Lock()
			if token == "" && !stopped {
				ok = s.startAgentForwarding(conn, client, ac, &token, &m)
			}
			mu.Unlock()
			if r.WantReply {
				_ = r.Reply(ok, nil)
			}
		}
	}()
	return o, func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		if m != nil {
			m.mu.Lock()
			delete(m.agents, token)
			m.mu.Unlock()
		}
	}
}

func (s *Server) startAgentForwarding(conn *gossh.ServerConn, client *gossh.Client, ac gossh.Channel, token *string, mp **fwdMux) bool {
	m, err := s.fwd.mux(client)
	if err != nil {
		s.log.Warn("agent forwarding", "err", err)
		return false
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return false
	}
	t := hex.EncodeToString(b[:])
	m.mu.Lock()
	m.agents[t] = conn
	m.mu.Unlock()
	ok, err := ac.SendRequest(reqAuthAgent, true, gossh.Marshal(struct{ Token string }{t}))
	if !ok || err != nil {
		m.mu.Lock()
		delete(m.agents, t)
		m.mu.Unlock()
		s.log.Info("agent forwarding refused by the agent", "user", identityFromConn(conn).user.Name, "vm", conn.User(), "err", fmt.Sprint(err))
		return false
	}
	*token, *mp = t, m
	s.log.Info("agent forwarding", "user", identityFromConn(conn).user.Name, "vm", conn.User())
	return true
}
