package nodeagent

import (
	"context"
	"sync"
	"time"

	"github.com/minionsdev/minions/vsockcli"
)

// Pooled agent connections of a node's VMs, on the control plane.
//
// A Remote keeps one authenticated agent client per VM of its node and
// lends it to every Agent caller, the way engine.Local pools the agents
// of its own VMs: a new user session (`ssh vm@control-plane`, exec, sftp)
// then costs an SSH channel on that connection instead of a ticket, a TLS
// handshake to the node, the pinned key, a node-signed login and an SSH
// handshake with the guest. Who may use the VM is still decided per call
// by the service, before Agent.
//
// An entry is forgotten as soon as its connection dies (the VM stopped,
// the node or the direct connection went away), when the VM's lifecycle
// changes through this Remote (Start, Stop, Restart, Destroy,
// RestoreSnapshot, an exit the node publishes: a new hypervisor process
// always gets a fresh dial and the pinned key checked again), after it
// has been unused for RemoteConfig.AgentIdle, and when the pool is full
// (the least recently used idle entry goes; with none idle, the caller
// gets a connection of its own, closed on release). A forgotten
// connection still lent out closes on its last release. Reusing a
// connection nobody was using pings the agent first (one round trip, a
// fraction of a millisecond) and dials again if it does not answer: the
// path to a node can break (a node restart, a closed direct listener)
// between two sessions, and its death may not have been noticed yet.

// agentPingTimeout bounds that ping.
const agentPingTimeout = 3 * time.Second

type agentPool struct {
	idle time.Duration
	max  int

	mu     sync.Mutex
	conns  map[string]*pooledAgent // by VM ID
	closed bool
}

type pooledAgent struct {
	cl       *vsockcli.Client
	refs     int
	dead     bool // forgotten: close on the last release
	lastUsed time.Time
	timer    *time.Timer
}

func newAgentPool(idle time.Duration, max int) *agentPool {
	return &agentPool{idle: idle, max: max, conns: map[string]*pooledAgent{}}
}

// lease lends id's pooled client, dialing one with dial when there is
// none (or the pooled one does not answer). Errors are dial's.
func (p *agentPool) lease(ctx context.Context, id string, dial func(context.Context) (*vsockcli.Client, error)) (*vsockcli.Client, error) {
	if pa, idle := p.take(id); pa != nil {
		if !idle || answers(ctx, pa.cl) {
			return p.lent(id, pa), nil
		}
		p.mu.Lock()
		p.forgetLocked(id, pa)
		p.mu.Unlock()
		p.release(id, pa)
	}
	cl, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.max <= 0 {
		return cl, nil // the caller's alone: Close closes it
	}
	if pa := p.conns[id]; pa != nil {
		// Another caller dialed at the same time: share theirs.
		cl.Close()
		pa.refs++
		p.stopTimer(pa)
		return p.lent(id, pa), nil
	}
	if len(p.conns) >= p.max && !p.evictLocked() {
		return cl, nil
	}
	pa := &pooledAgent{cl: cl, refs: 1, lastUsed: time.Now()}
	p.conns[id] = pa
	go func() {
		cl.SSH().Wait()
		p.mu.Lock()
		p.forgetLocked(id, pa)
		p.mu.Unlock()
	}()
	return p.lent(id, pa), nil
}

func answers(ctx context.Context, cl *vsockcli.Client) bool {
	ctx, cancel := context.WithTimeout(ctx, agentPingTimeout)
	defer cancel()
	_, err := cl.Ping(ctx)
	return err == nil
}

// take returns id's live entry with a reference taken and whether
// nobody was using it, or nil.
func (p *agentPool) take(id string) (*pooledAgent, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pa := p.conns[id]
	if pa == nil || p.closed {
		return nil, false
	}
	idle := pa.refs == 0
	pa.refs++
	p.stopTimer(pa)
	return pa, idle
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

// forget drops id's connection (its VM stopped, restarted or went away).
func (p *agentPool) forget(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pa := p.conns[id]; pa != nil {
		p.forgetLocked(id, pa)
	}
}

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

// close forgets every connection; later leases get unpooled ones.
func (p *agentPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for id, pa := range p.conns {
		p.forgetLocked(id, pa)
	}
}
