package engine

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
)

// agentPingAfter is how long a pooled connection may sit unused before a
// reuse pings it first (a hung guest must not hang the next caller: a
// connection that does not answer is replaced by a fresh dial).
const agentPingAfter = time.Second

// agentDialer dials and authenticates an agent client (vsockcli.Dial;
// tests count the calls).
type agentDialer func(ctx context.Context, ep hypervisor.AgentEndpoint, cfg vsockcli.Config) (*vsockcli.Client, error)

// agentPool keeps one authenticated agent client per running instance and
// lends it to every caller (Exec, status, forwards, the gateway's
// channels: SSH multiplexes them over the one connection), so a call
// costs a channel instead of a dial and a handshake with the guest. It is
// a vsockcli.Pool keyed by instance ID whose generation is the hypervisor
// process reached (PID and start time): a lease for another process (the
// instance restarted or was restored) drops the old entry and dials
// again. After close, leases fail.
type agentPool struct {
	dial agentDialer
	pool *vsockcli.Pool
}

func newAgentPool(dial agentDialer, idle time.Duration, max int, log *slog.Logger) *agentPool {
	return &agentPool{dial: dial, pool: vsockcli.NewPool(vsockcli.PoolConfig{Idle: idle, Max: max, PingAfter: agentPingAfter,
		Closed: errs.New(errs.Unavailable, "engine is shutting down"), Log: log})}
}

// lease returns a client of instance id's agent on h whose Close returns
// it to the pool (never closing a connection others use). cfg
// authenticates a fresh dial. Errors are the dial's.
func (p *agentPool) lease(ctx context.Context, id string, h *hypervisor.Handle, cfg vsockcli.Config) (*vsockcli.Client, error) {
	return p.pool.Lease(ctx, id, poolGen(h), func(ctx context.Context) (*vsockcli.Client, error) {
		return p.dial(ctx, h.Agent, cfg)
	})
}

// adopt hands cl, the client an operation waited for instance id's agent
// on (h's), to the pool: cl's Close then returns it, and the next lease
// (the first `ssh vm@host`) needs no dial and handshake with the guest.
func (p *agentPool) adopt(id string, h *hypervisor.Handle, cl *vsockcli.Client) {
	p.pool.Put(id, poolGen(h), cl)
}

// forget drops instance id's connection (it stopped or went away).
func (p *agentPool) forget(id string) { p.pool.Forget(id) }

// size is the number of pooled connections.
func (p *agentPool) size() int { return p.pool.Size() }

// close forgets every connection; later leases fail.
func (p *agentPool) close() { p.pool.Close() }

// poolGen is the pool generation of h: the hypervisor process reached.
func poolGen(h *hypervisor.Handle) string { return fmt.Sprintf("%d/%d", h.PID, h.StartTime) }
