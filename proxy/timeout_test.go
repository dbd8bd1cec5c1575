package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/proxy"
)

// rawUpstream accepts connections and runs serve on each.
func rawUpstream(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln := listen(t)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return ln.Addr().String()
}

func readRequest(c net.Conn) {
	_, _ = http.ReadRequest(bufio.NewReader(c))
}

func TestTimeouts(t *testing.T) {
	const idle = 400 * time.Millisecond
	l := startLocal(t, func(c *proxy.Config) {
		c.UpstreamHeaderTimeout = 300 * time.Millisecond
		c.IdleTimeout = idle
	})
	silent := rawUpstream(t, func(c net.Conn) { readRequest(c); time.Sleep(5 * time.Second) })
	stall := rawUpstream(t, func(c net.Conn) {
		readRequest(c)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
		time.Sleep(5 * time.Second)
	})
	slow := rawUpstream(t, func(c net.Conn) {
		readRequest(c)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
		for i := range 10 { // 1.5 s in all, never idle for long
			fmt.Fprintf(c, "2\r\n%d\n\r\n", i)
			time.Sleep(150 * time.Millisecond)
		}
		io.WriteString(c, "0\r\n\r\n")
	})
	route := func(addr string) proxy.Route {
		return proxy.Route{VMID: "x", VMName: "x", Upstream: addr, Public: true, Running: true}
	}
	l.table.Set("silent.localhost", route(silent))
	l.table.Set("stall.localhost", route(stall))
	l.table.Set("slow.localhost", route(slow))

	start := time.Now()
	status, body, _ := get(t, l.client, l.url("silent", "/"))
	if status != http.StatusGatewayTimeout || !strings.Contains(body, "not answering") || time.Since(start) > 3*time.Second {
		t.Fatalf("silent vm: %d %q after %v", status, body, time.Since(start))
	}

	start = time.Now()
	resp, err := l.client.Get(l.url("stall", "/"))
	if err == nil { // headers may or may not have been flushed before the cut
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("stalled body: err=%v after %v; want an error within ~%v", err, time.Since(start), idle)
	}

	// A slow but steady stream outlives the idle timeout: no total timeout.
	status, body, _ = get(t, l.client, l.url("slow", "/"))
	if status != 200 || body != "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n" {
		t.Fatalf("slow stream: %d %q", status, body)
	}
}
