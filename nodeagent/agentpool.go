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

//
// A VM that a call through the Remote left running (create, start,
// restart, a restored snapshot) has its connection dialed at once in the
// background (warm), so the first `ssh vm@control-plane` after create
// finds it ready, as it does for the control plane's own VMs. A lease
// that comes while that dial is under way waits for it instead of
// dialing a second connection.

// agentPool is that pool: a vsockcli.Pool keyed by VM ID (one
// generation: a lifecycle change forgets the entry), pinging an entry
// nobody was using before it is lent again; after close, leases get
// clients of their own.
type agentPool struct {
	pool    *vsockcli.Pool
	pooling bool
	ctx     context.Context // ends on close: warm dials stop
	cancel  context.CancelFunc

	mu      sync.Mutex
	warming map[string]*warmDial
}

// warmDial is a background dial of one VM's connection.
type warmDial struct {
	done  chan struct{} // closed once its client is pooled (or dropped)
	stale bool          // the VM changed under it: drop the client
}

// warmTimeout bounds a background dial.
const warmTimeout = 30 * time.Second

func newAgentPool(idle time.Duration, max int) *agentPool {
	ctx, cancel := context.WithCancel(context.Background())
	return &agentPool{pool: vsockcli.NewPool(vsockcli.PoolConfig{Idle: idle, Max: max}), pooling: max > 0,
		ctx: ctx, cancel: cancel, warming: map[string]*warmDial{}}
}

// lease lends id's pooled client, dialing one with dial when there is
// none (or the pooled one does not answer), after waiting for a warm
// dial of id under way. Errors are dial's or ctx's.
func (p *agentPool) lease(ctx context.Context, id string, dial func(context.Context) (*vsockcli.Client, error)) (*vsockcli.Client, error) {
	p.mu.Lock()
	w := p.warming[id]
	p.mu.Unlock()
	if w != nil {
		select {
		case <-w.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return p.pool.Lease(ctx, id, "", dial)
}

// warm dials id's connection in the background and pools it, unless the
// pool pools nothing or a dial of id is already under way. A failed dial
// is dropped: the next lease dials again.
func (p *agentPool) warm(id string, dial func(context.Context) (*vsockcli.Client, error)) {
	if !p.pooling || p.ctx.Err() != nil {
		return
	}
	p.mu.Lock()
	if p.warming[id] != nil {
		p.mu.Unlock()
		return
	}
	w := &warmDial{done: make(chan struct{})}
	p.warming[id] = w
	p.mu.Unlock()
	go func() {
		defer close(w.done)
		ctx, cancel := context.WithTimeout(p.ctx, warmTimeout)
		defer cancel()
		cl, err := dial(ctx)
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.warming, id)
		if err != nil {
			return
		}
		if !w.stale {
			// Under p.mu: a forget either marked w stale before this, or
			// forgets the pooled entry after it.
			p.pool.Put(id, "", cl)
		}
		cl.Close() // a loan of the entry now, or the connection itself
	}()
}

// forget drops id's connection (its VM stopped, restarted or went away),
// and the one a warm dial under way would pool.
func (p *agentPool) forget(id string) {
	p.mu.Lock()
	if w := p.warming[id]; w != nil {
		w.stale = true
	}
	p.mu.Unlock()
	p.pool.Forget(id)
}

// size is the number of pooled connections.
func (p *agentPool) size() int { return p.pool.Size() }

// close forgets every connection and stops warm dials; later leases get
// unpooled ones.
func (p *agentPool) close() {
	p.cancel()
	p.pool.Close()
}
