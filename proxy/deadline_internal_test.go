package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// TestLoopIdleDeadlineMovedRarely: a busy keep-alive connection does not
// move its read deadline for every request (a timer-heap change each),
// and a connection left idle is still closed after between 7/8 of the
// idle timeout and the idle timeout.
func TestLoopIdleDeadlineMovedRarely(t *testing.T) {
	const idle = 800 * time.Millisecond
	rt := Route{VMID: "vm1", VMName: "web", Upstream: fixedUpstream(t), Public: true, Running: true}
	p, err := New(Config{HTTPBind: "127.0.0.1:0", Secret: make([]byte, SecretSize), Log: slog.New(slog.DiscardHandler),
		UpstreamHeaderTimeout: 5 * time.Second, RatePerSecond: -1, IdleTimeout: idle}, fixedRoutes{rt}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, nil, ln) }()
	defer func() { cancel(); <-served }()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4<<10)
	const n = 50
	start := time.Now()
	for range n {
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		have := 0
		for !bytes.HasSuffix(buf[:have], []byte("wsecho here\n")) {
			m, err := c.Read(buf[have:])
			if err != nil {
				t.Fatal(err)
			}
			have += m
		}
	}
	last := time.Now()
	// The first request's header deadline, then the idle wait's, moved
	// again only once idle/8 has passed.
	limit := int64(2 + last.Sub(start)/(idle/8) + 1)
	if got := p.deadlineSets.Load(); got > limit {
		t.Errorf("%d requests set the read deadline %d times, want at most %d", n, got, limit)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if m, err := c.Read(buf); err != io.EOF {
		t.Fatalf("idle connection: read %d bytes, %v; want EOF", m, err)
	}
	if after := time.Since(last); after < idle*7/8-20*time.Millisecond || after > idle+time.Second {
		t.Errorf("idle connection closed %v after its last answer, want between %v and %v", after, idle*7/8, idle)
	}
}
