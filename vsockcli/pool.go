package vsockcli

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Pool keeps one authenticated client per key (a VM) and lends it to every
// caller, so a call costs an SSH channel instead of a dial and a handshake
// with the guest: engine.Local pools its own VMs' agents, and the control
// plane's nodeagent.Remote the agents of a node's VMs.
//
// An entry remembers the generation it reached (for a local VM, the
// hypervisor process): a lease for another generation drops the old entry
// and dials again. An entry is forgotten as soon as its connection dies,
// on Forget (the VM stopped, restarted or went away), after it has been
// unused for Idle, and when the pool is full (the least recently used idle
// entry goes; with none idle, the caller gets a client of its own, closed
// on release). A forgotten client still lent out closes on its last
// release. Reusing an entry nobody has used for PingAfter pings the agent
// first and dials again if it does not answer (its death may not have been
// noticed yet). Safe for concurrent use.
type Pool struct {
	cfg PoolConfig

	mu     sync.Mutex
	conns  map[string]*pooled
	closed bool
}

// PoolConfig configures a Pool.
type PoolConfig struct {
	Idle      time.Duration // an unused entry is closed after this
	Max       int           // entries at most; <= 0 pools nothing
	PingAfter time.Duration // reusing an entry unused this long pings it first
	// Closed, if set, is the error of a lease after Close; nil: such
	// leases get a client of their own.
	Closed error
	Log    *slog.Logger // default: discard
}

type pooled struct {
	gen      string
	cl       *Client
	refs     int
	dead     bool // forgotten: close on the last release
	lastUsed time.Time
	timer    *time.Timer
}

// poolPingTimeout bounds the ping before a reuse.
const poolPingTimeout = 3 * time.Second

// NewPool returns an empty pool.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Pool{cfg: cfg, conns: map[string]*pooled{}}
}

// Lease lends key's client of generation gen, dialing one with dial when
// there is none usable. Its Close returns it (never closing a connection
// others use). Errors are dial's, or Config.Closed after Close.
func (p *Pool) Lease(ctx context.Context, key, gen string, dial func(context.Context) (*Client, error)) (*Client, error) {
	if pa, check := p.take(key, gen); pa != nil {
		if !check || answers(ctx, pa.cl) {
			return p.lent(key, pa), nil
		}
		p.cfg.Log.Warn("pooled agent connection does not answer; dialing again", "vm_id", key)
		p.mu.Lock()
		p.forgetLocked(key, pa)
		p.mu.Unlock()
		p.release(key, pa)
	}
	cl, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		if p.cfg.Closed != nil {
			cl.Close()
			return nil, p.cfg.Closed
		}
		return cl, nil // the caller's alone: Close closes it
	}
	if pa := p.conns[key]; pa != nil && pa.gen == gen {
		// Another caller dialed at the same time: share theirs.
		cl.Close()
		pa.refs++
		p.stopTimer(pa)
		return p.lent(key, pa), nil
	}
	pa := p.addLocked(key, gen, cl)
	if pa == nil {
		return cl, nil // full of busy connections: the caller's alone
	}
	return p.lent(key, pa), nil
}

// addLocked makes cl key's entry of generation gen with one reference
// taken (forgetting an entry of another generation), or returns nil when
// the pool pools nothing or is full of busy entries.
func (p *Pool) addLocked(key, gen string, cl *Client) *pooled {
	if old := p.conns[key]; old != nil {
		p.forgetLocked(key, old)
	}
	if p.cfg.Max <= 0 || (len(p.conns) >= p.cfg.Max && !p.evictLocked()) {
		return nil
	}
	pa := &pooled{gen: gen, cl: cl, refs: 1, lastUsed: time.Now()}
	p.conns[key] = pa
	go func() {
		err := cl.SSH().Wait()
		p.mu.Lock()
		p.forgetLocked(key, pa)
		p.mu.Unlock()
		p.cfg.Log.Debug("agent connection closed", "vm_id", key, "err", err)
	}()
	return pa
}

// Put hands cl, a client of key's generation gen that the caller dialed
// and still uses, to the pool: cl becomes a loan of the pooled entry (its
// Close returns it instead of closing the connection), so the next Lease
// of key needs no dial. An engine puts the connection it waited for a
// VM's agent on, so the first `ssh vm@host` after create starts at once.
// Put does nothing when key already has an entry of gen (cl stays the
// caller's: its Close closes it), when the pool pools nothing, is full of
// busy entries or closed. An entry of another generation is replaced.
// The caller must not Close cl concurrently with Put.
func (p *Pool) Put(key, gen string, cl *Client) {
	if cl == nil || cl.release != nil {
		return // nil, or already a loan
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if pa := p.conns[key]; pa != nil && pa.gen == gen && !pa.dead {
		return
	}
	pa := p.addLocked(key, gen, &Client{ssh: cl.ssh})
	if pa == nil {
		return
	}
	var once sync.Once
	cl.release = func() { once.Do(func() { p.release(key, pa) }) }
}

// take returns key's live entry of generation gen with a reference taken
// and whether it must answer a ping before use (nobody was using it, for
// PingAfter or longer), or nil. An entry of another generation is
// forgotten.
func (p *Pool) take(key, gen string) (*pooled, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pa := p.conns[key]
	if pa == nil || p.closed {
		return nil, false
	}
	if pa.gen != gen {
		p.forgetLocked(key, pa)
		return nil, false
	}
	check := pa.refs == 0 && time.Since(pa.lastUsed) >= p.cfg.PingAfter
	pa.refs++
	p.stopTimer(pa)
	return pa, check
}

func answers(ctx context.Context, cl *Client) bool {
	ctx, cancel := context.WithTimeout(ctx, poolPingTimeout)
	defer cancel()
	_, err := cl.Ping(ctx)
	return err == nil
}

func (p *Pool) lent(key string, pa *pooled) *Client {
	return pa.cl.Lease(func() { p.release(key, pa) })
}

// release gives back one reference to pa.
func (p *Pool) release(key string, pa *pooled) {
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
	t = time.AfterFunc(p.cfg.Idle, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if pa.refs == 0 && pa.timer == t {
			p.forgetLocked(key, pa)
		}
	})
	pa.timer = t
}

// Forget drops key's connection (its VM stopped, restarted or went away).
func (p *Pool) Forget(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pa := p.conns[key]; pa != nil {
		p.forgetLocked(key, pa)
	}
}

// forgetLocked removes pa (if it is still key's entry) and closes it when
// nobody uses it; a lent client closes on its last release.
func (p *Pool) forgetLocked(key string, pa *pooled) {
	if p.conns[key] == pa {
		delete(p.conns, key)
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
func (p *Pool) evictLocked() bool {
	var oldKey string
	var old *pooled
	for key, pa := range p.conns {
		if pa.refs == 0 && (old == nil || pa.lastUsed.Before(old.lastUsed)) {
			oldKey, old = key, pa
		}
	}
	if old == nil {
		return false
	}
	p.forgetLocked(oldKey, old)
	return true
}

func (p *Pool) stopTimer(pa *pooled) {
	if pa.timer != nil {
		pa.timer.Stop()
		pa.timer = nil
	}
}

// Size is the number of pooled connections.
func (p *Pool) Size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close forgets every connection (lent ones close on their release).
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for key, pa := range p.conns {
		p.forgetLocked(key, pa)
	}
}
