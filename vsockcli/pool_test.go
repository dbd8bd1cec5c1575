package vsockcli

import (
	"context"
	"testing"
	"time"
)

// waitClosed reports whether c's connection closes within d.
func waitClosed(c *Client, d time.Duration) bool {
	done := make(chan struct{})
	go func() { c.SSH().Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// TestPoolPut: a connection the caller dialed and Put is what the next
// Lease lends, with no dial; the caller's Close returns it instead of
// closing it. Put leaves the client the caller's (Close closes it) when
// the key already has an entry of that generation, when the pool is
// closed and when it pools nothing; an entry of another generation is
// replaced.
func TestPoolPut(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := testCtx(t)
	dials := 0
	dial := func(ctx context.Context) (*Client, error) {
		dials++
		return Dial(ctx, e.ep, e.config())
	}
	p := NewPool(PoolConfig{Idle: time.Minute, Max: 4, PingAfter: time.Hour})
	defer p.Close()

	own := e.client(ctx)
	p.Put("vm", "g1", own)
	if p.Size() != 1 {
		t.Fatalf("pool size %d after Put, want 1", p.Size())
	}
	own.Close() // the creator is done with it: back to the pool, still open
	for i := 0; i < 3; i++ {
		cl, err := p.Lease(ctx, "vm", "g1", dial)
		if err != nil {
			t.Fatal(err)
		}
		if cl.SSH() != own.SSH() {
			t.Fatal("Lease after Put lent another connection")
		}
		if _, err := cl.Ping(ctx); err != nil {
			t.Fatalf("ping over the put connection: %v", err)
		}
		cl.Close()
	}
	if dials != 0 {
		t.Fatalf("leases after Put dialed %d times, want 0", dials)
	}

	// The key has an entry of g1: a second Put does nothing and the
	// caller's Close closes its own connection.
	other := e.client(ctx)
	p.Put("vm", "g1", other)
	other.Close()
	if !waitClosed(other, 5*time.Second) {
		t.Fatal("Put over an entry of the same generation kept the client")
	}
	if cl, err := p.Lease(ctx, "vm", "g1", dial); err != nil || cl.SSH() != own.SSH() {
		t.Fatalf("lease after a refused Put: %v (same connection %v)", err, err == nil && cl.SSH() == own.SSH())
	} else {
		cl.Close()
	}

	// Another generation (the VM restarted) replaces the old entry, which
	// closes (nobody uses it).
	next := e.client(ctx)
	p.Put("vm", "g2", next)
	next.Close()
	if !waitClosed(own, 5*time.Second) {
		t.Fatal("the entry of the old generation was not closed")
	}
	cl, err := p.Lease(ctx, "vm", "g2", dial)
	if err != nil || cl.SSH() != next.SSH() || dials != 0 {
		t.Fatalf("lease of g2: %v, dials %d", err, dials)
	}
	cl.Close()

	// A pool that pools nothing, and a closed pool, leave the client alone.
	none := NewPool(PoolConfig{Idle: time.Minute, Max: 0})
	c := e.client(ctx)
	none.Put("vm", "g1", c)
	c.Close()
	if !waitClosed(c, 5*time.Second) || none.Size() != 0 {
		t.Fatalf("a pool with Max 0 kept the client (size %d)", none.Size())
	}
	p.Close()
	c = e.client(ctx)
	p.Put("vm2", "g1", c)
	c.Close()
	if !waitClosed(c, 5*time.Second) || p.Size() != 0 {
		t.Fatalf("a closed pool kept the client (size %d)", p.Size())
	}
}
