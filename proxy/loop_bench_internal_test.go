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

// benchAnswer is what the e2e benchmark's VM answers (Go's net/http, a
// one-line page).
const benchAnswer = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Date: Sun, 06 Dec 2026 06:00:00 GMT\r\n\r\nwsecho here\n"

// fixedUpstream answers every request (a header without a body) with
// benchAnswer, allocating nothing per request, so that a benchmark's
// allocations are the proxy's.
func fixedUpstream(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 8<<10)
				have := 0
				for {
					n, err := c.Read(buf[have:])
					if err != nil {
						return
					}
					have += n
					for {
						i := bytes.Index(buf[:have], []byte("\r\n\r\n"))
						if i < 0 {
							break
						}
						if _, err := io.WriteString(c, benchAnswer); err != nil {
							return
						}
						have = copy(buf, buf[i+4:have])
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// BenchmarkLoopRequest is one keep-alive proxied request as the e2e
// BenchmarkProxy's client sends it, through the loop (local mode, JSON
// access log, rate limit off) to an upstream on the host that answers at
// once. The client and the upstream allocate nothing per request, so
// allocs/op is the proxy's.
//
//	go test -run '^$' -bench LoopRequest -benchmem ./proxy/
func BenchmarkLoopRequest(b *testing.B) {
	rt := Route{VMID: "vm1", VMName: "web", Owner: "u1", Upstream: fixedUpstream(b), Public: true, Running: true}
	p, err := New(Config{HTTPBind: "127.0.0.1:0", Secret: make([]byte, SecretSize),
		Log: slog.New(slog.DiscardHandler), AccessLog: NewJSONAccessLog(io.Discard, slog.String("component", "access")),
		UpstreamHeaderTimeout: 5 * time.Second, RatePerSecond: -1}, fixedRoutes{rt}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, nil, ln) }()
	defer func() {
		cancel()
		<-served
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := []byte("GET / HTTP/1.1\r\nHost: pbench.localhost\r\nUser-Agent: Go-http-client/1.1\r\n\r\n")
	buf := make([]byte, 4<<10)
	one := func() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		have := 0
		for {
			n, err := c.Read(buf[have:])
			if err != nil {
				b.Fatal(err)
			}
			have += n
			// The answer ends with its 12-byte body.
			if have > 12 && bytes.HasSuffix(buf[:have], []byte("wsecho here\n")) {
				break
			}
		}
		if !bytes.HasPrefix(buf[:have], []byte("HTTP/1.1 200 OK\r\n")) {
			b.Fatalf("answer %q", buf[:have])
		}
	}
	for range 10 {
		one()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		one()
	}
}
