package nodeagent

import (
	"context"
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

// agentPool is that pool: a vsockcli.Pool keyed by VM ID (one
// generation: a lifecycle change forgets the entry), pinging an entry
// nobody was using before it is lent again; after close, leases get
// clients of their own.
type agentPool struct{ pool *vsockcli.Pool }

func newAgentPool(idle time.Duration, max int) *agentPool {
	return &agentPool{pool: vsockcli.NewPool(vsockcli.PoolConfig{Idle: idle, Max: max})}
}

// lease lends id's pooled client, dialing one with dial when there is
// none (or the pooled one does not answer). Errors are dial's.
func (p *agentPool) lease(ctx context.Context, id string, dial func(context.Context) (*vsockcli.Client, error)) (*vsockcli.Client, error) {
	return p.pool.Lease(ctx, id, "", dial)
}

// forget drops id's connection (its VM stopped, restarted or went away).
func (p *agentPool) forget(id string) { p.pool.Forget(id) }

// size is the number of pooled connections.
func (p *agentPool) size() int { return p.pool.Size() }

// close forgets every connection; later leases get unpooled ones.
func (p *agentPool) close() { p.pool.Close() }
