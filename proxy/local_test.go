package proxy_test

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/proxytest"
)

func secret(t testing.TB) []byte {
	b := make([]byte, proxy.SecretSize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// local is a proxy in local mode serving on a real loopback listener.
type local struct {
	p      *proxy.Proxy
	table  *proxytest.Table
	addr   string // listener address
	port   string
	client *http.Client // dials addr whatever the URL's host
	stop   func()       // cancels Serve and waits for it (also at cleanup)
}

func startLocal(t testing.TB, mutate func(*proxy.Config)) *local {
	t.Helper()
	table := proxytest.NewTable()
	ln := listen(t)
	cfg := proxy.Config{HTTPBind: ln.Addr().String(), Secret: secret(t), Log: testLogger(t)}
	if mutate != nil {
		mutate(&cfg)
	}
	p, err := proxy.New(cfg, table, table)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, nil, ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("serve: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("serve did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	return &local{p: p, table: table, addr: addr, port: port, client: clientTo(addr, nil), stop: stop}
}

// clientTo returns a client whose connections all go to addr; it does not
// follow redirects.
func clientTo(addr string, tr func(*http.Transport)) *http.Client {
	t := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 64,
	}
	if tr != nil {
		tr(t)
	}
	return &http.Client{Transport: t, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (l *local) url(vm, path string) string {
	return "http://" + vm + ".localhost:" + l.port + path
}

func get(t testing.TB, c *http.Client, url string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read: %v", url, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func TestLocalModePages(t *testing.T) {
	l := startLocal(t, nil)
	up := proxytest.StartUpstream(t, "web")
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Owner: "alice", Upstream: up.Addr, Public: true, Running: true})
	l.table.Set("off.localhost", proxy.Route{VMID: "vm2", VMName: "off", Owner: "alice", Upstream: up.Addr, Public: true, Running: false})
	dead := listen(t) // a port where nothing answers HTTP
	deadAddr := dead.Addr().String()
	dead.Close()
	l.table.Set("dead.localhost", proxy.Route{VMID: "vm3", VMName: "dead", Owner: "alice", Upstream: deadAddr, Public: true, Running: true})
	l.table.Set("priv.localhost", proxy.Route{VMID: "vm4", VMName: "priv", Owner: "alice", Upstream: up.Addr, Running: true})

	tests := []struct {
		name, vm, accept string
		status           int
		body             string
	}{
		{"served by the vm", "web", "", 200, "hello from web\n"},
		{"unknown vm", "nope", "", 404, "No such VM: There is no VM at nope.localhost.\n"},
		{"stopped vm", "off", "", 503, "VM is stopped"},
		{"not answering", "dead", "", 502, "nothing answered on port"},
		{"private anonymous", "priv", "", 401, "This VM is private"},
		{"html page", "nope", "text/html", 404, "<title>No such VM</title>"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body, hdr := get(t, l.client, l.url(tc.vm, "/"), "Accept", tc.accept)
			if status != tc.status || !strings.Contains(body, tc.body) {
				t.Fatalf("got %d %q, want %d containing %q", status, body, tc.status, tc.body)
			}
			if status != 200 && hdr.Get("Cache-Control") != "no-store" {
				t.Errorf("error page is cacheable: %v", hdr)
			}
		})
	}
	// The real curl resolves *.localhost to loopback by itself.
	out, err := exec.Command("curl", "-sS", "--max-time", "10", l.url("web", "/")).CombinedOutput()
	if err != nil || string(out) != "hello from web\n" {
		t.Fatalf("curl: %v %q", err, out)
	}
}

func TestForwardedHeaders(t *testing.T) {
	l := startLocal(t, nil)
	up := proxytest.StartUpstream(t, "web")
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Upstream: up.Addr, Public: true, Running: true})
	status, body, _ := get(t, l.client, l.url("web", "/headers"),
		"X-Forwarded-For", "6.6.6.6", "X-Forwarded-Host", "evil.test", "X-Forwarded-Proto", "https",
		"Cookie", "app=1; minions_session=secret; other=2")
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	want := "Host=web.localhost:" + l.port + "\nX-Forwarded-For=127.0.0.1\nX-Forwarded-Proto=http\nX-Forwarded-Host=web.localhost:" + l.port + "\nCookie=app=1; other=2\n"
	if body != want {
		t.Fatalf("upstream saw\n%s\nwant\n%s", body, want)
	}
}

func TestLoginFlow(t *testing.T) {
	l := startLocal(t, nil)
	up := proxytest.StartUpstream(t, "priv")
	l.table.Set("priv.localhost", proxy.Route{VMID: "vm4", VMName: "priv", Owner: "alice", Upstream: up.Addr, Running: true})
	l.table.Set("other.localhost", proxy.Route{VMID: "vm5", VMName: "other", Owner: "alice", Upstream: up.Addr, Running: true})

	link := l.p.LoginLink("priv", "vm4", "alice", 0, time.Minute)
	if !strings.HasPrefix(link, l.url("priv", "/__minions/login?token=")) {
		t.Fatalf("link %q", link)
	}
	jar, _ := cookiejar.New(nil)
	browser := clientTo(l.addr, nil)
	browser.Jar = jar

	status, _, hdr := get(t, browser, link)
	if status != http.StatusSeeOther || hdr.Get("Location") != "/" {
		t.Fatalf("login: %d %v", status, hdr)
	}
	sc := hdr.Get("Set-Cookie")
	for _, want := range []string{"minions_session=", "HttpOnly", "SameSite=Lax", "Path=/"} {
		if !strings.Contains(sc, want) {
			t.Errorf("cookie %q lacks %q", sc, want)
		}
	}
	if strings.Contains(strings.ToLower(sc), "domain=") {
		t.Errorf("cookie %q must be host-only", sc)
	}
	if status, body, _ := get(t, browser, l.url("priv", "/")); status != 200 || body != "hello from priv\n" {
		t.Fatalf("signed-in owner: %d %q", status, body)
	}
	// The cookie is for priv.localhost only; even if replayed to another VM
	// host it is bound to vm4.
	var cookie string
	for _, c := range jar.Cookies(mustURL(t, l.url("priv", "/"))) {
		cookie = c.Name + "=" + c.Value
	}
	if status, _, _ := get(t, l.client, l.url("other", "/"), "Cookie", cookie); status != 401 {
		t.Fatalf("cookie replayed to another vm: %d", status)
	}
	// One-time: the same link again is refused.
	if status, body, _ := get(t, clientTo(l.addr, nil), link); status != 403 || !strings.Contains(body, "already used") {
		t.Fatalf("reused link: %d %q", status, body)
	}
	// A link for another owner (VM changed hands) is refused.
	if status, _, _ := get(t, clientTo(l.addr, nil), l.p.LoginLink("priv", "vm4", "mallory", 0, time.Minute)); status != 403 {
		t.Fatalf("link for non-owner: %d", status)
	}
	// A link for one VM does not work on another host.
	other := strings.Replace(l.p.LoginLink("priv", "vm4", "alice", 0, time.Minute), "priv.localhost", "other.localhost", 1)
	if status, _, _ := get(t, clientTo(l.addr, nil), other); status != 403 {
		t.Fatalf("link moved to another host: %d", status)
	}
	// Tampered token.
	if status, _, _ := get(t, clientTo(l.addr, nil), link+"x"); status != 403 {
		t.Fatalf("tampered link: %d", status)
	}
	// When the VM changes owner the old session stops working.
	l.table.Set("priv.localhost", proxy.Route{VMID: "vm4", VMName: "priv", Owner: "bob", Upstream: up.Addr, Running: true})
	if status, _, _ := get(t, browser, l.url("priv", "/")); status != 401 {
		t.Fatalf("session after owner change: %d", status)
	}
}

func TestShareLink(t *testing.T) {
	l := startLocal(t, nil)
	up := proxytest.StartUpstream(t, "priv")
	l.table.Set("priv.localhost", proxy.Route{VMID: "vm4", VMName: "priv", Owner: "alice", Upstream: up.Addr, Running: true})
	link := l.p.ShareLink("priv", "vm4", "alice", 0, time.Hour)
	for i := range 2 { // reusable, by different visitors
		jar, _ := cookiejar.New(nil)
		c := clientTo(l.addr, nil)
		c.Jar = jar
		if status, _, _ := get(t, c, link); status != http.StatusSeeOther {
			t.Fatalf("visitor %d: share link %d", i, status)
		}
		if status, body, _ := get(t, c, l.url("priv", "/")); status != 200 || body != "hello from priv\n" {
			t.Fatalf("visitor %d: %d %q", i, status, body)
		}
	}
	// A new VM that reuses the name is not reachable with old sessions.
	jar, _ := cookiejar.New(nil)
	c := clientTo(l.addr, nil)
	c.Jar = jar
	get(t, c, link)
	l.table.Set("priv.localhost", proxy.Route{VMID: "vm9", VMName: "priv", Owner: "bob", Upstream: up.Addr, Running: true})
	if status, _, _ := get(t, c, l.url("priv", "/")); status != 401 {
		t.Fatalf("old share session on a new vm: %d", status)
	}
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestRateLimit(t *testing.T) {
	l := startLocal(t, func(c *proxy.Config) { c.RatePerSecond = 1; c.Burst = 3 })
	up := proxytest.StartUpstream(t, "web")
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Upstream: up.Addr, Public: true, Running: true})
	var codes []int
	for range 5 {
		status, _, hdr := get(t, l.client, l.url("web", "/"))
		codes = append(codes, status)
		if status == 429 && hdr.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
	if got := strconv.Itoa(codes[0]) + strconv.Itoa(codes[2]) + strconv.Itoa(codes[3]) + strconv.Itoa(codes[4]); got != "200200429429" {
		t.Fatalf("codes %v", codes)
	}
	m := metrics(t, l.p)
	if !strings.Contains(m, "minions_proxy_rate_limited_total 2\n") {
		t.Fatalf("metrics:\n%s", m)
	}
}

func TestConnLimit(t *testing.T) {
	l := startLocal(t, func(c *proxy.Config) { c.MaxConnsPerIP = 2 })
	up := proxytest.StartUpstream(t, "web")
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Upstream: up.Addr, Public: true, Running: true})
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", l.addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	status, body, _ := get(t, clientTo(l.addr, nil), l.url("web", "/"))
	if status != 429 || !strings.Contains(body, "Too many connections") {
		t.Fatalf("third connection: %d %q", status, body)
	}
	for _, c := range held {
		c.Close()
	}
	// Once the held connections close, requests pass again.
	waitFor(t, 5*time.Second, func() bool {
		status, _, _ := get(t, clientTo(l.addr, nil), l.url("web", "/"))
		return status == 200
	})
}

func TestWebSocketAndStreaming(t *testing.T) {
	l := startLocal(t, nil)
	up := proxytest.StartUpstream(t, "web")
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Upstream: up.Addr, Public: true, Running: true})

	conn, err := net.Dial("tcp", l.addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := websocket.NewConfig(l.url("web", "/ws"), "http://web.localhost/")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		t.Fatalf("websocket handshake through proxy: %v", err)
	}
	ws.SetDeadline(time.Now().Add(10 * time.Second))
	for _, msg := range []string{"ping", strings.Repeat("x", 100000)} {
		if _, err := ws.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		// The echo server may split the message into several frames.
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(ws, got); err != nil || string(got) != msg {
			t.Fatalf("echo: %v (%q)", err, got[:min(len(got), 20)])
		}
	}
	ws.Close()

	// Chunked responses arrive as they are flushed.
	status, body, _ := get(t, l.client, l.url("web", "/stream?n=4"))
	if status != 200 || body != "chunk 0\nchunk 1\nchunk 2\nchunk 3\n" {
		t.Fatalf("stream: %d %q", status, body)
	}
	if m := metrics(t, l.p); !strings.Contains(m, "minions_proxy_upgrades_total 1\n") {
		t.Fatalf("metrics:\n%s", m)
	}
}

// patternReader yields n bytes without holding them.
type patternReader struct{ left int64 }

func (r *patternReader) Read(b []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(b)), r.left)
	for i := range b[:n] {
		b[i] = byte(i)
	}
	r.left -= n
	return int(n), nil
}

func TestUploadStreams(t *testing.T) {
	l := startLocal(t, nil)
	up := proxytest.StartUpstream(t, "web")
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Upstream: up.Addr, Public: true, Running: true})
	const size = 100 << 20

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
		}
	}()
	req, _ := http.NewRequest(http.MethodPost, l.url("web", "/upload"), &patternReader{left: size})
	req.ContentLength = size
	start := time.Now()
	resp, err := l.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != strconv.Itoa(size) {
		t.Fatalf("upload: %d %q", resp.StatusCode, body)
	}
	growth := int64(peak.Load()) - int64(base.HeapAlloc)
	t.Logf("100 MiB upload through proxy: %v (%.0f MiB/s), peak heap growth %.1f MiB",
		elapsed, float64(size)/(1<<20)/elapsed.Seconds(), float64(growth)/(1<<20))
	if growth > 16<<20 {
		t.Fatalf("heap grew by %d MiB during a 100 MiB upload: the body is buffered", growth>>20)
	}
}

func TestMetricsFormat(t *testing.T) {
	l := startLocal(t, nil)
	get(t, l.client, l.url("nope", "/"))
	m := metrics(t, l.p)
	for _, want := range []string{
		"# TYPE minions_proxy_requests_total counter\n",
		"minions_proxy_requests_total{code=\"4xx\"} 1\n",
		"minions_proxy_not_found_total 1\n",
		"minions_proxy_request_duration_seconds_count 1\n",
		"minions_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 1\n",
		"# TYPE minions_proxy_open_connections gauge\n",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q:\n%s", want, m)
		}
	}
	// Every sample line is "name{labels} value" or "name value".
	for _, line := range strings.Split(strings.TrimSpace(m), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Errorf("bad sample line %q", line)
		}
		if _, err := strconv.ParseFloat(f[1], 64); err != nil {
			t.Errorf("bad value in %q", line)
		}
	}
}

func metrics(t testing.TB, p *proxy.Proxy) string {
	t.Helper()
	rec := httptest.NewRecorder()
	p.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}

func waitFor(t testing.TB, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAccessLog(t *testing.T) {
	var buf syncBuffer
	l := startLocal(t, func(c *proxy.Config) {
		c.AccessLog = slog.New(slog.NewJSONHandler(&buf, nil))
	})
	up := proxytest.StartUpstream(t, "web")
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Upstream: up.Addr, Public: true, Running: true})
	get(t, l.client, l.url("web", "/some/path?q=1"))
	line := buf.String()
	for _, want := range []string{`"msg":"request"`, `"component":"proxy"`, `"remote_ip":"127.0.0.1"`, `"host":"web.localhost"`,
		`"vm_id":"vm1"`, `"method":"GET"`, `"path":"/some/path"`, `"status":200`, `"bytes":15`, `"duration_us":`} {
		if !strings.Contains(line, want) {
			t.Errorf("access log lacks %s: %s", want, line)
		}
	}
}

// TestAccessLogRecordCheap: the access log's records carry no caller
// (the daemon's handlers print none, and finding it walks the stack on
// every request), and their time is when the answer was done.
func TestAccessLogRecordCheap(t *testing.T) {
	h := &recordHandler{}
	l := startLocal(t, func(c *proxy.Config) { c.AccessLog = slog.New(h) })
	up := proxytest.StartUpstream(t, "web")
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Upstream: up.Addr, Public: true, Running: true})
	before := time.Now()
	get(t, l.client, l.url("web", "/"))
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.recs) != 1 {
		t.Fatalf("%d access records, want 1", len(h.recs))
	}
	r := h.recs[0]
	if r.PC != 0 {
		t.Errorf("access record has a caller PC %#x: a stack walk per request", r.PC)
	}
	if r.Message != "request" || r.Level != slog.LevelInfo || r.Time.Before(before) || r.Time.After(time.Now()) {
		t.Errorf("access record %q %v at %v (request at %v)", r.Message, r.Level, r.Time, before)
	}
	if r.NumAttrs() != 10 {
		t.Errorf("access record has %d attributes, want 10", r.NumAttrs())
	}
}

// recordHandler keeps the records it is given.
type recordHandler struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestShutdownClosesWebSockets(t *testing.T) {
	l := startLocal(t, nil)
	up := proxytest.StartUpstream(t, "web")
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Upstream: up.Addr, Public: true, Running: true})
	conn, err := net.Dial("tcp", l.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cfg, _ := websocket.NewConfig(l.url("web", "/ws"), "http://web.localhost/")
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		t.Fatal(err)
	}
	ws.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	l.stop()
	if _, err := ws.Read(make([]byte, 1)); err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("websocket still open after shutdown: err=%v after %v", err, time.Since(start))
	}
}
