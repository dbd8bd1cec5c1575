package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLoopWatchesSlowRequests: the loop notices a client that goes away
// while its request waits for the VM (it watches the client's connection
// once a request has run watchAfter), and closes the request to the VM;
// also when earlier requests on the same connection were quick. A
// request the client sends while the previous one is slow (pipelined)
// is answered after it, its first byte not lost to the watch.
func TestLoopWatchesSlowRequests(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	vmGone := make(chan string, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					r, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					path := r.URL.Path
					if ms, err := strconv.Atoi(strings.TrimPrefix(path, "/sleep/")); err == nil {
						time.Sleep(time.Duration(ms) * time.Millisecond)
					} else if path == "/never" {
						_, _ = br.ReadByte() // until the proxy closes the connection
						vmGone <- path
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(path))+"\r\n\r\n"+path)
				}
			}()
		}
	}()
	rt := Route{VMID: "vm1", VMName: "web", Upstream: ln.Addr().String(), Public: true, Running: true}
	p, err := New(Config{HTTPBind: "127.0.0.1:0", Secret: make([]byte, SecretSize), Log: slog.New(slog.DiscardHandler),
		UpstreamHeaderTimeout: time.Minute}, fixedRoutes{rt}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, nil, pl) }()
	defer func() { cancel(); <-served }()

	ask := func(c net.Conn, br *bufio.Reader, path string) {
		t.Helper()
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: web.localhost\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != path {
			t.Fatalf("GET %s: %q", path, b)
		}
	}
	for _, quick := range []int{0, 3, 40} {
		c, err := net.Dial("tcp", pl.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		for range quick {
			ask(c, br, "/quick")
		}
		if quick == 40 {
			// A slow one (watched), then one whose bytes arrive while
			// it runs.
			slow := "/sleep/" + strconv.Itoa(int((watchAfter + 150*time.Millisecond).Milliseconds()))
			io.WriteString(c, "GET "+slow+" HTTP/1.1\r\nHost: web.localhost\r\n\r\n")
			time.Sleep(watchAfter + 50*time.Millisecond)
			io.WriteString(c, "GET /after HTTP/1.1\r\nHost: web.localhost\r\n\r\n")
			for _, want := range []string{slow, "/after"} {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("pipelined %s: %v", want, err)
				}
				if b, _ := io.ReadAll(resp.Body); string(b) != want {
					t.Fatalf("pipelined: %q, want %q", b, want)
				}
			}
		}
		io.WriteString(c, "GET /never HTTP/1.1\r\nHost: web.localhost\r\n\r\n")
		time.Sleep(100 * time.Millisecond)
		c.Close()
		select {
		case <-vmGone:
		case <-time.After(3 * time.Second):
			t.Fatalf("after %d quick requests: the request to the VM stayed open after its client left", quick)
		}
	}
}
