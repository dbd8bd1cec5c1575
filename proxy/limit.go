package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// rateLimiter is a token bucket per client IP. Idle buckets are swept.
type rateLimiter struct {
	rate  float64 // tokens per second; <= 0 disables
	burst float64
	now   func() time.Time

	mu        sync.Mutex
	buckets   map[string]*bucket
	nextSweep time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst int, now func() time.Time) *rateLimiter {
	return &rateLimiter{rate: rate, burst: float64(burst), now: now, buckets: make(map[string]*bucket)}
}

// allow takes one token for ip. When none is left it returns false and how
// long until the next token.
func (l *rateLimiter) allow(ip string) (bool, time.Duration) {
	if l.rate <= 0 {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.After(l.nextSweep) {
		full := time.Duration(l.burst / l.rate * float64(time.Second))
		for k, b := range l.buckets {
			if now.Sub(b.last) > full {
				delete(l.buckets, k) // refilled anyway
			}
		}
		l.nextSweep = now.Add(time.Minute)
	}
	b := l.buckets[ip]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[ip] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	}
	b.tokens--
	return true, 0
}

// connLimiter counts open connections per client IP and in total.
// Connections over either limit are still accepted (so the client gets a
// readable 429) but marked.
type connLimiter struct {
	max    int // per IP; <= 0 disables
	total  int // all IPs; <= 0 disables
	mu     sync.Mutex
	perIP  map[string]int
	open   int
	active *atomic.Int64
}

// limitListener wraps accepted connections in trackedConn.
type limitListener struct {
	net.Listener
	lim *connLimiter
}

func (l limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	ip := hostOnly(c.RemoteAddr().String())
	l.lim.mu.Lock()
	l.lim.perIP[ip]++
	l.lim.open++
	n, all := l.lim.perIP[ip], l.lim.open
	l.lim.mu.Unlock()
	l.lim.active.Add(1)
	var over overLimit
	switch {
	case l.lim.total > 0 && all > l.lim.total:
		over = overTotal
	case l.lim.max > 0 && n > l.lim.max:
		over = overPerIP
	}
	return &trackedConn{Conn: c, lim: l.lim, ip: ip, over: over}, nil
}

// overLimit says which connection limit a connection broke, if any.
type overLimit int

const (
	underLimits overLimit = iota
	overPerIP
	overTotal
)

type trackedConn struct {
	net.Conn
	lim  *connLimiter
	ip   string
	over overLimit
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.lim.mu.Lock()
		if c.lim.perIP[c.ip]--; c.lim.perIP[c.ip] <= 0 {
			delete(c.lim.perIP, c.ip)
		}
		c.lim.open--
		c.lim.mu.Unlock()
		c.lim.active.Add(-1)
	})
	return c.Conn.Close()
}

type connKey struct{}

// connContext stores the accepted connection for the handler (http.Server
// ConnContext).
func connContext(ctx context.Context, c net.Conn) context.Context {
	// Handed over by the loop: replayTLSConn or replayConn, over a
	// tls.Conn or not.
	if rc, ok := c.(*replayTLSConn); ok {
		c = rc.replayConn
	}
	if rc, ok := c.(*replayConn); ok {
		c = rc.Conn
	}
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if s, ok := c.(*sysConn); ok {
		c = s.Conn
	}
	if t, ok := c.(*trackedConn); ok {
		return context.WithValue(ctx, connKey{}, t)
	}
	return ctx
}

func overConnLimit(ctx context.Context) overLimit {
	t, _ := ctx.Value(connKey{}).(*trackedConn)
	if t == nil {
		return underLimits
	}
	return t.over
}

// idleConn extends its deadline on every read or write, so an exchange
// fails only after timeout with no traffic in either direction. It updates
// the deadline at most every timeout/8 to keep the cost negligible.
type idleConn struct {
	net.Conn
	timeout time.Duration
	last    atomic.Int64 // unix nanos of the last deadline update
}

func newIdleConn(c net.Conn, timeout time.Duration) *idleConn {
	ic := &idleConn{Conn: c, timeout: timeout}
	ic.touch()
	return ic
}

func (c *idleConn) touch() {
	now := time.Now()
	if now.UnixNano()-c.last.Load() < int64(c.timeout/8) {
		return
	}
	c.last.Store(now.UnixNano())
	_ = c.Conn.SetDeadline(now.Add(c.timeout))
}

func (c *idleConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.touch()
	}
	return n, err
}

func (c *idleConn) Write(b []byte) (int, error) {
	c.touch()
	return c.Conn.Write(b)
}

// CloseWrite lets the reverse proxy half-close upgraded connections.
func (c *idleConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func hostOnly(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
