package vsockcli

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/guestagent/link"
)

// The connection to the guest through the relay: reconnects, a guest that
// dies silently, WaitReady's phases.

// TestRelayReconnect: the guest side goes away and comes back (a VM
// reboot as the relay sees it); the relay redoes the handshake and new
// connections work. Then the serial socket disappears for good and the
// relay returns by itself.
func TestRelayReconnect(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{goneAfter: 500 * time.Millisecond})
	c := e.client(ctx)
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		e.stopGuest()
		c.Close()
		// While the guest is down, CONNECT fails or waits; nothing hangs.
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		if _, err := Dial(short, e.ep, e.config()); err == nil {
			t.Fatal("dial succeeded with the guest down")
		}
		cancel()
		os.Remove(e.serial)
		e.startGuest()
		start := time.Now()
		c = e.client(ctx)
		if _, err := c.Ping(ctx); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		t.Logf("round %d: reconnected in %v", i, time.Since(start))
	}
	e.stopGuest()
	os.Remove(e.serial)
	select {
	case err := <-e.relayDone:
		e.relayDone <- err
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not return after the serial socket went away")
	}
	if _, err := os.Stat(e.listen); !os.IsNotExist(err) {
		t.Fatal("relay left its socket behind")
	}
}

// TestGuestDiesSilently: the guest side stops answering without closing
// the serial connection (a guest reboot under QEMU keeps the chardev
// connected); the relay's keepalive notices, it reconnects and redoes the
// handshake with the new guest.
func TestGuestDiesSilently(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	e.stopGuest()
	os.Remove(e.serial)
	l, err := net.Listen("unix", e.serial)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	serve := func(ctx context.Context) {
		link.Serve(ctx, func(ctx context.Context) (io.ReadWriteCloser, error) {
			c, err := l.Accept()
			if err != nil {
				return nil, err
			}
			conns = append(conns, c)
			// The guest never closes the connection itself.
			return noClose{c}, nil
		}, func(c net.Conn) { e.srv.ServeConn(ctx, c) }, nil)
	}
	g1, stop1 := context.WithCancel(ctx)
	done1 := make(chan struct{})
	go func() { serve(g1); close(done1) }()
	c := e.client(ctx)
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	stop1()
	<-done1
	c.Close()
	go serve(ctx)
	start := time.Now()
	c = e.client(ctx)
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("reconnected after a silent guest death in %v", time.Since(start))
}

type noClose struct{ net.Conn }

func (noClose) Close() error { return nil }

// TestWaitReadyObserves: WaitReady tells Config.Observe how long it
// connected, shook hands and pinged (the phases of a fork's "agent" step).
func TestWaitReadyObserves(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	cfg := e.config()
	var mu sync.Mutex
	got := map[string]time.Duration{}
	var order []string
	cfg.Observe = func(phase string, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, phase)
		got[phase] += d
	}
	c, err := WaitReady(ctx, e.ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("phases %v: %v", order, got)
	for _, p := range []string{"connect", "handshake", "ping"} {
		if d, ok := got[p]; !ok || d <= 0 {
			t.Errorf("phase %s: %v, %v (want a positive time)", p, d, ok)
		}
	}
	// NoPing: the handshake is the last phase.
	clear(got)
	cfg.NoPing = true
	c2, err := WaitReady(ctx, e.ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, ok := got["ping"]; ok || got["handshake"] <= 0 {
		t.Errorf("with NoPing: phases %v, want a handshake and no ping", got)
	}
	if _, err := c2.Ping(ctx); err != nil {
		t.Errorf("client from WaitReady with NoPing: %v", err)
	}
}
