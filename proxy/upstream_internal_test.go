package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The pool of idle upstream connections is bounded per address and in
// all, and forgets connections idle longer than its timeout.
func TestUpstreamPoolBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	u := newUpstream(nil, nil, time.Second)
	u.maxIdle, u.maxIdlePer, u.idleTimeout = 3, 2, time.Minute
	u.now = func() time.Time { return now }
	conn := func(addr string) *upConn {
		a, b := net.Pipe()
		t.Cleanup(func() { b.Close() })
		return u.newConn(addr, a)
	}
	isClosed := func(pc *upConn) bool {
		_ = pc.conn.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := pc.conn.Read(make([]byte, 1))
		return err != nil && !isTimeout(err)
	}
	a1, a2, a3 := conn("a"), conn("a"), conn("a")
	b1, b2 := conn("b"), conn("b")
	for _, pc := range []*upConn{a1, a2, a3, b1, b2} {
		u.put(pc)
	}
	if u.nIdle != 3 || len(u.idle["a"]) != 2 || len(u.idle["b"]) != 1 {
		t.Fatalf("pooled %d: a %d, b %d; want 3: a 2 (per-address bound), b 1 (total bound)", u.nIdle, len(u.idle["a"]), len(u.idle["b"]))
	}
	if !isClosed(a3) || !isClosed(b2) || isClosed(a1) || isClosed(b1) {
		t.Fatal("the connections left out of the pool must be closed, the pooled ones open")
	}
	// The most recently pooled connection is reused first.
	if pc, reused, err := u.get(t.Context(), "a"); err != nil || !reused || pc != a2 {
		t.Fatalf("get a: %p reused=%v err=%v; want a2 %p", pc, reused, err, a2)
	}
	// An hour later a1 and b1 are stale: get closes a1 rather than reuse
	// it, and the next put sweeps b1.
	now = now.Add(time.Hour)
	u.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		a, b := net.Pipe()
		t.Cleanup(func() { b.Close() })
		return a, nil
	}
	pc, reused, err := u.get(t.Context(), "a")
	if err != nil || reused || !isClosed(a1) {
		t.Fatalf("get a after an hour: reused=%v err=%v a1 closed=%v; want a new connection and a1 closed", reused, err, isClosed(a1))
	}
	u.put(pc)
	if u.nIdle != 1 || len(u.idle["b"]) != 0 || !isClosed(b1) {
		t.Fatalf("after the sweep: %d idle, b %d; want only the new one", u.nIdle, len(u.idle["b"]))
	}
	u.CloseIdleConnections()
	if u.nIdle != 0 || !isClosed(pc) {
		t.Fatal("CloseIdleConnections left a connection open")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// A request the socket takes only in part is finished by an ordinary
// write, and its answer read whole.
func TestUpstreamPartialSend(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		time.Sleep(200 * time.Millisecond) // let the proxy's send buffer fill
		r, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			got <- -1
			return
		}
		got <- len(r.Header.Get("X-Big"))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}()
	var partial atomic.Bool
	u := newUpstream(func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c.(*net.TCPConn).SetWriteBuffer(4096)
		return c, nil
	}, nil, 5*time.Second)
	u.sentPart = func() { partial.Store(true) }
	req, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/", nil)
	big := strings.Repeat("b", 2<<20)
	req.Header.Set("X-Big", big)
	resp, err := u.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if n := <-got; n != len(big) || string(body) != "ok" || !partial.Load() {
		t.Fatalf("upstream got %d header bytes of %d, answer %q, partial send %v", n, len(big), body, partial.Load())
	}
	// The pooled connection does not keep a 2 MiB request buffer.
	for _, l := range u.idle {
		for _, pc := range l {
			if pc.out.Cap() > maxKeptRequest {
				t.Errorf("a pooled connection keeps a %d-byte request buffer", pc.out.Cap())
			}
		}
	}
	if u.nIdle != 1 {
		t.Errorf("%d pooled connections after one exchange, want 1", u.nIdle)
	}
}
