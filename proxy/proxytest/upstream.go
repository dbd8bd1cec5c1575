package proxytest

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// Upstream plays a VM's own web server on loopback.
type Upstream struct {
	Addr string // "127.0.0.1:port", for Route.Upstream
	// Received counts request body bytes read by /upload.
	Received atomic.Int64
}

// StartUpstream starts an upstream server with these endpoints:
//
//	/          "hello from <name>"
//	/headers   echoes the request's Host and X-Forwarded-* and Cookie headers
//	/upload    reads the body to the end, answers with the byte count
//	/ws        a WebSocket echo
//	/stream    writes n (query "n", default 3) chunks, flushing each
//	/sleep     waits "ms" milliseconds (default 1), then answers "ok"
//	/setcookie answers with one Set-Cookie header per query value "c"
func StartUpstream(t testing.TB, name string) *Upstream {
	t.Helper()
	u := &Upstream{}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", name)
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Host=%s\n", r.Host)
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Cookie"} {
			fmt.Fprintf(w, "%s=%s\n", k, strings.Join(r.Header.Values(k), ","))
		}
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		u.Received.Add(n)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d\n", n)
	})
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) { _, _ = io.Copy(c, c) }))
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		n := 3
		fmt.Sscan(r.URL.Query().Get("n"), &n)
		for i := range n {
			fmt.Fprintf(w, "chunk %d\n", i)
			http.NewResponseController(w).Flush()
		}
	})
	mux.HandleFunc("/setcookie", func(w http.ResponseWriter, r *http.Request) {
		for _, c := range r.URL.Query()["c"] {
			w.Header().Add("Set-Cookie", c)
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		ms := 1
		fmt.Sscan(r.URL.Query().Get("ms"), &ms)
		time.Sleep(time.Duration(ms) * time.Millisecond)
		io.WriteString(w, "ok\n")
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	u.Addr = srv.Listener.Addr().String()
	return u
}
