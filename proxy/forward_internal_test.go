package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
)

type fixedRoutes struct{ rt Route }

func (f fixedRoutes) Route(context.Context, string) (Route, error) { return f.rt, nil }

// seenRequest is what the VM received.
type seenRequest struct {
	Method, URI, Host string
	Header            http.Header
}

// recordingUpstream answers each request with answers[path] (a short 200
// for other paths) and sends what
// it received on the returned channel.
func recordingUpstream(t *testing.T, answers map[string]string) (string, chan seenRequest) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	seen := make(chan seenRequest, 100)
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
					seen <- seenRequest{r.Method, r.RequestURI, r.Host, r.Header}
					answer, ok := answers[r.URL.Path]
					if !ok {
						answer = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ndefault"
					}
					if _, err := io.WriteString(c, answer); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), seen
}

// forward sends to the VM and answers the client exactly what the
// ReverseProxy path (p.rewrite, rewriteSetCookies) does: for each request
// and answer, the VM sees the same request line, Host and headers, and the
// client gets the same status, headers, body and trailers either way.
func TestForwardSameAsReverseProxy(t *testing.T) {
	answers := map[string]string{
		"/plain": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n" +
			"Proxy-Authenticate: Basic\r\nX-App: a\r\nX-App: b\r\nSet-Cookie: a=1; Domain=.example.test; Path=/\r\n" +
			"Set-Cookie: minions_session=forged; Path=/\r\nSet-Cookie: b=2; HttpOnly\r\n\r\nok",
		"/chunked":    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n2\r\nhi\r\n3\r\n yo\r\n0\r\nX-Sum: 9\r\n\r\n",
		"/undeclared": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Late: 1\r\n\r\n",
		"/sse":        "HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream; charset=utf-8\r\nContent-Length: 5\r\n\r\ndata\n",
		"/head":       "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\n",
		"/nothing":    "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
		"/missing":    "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
	}
	addr, seen := recordingUpstream(t, answers)
	rt := Route{VMID: "vm1", VMName: "web", Owner: "u1", Upstream: addr, Public: true, Running: true}
	p, err := New(Config{HTTPBind: "127.0.0.1:0", Secret: make([]byte, SecretSize),
		Log: slog.New(slog.DiscardHandler), UpstreamHeaderTimeout: 5 * time.Second}, fixedRoutes{rt}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.up.CloseIdleConnections()

	type req struct {
		method, target string
		header         []string // name, value pairs
	}
	hostile := []string{
		"Connection", "X-Drop, keep-alive", "X-Drop", "1", "Keep-Alive", "300", "Te", "trailers, deflate",
		"Proxy-Authorization", "Basic eA==", "Proxy-Connection", "keep-alive", "Trailer", "X-T",
		"Forwarded", "for=6.6.6.6", "X-Forwarded-For", "6.6.6.6", "X-Forwarded-Host", "evil.test",
		"X-Forwarded-Proto", "https", "Cookie", "a=1; minions_session=secret", "Cookie", " b=2 ;; c=3",
		"Accept", "text/html", "Accept", "*/*", "X-Empty", "", "X-Spaced", "  v  ", "Content-Length", "0",
	}
	for _, tc := range []req{
		{"GET", "/plain", nil},
		{"GET", "/plain?a=1&b=%20x&c", []string{"User-Agent", "curl/8", "User-Agent", "second"}},
		{"GET", "/plain", hostile},
		{"GET", "/plain", []string{"Connection", "Cookie, User-Agent", "Cookie", "a=1", "User-Agent", "x", "Te", "gzip"}},
		{"GET", "/plain", []string{"Cookie", "minions_session=only"}},
		{"GET", "/chunked", []string{"Te", "trailers"}},
		{"GET", "/undeclared", nil},
		{"GET", "/sse", nil},
		{"HEAD", "/head", nil},
		{"GET", "/nothing", nil},
		{"GET", "/missing", nil},
		{"GET", "/a%2Fb/%7Ec", nil},
	} {
		for _, h2 := range []bool{false, true} {
			t.Run(tc.method+" "+tc.target+map[bool]string{true: " h2"}[h2], func(t *testing.T) {
				newReq := func() *http.Request {
					r := httptest.NewRequest(tc.method, tc.target, nil)
					r.Host = "web.localhost:8080"
					if h2 { // as the HTTP/2 server hands over a request without a body
						r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
						r.Body = io.NopCloser(strings.NewReader(""))
					}
					r.RemoteAddr = "192.0.2.7:41000"
					for i := 0; i < len(tc.header); i += 2 {
						r.Header.Add(tc.header[i], tc.header[i+1])
					}
					return r
				}
				type result struct {
					seen    seenRequest
					code    int
					header  http.Header
					body    string
					trailer http.Header
				}
				run := func(viaForward bool) result {
					r := newReq()
					if !forwardable(r) {
						t.Fatalf("%s %s is not forwardable", tc.method, tc.target)
					}
					rec := httptest.NewRecorder()
					sw := &statusWriter{ResponseWriter: rec, p: p}
					if viaForward {
						p.forward(sw, r, rt)
					} else {
						p.rp.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), routeKey{}, rt)))
					}
					res := rec.Result()
					body, _ := io.ReadAll(res.Body)
					if res.StatusCode == http.StatusGatewayTimeout {
						t.Fatal("the upstream did not answer")
					}
					return result{<-seen, res.StatusCode, res.Header, string(body), res.Trailer}
				}
				want, got := run(false), run(true)
				if !reflect.DeepEqual(got, want) {
					t.Errorf("forward:\n%+v\nreverse proxy:\n%+v", got, want)
				}
				if strings.Contains(strings.Join(got.seen.Header["Cookie"], ";"), cookieName) {
					t.Errorf("the VM saw the session cookie: %q", got.seen.Header["Cookie"])
				}
			})
		}
	}
}

// Only bodiless GET and HEAD requests with an origin-form target take the
// fast path; the rest keep ReverseProxy.
func TestForwardable(t *testing.T) {
	for _, tc := range []struct {
		method, target string
		header         []string
		body           string
		want           bool
	}{
		{"GET", "/", nil, "", true},
		{"HEAD", "/x?y=1", nil, "", true},
		{"POST", "/", nil, "", false},
		{"DELETE", "/", nil, "", false},
		{"GET", "/", nil, "body", false},
		{"GET", "/ws", []string{"Upgrade", "websocket", "Connection", "Upgrade"}, "", false},
		{"GET", "/", []string{"Expect", "100-continue"}, "", false},
		{"GET", "/?a=1;b=2", nil, "", false},
		{"GET", "/?a=%zz", nil, "", false},
	} {
		var body io.Reader
		if tc.body != "" {
			body = strings.NewReader(tc.body)
		}
		r := httptest.NewRequest(tc.method, tc.target, body)
		r.Host = "web.localhost"
		for i := 0; i < len(tc.header); i += 2 {
			r.Header.Add(tc.header[i], tc.header[i+1])
		}
		if got := forwardable(r); got != tc.want {
			t.Errorf("%s %s %v: forwardable %v, want %v", tc.method, tc.target, tc.header, got, tc.want)
		}
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Host = "bad host"
	if forwardable(r) {
		t.Error("a Host with a space is forwardable")
	}
	r = httptest.NewRequest("GET", "http://other.test/", nil) // absolute form
	if forwardable(r) {
		t.Error("an absolute-form target is forwardable")
	}
	r = httptest.NewRequest("GET", "/", nil)
	r.Host, r.ProtoMajor, r.ProtoMinor, r.Body = "web.localhost", 2, 0, io.NopCloser(strings.NewReader(""))
	if !forwardable(r) {
		t.Error("an HTTP/2 GET whose stream ended with its headers is not forwardable")
	}
	r.ContentLength = -1
	if forwardable(r) {
		t.Error("an HTTP/2 GET with a body of unknown length is forwardable")
	}
	r = httptest.NewRequest("OPTIONS", "*", nil)
	if forwardable(r) {
		t.Error("OPTIONS * is forwardable")
	}
}

// A body that breaks off cuts the client's response short (the server
// then drops the connection) instead of ending it as if it were whole, and
// its connection is not pooled.
func TestForwardAbortsBrokenBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			if _, err := http.ReadRequest(br); err == nil {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
			}
			c.Close()
		}
	}()
	rt := Route{VMID: "vm1", VMName: "web", Upstream: ln.Addr().String(), Public: true, Running: true}
	p, err := New(Config{HTTPBind: "127.0.0.1:0", Secret: make([]byte, SecretSize), Log: slog.New(slog.DiscardHandler)}, fixedRoutes{rt}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Host = "web.localhost"
	rec := httptest.NewRecorder()
	func() {
		defer func() {
			if v := recover(); v != http.ErrAbortHandler {
				t.Errorf("forward ended with %v, want a panic with http.ErrAbortHandler", v)
			}
		}()
		p.forward(&statusWriter{ResponseWriter: rec, p: p}, r, rt)
	}()
	if p.up.nIdle != 0 {
		t.Errorf("%d connections pooled after a broken body", p.up.nIdle)
	}
}
