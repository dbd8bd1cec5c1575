package proxy

import (
	"context"
	"net"
	"testing"
)

// TestConnAbortClosesUpstream: the loop connection's abort closes the
// upstream connection a request is using, as the context.AfterFunc it
// replaces did: while watched, when watched after the abort, and not
// after unwatchUp.
func TestConnAbortClosesUpstream(t *testing.T) {
	newPC := func() (*upConn, net.Conn) {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		return &upConn{conn: a}, b
	}
	closed := func(peer net.Conn) bool {
		_, err := peer.Write([]byte{1})
		return err != nil
	}
	newHC := func() *h1Conn {
		hc := &h1Conn{}
		hc.ctx, hc.cancel = context.WithCancel(context.Background())
		return hc
	}

	hc := newHC()
	pc, peer := newPC()
	hc.watchUp(pc)
	hc.abort()
	if hc.ctx.Err() == nil || pc.state.Load() != 2 || !closed(peer) {
		t.Fatalf("abort while watched: ctx %v, state %d", hc.ctx.Err(), pc.state.Load())
	}
	if hc.unwatchUp(pc) {
		t.Fatal("unwatchUp after abort: true, want false")
	}

	hc = newHC()
	pc, peer = newPC()
	hc.abort()
	hc.watchUp(pc)
	if pc.state.Load() != 2 || !closed(peer) {
		t.Fatalf("watched after abort: state %d", pc.state.Load())
	}

	hc = newHC()
	pc, _ = newPC()
	hc.watchUp(pc)
	if !hc.unwatchUp(pc) {
		t.Fatal("unwatchUp: false, want true")
	}
	hc.abort()
	if pc.state.Load() != 0 {
		t.Fatalf("abort after unwatchUp: state %d, want 0 (left open)", pc.state.Load())
	}
}
