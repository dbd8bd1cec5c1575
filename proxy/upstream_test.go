package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minionsdev/minions/proxy"
)

// scriptedUpstream accepts connections, counts them, and answers each
// request read on a connection with answer(conn number, request number,
// request, conn); answer returns false to stop serving that connection
// (which is then closed).
func scriptedUpstream(t *testing.T, answer func(c, n int, r *http.Request, w net.Conn) bool) (addr string, conns *atomic.Int32) {
	t.Helper()
	conns = new(atomic.Int32)
	addr = rawUpstream(t, func(c net.Conn) {
		id := int(conns.Add(1))
		br := bufio.NewReader(c)
		for n := 1; ; n++ {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if !answer(id, n, r, c) {
				return
			}
		}
	})
	return addr, conns
}

func publicRoute(addr string) proxy.Route {
	return proxy.Route{VMID: "vm", VMName: "vm", Upstream: addr, Public: true, Running: true}
}

// Requests without a body reuse one upstream connection while the VM keeps
// it open, whatever the response's framing (length, chunked, no body);
// a VM's "Connection: close" is honoured.
func TestUpstreamKeepAlive(t *testing.T) {
	l := startLocal(t, nil)
	answers := map[string]string{
		"/len":     "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nlen",
		"/chunked": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nchunked\r\n0\r\n\r\n",
		"/empty":   "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"/204":     "HTTP/1.1 204 No Content\r\n\r\n",
		"/304":     "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
		"/close":   "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nclose",
	}
	addr, conns := scriptedUpstream(t, func(_, _ int, r *http.Request, c net.Conn) bool {
		a := answers[r.URL.Path]
		if r.Method == http.MethodHead {
			a = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
		}
		io.WriteString(c, a)
		return !strings.Contains(a, "Connection: close")
	})
	l.table.Set("vm.localhost", publicRoute(addr))
	want := map[string]string{"/len": "len", "/chunked": "chunked", "/empty": "", "/204": "", "/304": ""}
	for range 3 {
		for _, path := range []string{"/len", "/chunked", "/empty", "/204", "/304"} {
			status, body, _ := get(t, l.client, l.url("vm", path))
			if body != want[path] || status/100 > 3 {
				t.Fatalf("GET %s: %d %q", path, status, body)
			}
		}
		req, _ := http.NewRequest(http.MethodHead, l.url("vm", "/"), nil)
		resp, err := l.client.Do(req)
		if err != nil || resp.StatusCode != 200 || resp.ContentLength != 1000 {
			t.Fatalf("HEAD: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("18 requests took %d upstream connections, want 1", n)
	}
	for range 3 {
		if status, body, _ := get(t, l.client, l.url("vm", "/close")); status != 200 || body != "close" {
			t.Fatalf("GET /close: %d %q", status, body)
		}
	}
	// The first /close used the pooled connection; each closes its own.
	if n := conns.Load(); n != 3 {
		t.Fatalf("3 requests answered with Connection: close took %d connections in all, want 3", n)
	}
}

// A VM that closes an idle keep-alive connection (its keep-alive timeout)
// costs nobody an error: the proxy does not send on a connection the VM
// has closed, and a GET that meets one closing under it is retried once.
func TestUpstreamClosedIdleConnection(t *testing.T) {
	l := startLocal(t, nil)
	addr, conns := scriptedUpstream(t, func(c, _ int, _ *http.Request, w net.Conn) bool {
		fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d", c%10)
		return false // closes at once, without saying so
	})
	l.table.Set("vm.localhost", publicRoute(addr))
	for i := 1; i <= 5; i++ {
		status, body, _ := get(t, l.client, l.url("vm", "/"))
		if status != 200 || body != fmt.Sprint(i%10) {
			t.Fatalf("request %d: %d %q", i, status, body)
		}
		if i%2 == 0 {
			time.Sleep(50 * time.Millisecond) // the FIN has arrived by now
		}
	}
	if n := conns.Load(); n != 5 {
		t.Fatalf("upstream saw %d connections, want 5", n)
	}
}

// Bytes a VM sends on an idle connection (beyond a response's length, or
// later, unasked) never reach the client of the next request on it.
func TestUpstreamUnsolicitedBytes(t *testing.T) {
	l := startLocal(t, nil)
	forged := "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
	addr, _ := scriptedUpstream(t, func(c, n int, r *http.Request, w net.Conn) bool {
		switch r.URL.Path {
		case "/trailing": // the forged answer in the same write as the real one
			io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"+forged)
		case "/later": // the forged answer after the response, unasked
			io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			time.Sleep(20 * time.Millisecond)
			io.WriteString(w, forged)
		default:
			fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nc%d/%d", c, n)
		}
		return true
	})
	l.table.Set("vm.localhost", publicRoute(addr))
	for _, path := range []string{"/trailing", "/later"} {
		if status, body, _ := get(t, l.client, l.url("vm", path)); status != 200 || body != "ok" {
			t.Fatalf("GET %s: %d %q", path, status, body)
		}
		time.Sleep(100 * time.Millisecond)
		status, body, _ := get(t, l.client, l.url("vm", "/"))
		if status != 200 || !strings.HasSuffix(body, "/1") {
			t.Fatalf("GET / after %s: %d %q; want the first answer of a new connection", path, status, body)
		}
	}
}

// A VM's endless response headers are cut at a bound: 502, not a proxy
// that buffers without end.
func TestUpstreamHeaderLimit(t *testing.T) {
	l := startLocal(t, nil)
	addr, _ := scriptedUpstream(t, func(_, _ int, _ *http.Request, w net.Conn) bool {
		io.WriteString(w, "HTTP/1.1 200 OK\r\n")
		line := "X-Junk: " + strings.Repeat("j", 1000) + "\r\n"
		for range 4 << 10 { // 4 MiB of headers
			if _, err := io.WriteString(w, line); err != nil {
				return false
			}
		}
		return false
	})
	l.table.Set("vm.localhost", publicRoute(addr))
	if status, _, _ := get(t, l.client, l.url("vm", "/")); status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", status)
	}
}

// A client that gives up while the VM thinks closes the proxy's request
// to the VM at once.
func TestUpstreamCancelledByClient(t *testing.T) {
	l := startLocal(t, nil)
	gone := make(chan struct{}, 1)
	addr, _ := scriptedUpstream(t, func(_, _ int, _ *http.Request, w net.Conn) bool {
		_, _ = w.Read(make([]byte, 1)) // returns when the proxy closes
		gone <- struct{}{}
		return false
	})
	l.table.Set("vm.localhost", publicRoute(addr))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, l.url("vm", "/"), nil)
	if resp, err := l.client.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("request answered; want the client's own timeout")
	}
	select {
	case <-gone:
	case <-time.After(3 * time.Second):
		t.Fatal("the proxy kept its request to the VM open after the client left")
	}
}

// Informational responses (103 Early Hints) reach the client before the
// final one.
func TestUpstreamEarlyHints(t *testing.T) {
	l := startLocal(t, nil)
	addr, _ := scriptedUpstream(t, func(_, _ int, _ *http.Request, w net.Conn) bool {
		io.WriteString(w, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	l.table.Set("vm.localhost", publicRoute(addr))
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, fmt.Sprint(code, " ", h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, l.url("vm", "/"), nil)
	resp, err := l.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" || len(hints) != 1 || hints[0] != "103 </style.css>; rel=preload" {
		t.Fatalf("got %d %q, hints %q", resp.StatusCode, body, hints)
	}
}

// A request whose headers the socket does not take in one write still
// reaches the VM whole.
func TestUpstreamLargeRequestHeaders(t *testing.T) {
	l := startLocal(t, nil)
	addr, _ := scriptedUpstream(t, func(_, _ int, r *http.Request, w net.Conn) bool {
		body := fmt.Sprint(len(r.Header.Get("X-Big")), " ", r.Header.Get("X-End"))
		fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		return true
	})
	l.table.Set("vm.localhost", publicRoute(addr))
	big := strings.Repeat("b", 900<<10)
	for range 2 {
		status, body, _ := get(t, l.client, l.url("vm", "/"), "X-Big", big, "X-End", "end")
		if status != 200 || body != fmt.Sprint(len(big), " end") {
			t.Fatalf("got %d %.100q", status, body)
		}
	}
}
