package service

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vsockcli"
)

// guestPingTimeout bounds the liveness check of a pooled agent connection.
const guestPingTimeout = 3 * time.Second

// GuestPool shares one guest agent connection per running VM among the
// SSH gateway's sessions and forwards, so that a session costs one channel
// on an open SSH connection instead of a dial and a handshake with the
// guest. The agent channel is SSH (see guestagent), so the gateway relays
// a user's channels (sessions with PTYs, sftp, direct-tcpip, agent
// forwarding) to channels of the returned client almost 1:1.
// Authorisation is checked on every Channels call (Get as the caller); the
// connection is keyed by VM ID, hypervisor PID and start time, so a
// restarted, renamed or re-created VM never gets another's connection. A
// connection is closed when it has been unused for idle, and forgotten as
// soon as it dies (the VM stopped) or stops answering a ping, which every
// reuse sends first. Safe for concurrent use.
type GuestPool struct {
	svc  agentSource
	idle time.Duration
	log  *slog.Logger

	mu     sync.Mutex
	conns  map[string]*pooledAgent
	closed bool
}

// agentSource is what the pool needs of the service (a fake in tests).
type agentSource interface {
	// Get returns the VM named name if c may see it.
	Get(ctx context.Context, c Caller, name string) (VM, error)
	// Agent dials the agent of the VM named name for c.
	Agent(ctx context.Context, c Caller, name string) (*vsockcli.Client, error)
}

var _ agentSource = (*Service)(nil)

type pooledAgent struct {
	cl    *vsockcli.Client
	refs  int
	dead  bool
	timer *time.Timer
}

// NewGuestPool returns a pool over s whose unused connections close after
// idle.
func NewGuestPool(s *Service, idle time.Duration, log *slog.Logger) *GuestPool {
	return newGuestPool(s, idle, log)
}

func newGuestPool(svc agentSource, idle time.Duration, log *slog.Logger) *GuestPool {
	return &GuestPool{svc: svc, idle: idle, log: log, conns: map[string]*pooledAgent{}}
}

// Channels returns the agent connection of vm for caller c and its release
// function (call it once; the client stays the pool's: never close it).
// Errors are those of OpenGuest: errs.NotFound when c may not see vm,
// errs.FailedPrecondition when it does not run, errs.Unavailable when its
// agent does not answer.
func (p *GuestPool) Channels(ctx context.Context, c Caller, vm string) (*gossh.Client, func(), error) {
	v, err := p.svc.Get(ctx, c, vm)
	if err != nil {
		return nil, nil, err
	}
	if v.Status != store.StateRunning || v.PID == 0 {
		// Not pooled: Agent says why (stopped, paused, ...).
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
		pctx, cancel := context.WithTimeout(ctx, guestPingTimeout)
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
		return p.Channels(ctx, c, vm)
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
func (p *GuestPool) take(key string) *pooledAgent {
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

func (p *GuestPool) releaser(key string, pa *pooledAgent) func() {
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

// Close closes every connection nobody uses and makes the pool close
// the others on their last release.
func (p *GuestPool) Close() {
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
