package engine

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
)

// agentPingAfter is how long a pooled connection may sit unused before a
// reuse pings it first (a hung guest must not hang the next caller: a
// connection that does not answer is replaced by a fresh dial).
const agentPingAfter = time.Second

// agentPingTimeout bounds that ping.
const agentPingTimeout = 3 * time.Second

// agentDialer dials and authenticates an agent client (vsockcli.Dial;
// tests count the calls).
type agentDialer func(ctx context.Context, ep hypervisor.AgentEndpoint, cfg vsockcli.Config) (*vsockcli.Client, error)

// agentPool keeps one authenticated agent client per running instance and
// lends it to every caller (Exec, status, forwards, the gateway's
// channels: SSH multiplexes them over the one connection), so a call
// costs a channel instead of a dial and a handshake with the guest.
//
// An entry is keyed by instance ID and remembers which hypervisor process
// it reached (PID and start time): a lease for another process (the
// instance restarted or was restored) drops the old entry and dials
// again. An entry is forgotten as soon as its connection dies, when
// forget is called (the instance stopped or was destroyed), after it has
// been unused for idle, and when the pool is full (the least recently
// used idle entry goes; with none idle, the caller gets a connection of
// its own, closed on release). A forgotten connection still lent out is
// closed on its last release. Safe for concurrent use.
type agentPool struct {
	dial agentDialer
	idle time.Duration
	max  int
	log  *slog.Logger

	mu     sync.Mutex
	conns  map[string]*pooledAgent // by instance ID
	closed bool
}

type pooledAgent struct {
	proc     string // the hypervisor process reached: "PID/start time"
	cl       *vsockcli.Client
	refs     int
	dead     bool // forgotten: close on the last release
	lastUsed time.Time
	timer    *time.Timer
}

func newAgentPool(dial agentDialer, idle time.Duration, max int, log *slog.Logger) *agentPool {
	return &agentPool{dial: dial, idle: idle, max: max, log: log, conns: map[string]*pooledAgent{}}
}

// lease returns a client of instance id's agent on h whose Close returns
// it to the pool (never closing a connection others use). cfg
// authenticates a fresh dial. Errors are the dial's.
func (p *agentPool) lease(ctx context.Context, id string, h *hypervisor.Handle, cfg vsockcli.Config) (*vsockcli.Client, error) {
	proc := fmt.Sprintf("%d/%d", h.PID, h.StartTime)
	if pa, idle := p.take(id, proc); pa != nil {
		if idle < agentPingAfter || p.answers(ctx, pa) {
			return p.lent(id, pa), nil
		}
		p.log.Warn("pooled agent connection does not answer; dialing again", "vm_id", id)
		p.mu.Lock()
		p.forgetLocked(id, pa)
		p.mu.Unlock()
		p.release(id, pa)
	}
	cl, err := p.dial(ctx, h.Agent, cfg)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		cl.Close()
		return nil, errs.New(errs.Unavailable, "engine is shutting down")
	}
	if pa := p.conns[id]; pa != nil && pa.proc == proc {
		// Another caller dialed at the same time: share theirs.
		cl.Close()
		pa.refs++
		p.stopTimer(pa)
		return p.lent(id, pa), nil
	}
	if old := p.conns[id]; old != nil {
		p.forgetLocked(id, old)
	}
	if len(p.conns) >= p.max && !p.evictLocked() {
		// Full of busy connections: this one is the caller's alone.
		return cl, nil
	}
	pa := &pooledAgent{proc: proc, cl: cl, refs: 1, lastUsed: time.Now()}
	p.conns[id] = pa
	go func() {
		err := cl.SSH().Wait()
		p.mu.Lock()
		p.forgetLocked(id, pa)
		p.mu.Unlock()
		p.log.Debug("agent connection closed", "vm_id", id, "err", err)
	}()
	return p.lent(id, pa), nil
}

// take returns the live entry of id for proc with a reference taken and
// how long it was unused (0 while others use it), or nil. An entry for
// another process is forgotten.
func (p *agentPool) take(id, proc string) (*pooledAgent, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pa := p.conns[id]
	if pa == nil || p.closed {
		return nil, 0
	}
	if pa.proc != proc {
		p.forgetLocked(id, pa)
		return nil, 0
	}
	var idle time.Duration
	if pa.refs == 0 {
		idle = time.Since(pa.lastUsed)
	}
	pa.refs++
	p.stopTimer(pa)
	return pa, idle
}

// answers pings pa's agent.
func (p *agentPool) answers(ctx context.Context, pa *pooledAgent) bool {
	ctx, cancel := context.WithTimeout(ctx, agentPingTimeout)
	defer cancel()
	_, err := pa.cl.Ping(ctx)
	return err == nil
}

func (p *agentPool) lent(id string, pa *pooledAgent) *vsockcli.Client {
	return pa.cl.Lease(func() { p.release(id, pa) })
}

// release gives back one reference to pa.
func (p *agentPool) release(id string, pa *pooledAgent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pa.refs--
	pa.lastUsed = time.Now()
	if pa.refs > 0 {
		return
	}
	if pa.dead || p.closed {
		pa.cl.Close()
		return
	}
	var t *time.Timer
	t = time.AfterFunc(p.idle, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if pa.refs == 0 && pa.timer == t {
			p.forgetLocked(id, pa)
		}
	})
	pa.timer = t
}

// forget drops instance id's connection (it stopped or went away).
func (p *agentPool) forget(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pa := p.conns[id]; pa != nil {
		p.forgetLocked(id, pa)
	}
}

// forgetLocked removes pa (if it is still id's entry) and closes it when
// nobody uses it; a lent connection closes on its last release.
func (p *agentPool) forgetLocked(id string, pa *pooledAgent) {
	if p.conns[id] == pa {
		delete(p.conns, id)
	}
	if pa.dead {
		return
	}
	pa.dead = true
	p.stopTimer(pa)
	if pa.refs == 0 {
		pa.cl.Close()
	}
}

// evictLocked forgets the least recently used idle entry; false when
// every entry is in use.
func (p *agentPool) evictLocked() bool {
	var oldID string
	var old *pooledAgent
	for id, pa := range p.conns {
		if pa.refs == 0 && (old == nil || pa.lastUsed.Before(old.lastUsed)) {
			oldID, old = id, pa
		}
	}
	if old == nil {
		return false
	}
	p.forgetLocked(oldID, old)
	return true
}

func (p *agentPool) stopTimer(pa *pooledAgent) {
	if pa.timer != nil {
		pa.timer.Stop()
		pa.timer = nil
	}
}

// size is the number of pooled connections.
func (p *agentPool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// close forgets every connection; later leases fail.
func (p *agentPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for id, pa := range p.conns {
		p.forgetLocked(id, pa)
	}
}
