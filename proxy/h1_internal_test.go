package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// rawUpstream answers each request with answers[path] (a short 200 for
// other paths); an answer starting with "CLOSE:" is written and the
// connection closed after it. Each request it read (a body is read and
// kept in Header["X-Seen-Body"]) goes to the returned channel.
func rawUpstream(t *testing.T, answers map[string]string) (string, chan seenRequest) {
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
					body, _ := io.ReadAll(r.Body)
					if len(body) > 0 {
						r.Header["X-Seen-Body"] = []string{string(body)}
					}
					seen <- seenRequest{r.Method, r.RequestURI, r.Host, r.Header}
					answer, ok := answers[r.URL.Path]
					if !ok {
						answer = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ndefault"
					}
					answer, closeAfter := strings.CutPrefix(answer, "CLOSE:")
					if _, err := io.WriteString(c, answer); err != nil || closeAfter {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), seen
}

// exchange sends raw to addr and returns every byte that came back until
// the server closed the connection or went quiet, whether it closed it,
// and the bodies of the n answers it expects (read as a client would).
func exchange(t *testing.T, addr, raw string, methods []string) (string, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return exchangeOn(t, c, raw, methods)
}

func exchangeOn(t *testing.T, c net.Conn, raw string, methods []string) (string, bool) {
	t.Helper()
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &got))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, m := range methods {
		for {
			resp, err := http.ReadResponse(br, &http.Request{Method: m})
			if err != nil {
				break
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 200 {
				break
			}
		}
	}
	// Whatever else comes, and whether the connection stays open.
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	_, err := io.Copy(io.Discard, br)
	var ne net.Error
	closed := !(errors.As(err, &ne) && ne.Timeout())
	return got.String(), closed
}

var dateLine = regexp.MustCompile(`(?m)^Date: [^\r]*\r$`)

// The loop (h1Listener) answers byte for byte what net/http's server
// answers, for requests it takes itself and for the ones it hands over:
// compared with net/http serving ReverseProxy (the reference) and
// net/http serving the proxy's own handler (the path before the loop),
// for a table of raw requests: HTTP/1.0 and 1.1, keep-alive and
// Connection: close, chunked answers with trailers, HEAD, 204, 304, 1xx,
// sniffed types, long bodies, bodies that break off, a VM that does not
// answer, bodies and upgrades (handed over), pipelined requests and
// malformed ones. The VM sees the same requests either way.
func TestLoopSameAsReverseProxy(t *testing.T) {
	big := strings.Repeat("x", 5000)
	answers := map[string]string{
		"/plain": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n" +
			"Content-Type: text/plain\r\nX-App: a\r\nX-App: b\r\nSet-Cookie: a=1; Domain=.example.test; Path=/\r\n\r\nok",
		"/chunked":    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\nTrailer: X-Sum\r\n\r\n2\r\nhi\r\n3\r\n yo\r\n0\r\nX-Sum: 9\r\n\r\n",
		"/undeclared": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n2\r\nhi\r\n0\r\nX-Late: 1\r\n\r\n",
		"/head":       "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\n",
		"/nothing":    "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
		"/notmod":     "HTTP/1.1 304 Not Modified\r\nEtag: \"v1\"\r\nContent-Type: text/html\r\nCache-Control: max-age=5\r\n\r\n",
		"/sniff":      "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n<html><b>hi</b></htm",
		"/big":        "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nContent-Type: text/plain\r\n\r\n" + big,
		// Longer than net/http's 2 KiB before chunking, shorter than
		// one read, so that both paths pass it on in one chunk.
		"/bigchunked":   "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\nbb8\r\n" + big[:3000] + "\r\n0\r\n\r\n",
		"/untilclose":   "CLOSE:HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end",
		"/broken":       "CLOSE:HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
		"/brokenchunks": "CLOSE:HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n2\r\nhi\r\n5\r\nab",
		"/silent":       "CLOSE:",
		"/hints":        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"/missing":      "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
		"/closing":      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
		// Answers the raw path passes on (raw.go): a length, a type.
		"/simple": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nContent-Type: text/plain\r\nX-App: a\r\nX-App: b\r\n" +
			"Set-Cookie: a=1; Domain=.example.test; Path=/\r\nSet-Cookie: minions_session=evil; Path=/\r\nSet-Cookie: b=2; path=/; domain=x; HttpOnly\r\n" +
			"Set-Cookie: c=3\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nServer: vm\r\n\r\nok",
		"/simpleclose": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\nok",
		"/http10":      "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
		"/http10ka":    "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
		"/odd":         "HTTP/1.1 299 Odd\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
		"/noreason":    "HTTP/1.1 201\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nDate: Mon, 07 Dec 2026 10:00:00 GMT\r\n\r\nok",
		"/brokentyped": "CLOSE:HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\nabc",
		"/nothinglen":  "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
		"/twolengths":  "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
		"/bigheader":   "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nX-Big: " + strings.Repeat("b", 5000) + "\r\n\r\nok",
		"/bigtyped":    "HTTP/1.1 200 OK\r\nContent-Length: 70000\r\nContent-Type: text/plain\r\n\r\n" + strings.Repeat("y", 70000),
	}
	// How many answers of each case the loop's raw path gives (the rest
	// take net/http's parsers); cases not named here: none.
	rawAnswers := map[string]int64{"head": 1, "204": 1, "304": 1, "long body": 1, "pipelined": 2, "keep-alive, headers apart": 2,
		"raw": 1, "raw hop-by-hop": 1, "raw empty user agent": 1, "raw query": 1, "raw client close": 1, "raw upstream close": 2,
		"raw http/1.0 answer": 2, "raw http/1.0 keep-alive answer": 2, "raw no reason": 1, "raw unknown status": 1, "raw body breaks off": 1, "raw 204 with length": 1,
		"raw long body": 1, "raw pipelined": 4, "raw head of long body": 1}
	// Streamed answers (chunked) carry a Content-Type: without one,
	// what net/http sniffs depends on whether ReverseProxy's first flush
	// timer (it fires at once) beats the first body write, a race of its
	// own that also decides what forward answers.
	upAddr, seen := rawUpstream(t, answers)
	rt := Route{VMID: "vm1", VMName: "web", Owner: "u1", Upstream: upAddr, Public: true, Running: true}
	p, err := New(Config{HTTPBind: "127.0.0.1:0", Secret: make([]byte, SecretSize),
		Log: slog.New(slog.DiscardHandler), UpstreamHeaderTimeout: 5 * time.Second, RatePerSecond: -1}, fixedRoutes{rt}, nil)
	if err != nil {
		t.Fatal(err)
	}

	// The loop, as Serve runs it in local mode.
	loopLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, nil, loopLn) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()
	// The references: net/http serving ReverseProxy, and net/http
	// serving the proxy's handler.
	server := func(h http.HandlerFunc) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: p.cfg.IdleTimeout,
			ConnContext: connContext, ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelDebug)}
		go srv.Serve(limitListener{Listener: ln, lim: p.conns})
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().String()
	}
	rpAddr := server(func(w http.ResponseWriter, r *http.Request) {
		p.rp.ServeHTTP(&statusWriter{ResponseWriter: w, p: p}, r.WithContext(context.WithValue(r.Context(), routeKey{}, rt)))
	})
	handlerAddr := server(p.serveHTTP)

	get := func(path string, extra ...string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: web.localhost\r\n" + strings.Join(extra, "") + "\r\n"
	}
	for _, tc := range []struct {
		name    string
		raw     string
		methods []string // of the answers expected
		notRP   bool     // answered by the proxy itself: compare with its handler only
	}{
		{"plain", get("/plain", "User-Agent: curl/8\r\nCookie: a=1; minions_session=x\r\n"), []string{"GET"}, false},
		{"hop-by-hop", get("/plain", "Connection: X-Drop, keep-alive\r\nX-Drop: 1\r\nTe: trailers, deflate\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nProxy-Authorization: Basic eA==\r\n"), []string{"GET"}, false},
		{"http/1.0", "GET /plain HTTP/1.0\r\nHost: web.localhost\r\n\r\n", []string{"GET"}, false},
		{"http/1.0 keep-alive", "GET /plain HTTP/1.0\r\nHost: web.localhost\r\nConnection: keep-alive\r\n\r\n", []string{"GET"}, false},
		{"http/1.0 keep-alive chunked", "GET /chunked HTTP/1.0\r\nHost: web.localhost\r\nConnection: keep-alive\r\n\r\n", []string{"GET"}, false},
		{"http/1.0 no host", "GET /plain HTTP/1.0\r\n\r\n", []string{"GET"}, false},
		{"connection close", get("/plain", "Connection: close\r\n"), []string{"GET"}, false},
		{"upstream says close", get("/closing"), []string{"GET"}, false},
		{"chunked with trailers", get("/chunked", "Te: trailers\r\n"), []string{"GET"}, false},
		{"undeclared trailer", get("/undeclared"), []string{"GET"}, false},
		{"head", "HEAD /head HTTP/1.1\r\nHost: web.localhost\r\n\r\n", []string{"HEAD"}, false},
		{"head of chunked", "HEAD /chunked HTTP/1.1\r\nHost: web.localhost\r\n\r\n", []string{"HEAD"}, false},
		{"204", get("/nothing"), []string{"GET"}, false},
		{"304", get("/notmod", "If-None-Match: \"v1\"\r\n"), []string{"GET"}, false},
		{"103 early hints", get("/hints"), []string{"GET"}, false},
		{"sniffed type", get("/sniff"), []string{"GET"}, false},
		{"long body", get("/big"), []string{"GET"}, false},
		{"long chunked body", get("/bigchunked"), []string{"GET"}, false},
		{"body until close", get("/untilclose"), []string{"GET"}, false},
		{"body breaks off", get("/broken"), []string{"GET"}, false},
		{"chunks break off", get("/brokenchunks"), []string{"GET"}, false},
		{"404", get("/missing"), []string{"GET"}, false},
		{"pipelined", get("/plain") + get("/chunked") + "HEAD /head HTTP/1.1\r\nHost: web.localhost\r\n\r\n" + get("/big"), []string{"GET", "GET", "HEAD", "GET"}, false},
		// One connection, answers with different headers: none of an
		// answer's header fields reach the next (the loop reuses its
		// response writer and the header map's storage).
		{"keep-alive, headers apart", get("/plain") + get("/nothing") + get("/sniff") + get("/notmod") + get("/plain"),
			[]string{"GET", "GET", "GET", "GET", "GET"}, false},
		{"post (handed over)", "POST /plain HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 5\r\n\r\nhello" + get("/chunked"), []string{"POST", "GET"}, false},
		{"get then post", get("/plain") + "POST /plain HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 5\r\n\r\nhello", []string{"GET", "POST"}, false},
		{"upgrade (handed over)", get("/plain", "Upgrade: websocket\r\nConnection: Upgrade\r\n"), []string{"GET"}, false},
		{"no answer", get("/silent"), []string{"GET"}, true},
		{"no host", "GET /plain HTTP/1.1\r\n\r\n", []string{"GET"}, true},
		{"two hosts", "GET /plain HTTP/1.1\r\nHost: web.localhost\r\nHost: b\r\n\r\n", []string{"GET"}, true},
		{"bad header", "GET /plain HTTP/1.1\r\nHost: web.localhost\r\nX Y: 1\r\n\r\n", []string{"GET"}, true},
		{"garbage", "HELLO\r\n\r\n", []string{"GET"}, true},
		{"header too large", get("/plain", "X-Big: "+strings.Repeat("a", http.DefaultMaxHeaderBytes+8192)+"\r\n"), []string{"GET"}, true},
		{"login link", get(loginPath + "?token=bad"), []string{"GET"}, true},
		{"raw", get("/simple", "User-Agent: curl/8\r\nCookie: a=1; minions_session=x\r\nCookie: b=2\r\nAccept: */*\r\nX-Dup: 1\r\nX-Dup: 2\r\n"), []string{"GET"}, false},
		{"raw hop-by-hop", get("/simple", "Connection: keep-alive\r\nKeep-Alive: 5\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n"+
			"X-Forwarded-Proto: https\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nx-lower:  spaced value \t\r\n"), []string{"GET"}, false},
		{"raw empty user agent", get("/simple", "User-Agent: \r\n"), []string{"GET"}, false},
		{"raw query", get("/simple?a=1&b=%20x&c=/d?e"), []string{"GET"}, false},
		{"raw escaped path", get("/sim%70le"), []string{"GET"}, false},
		{"raw client close", get("/simple", "Connection: close\r\n") + get("/simple"), []string{"GET"}, false},
		{"raw upstream close", get("/simpleclose") + get("/simple"), []string{"GET", "GET"}, false},
		{"raw http/1.0 answer", get("/http10") + get("/http10"), []string{"GET", "GET"}, false},
		{"raw http/1.0 keep-alive answer", get("/http10ka") + get("/http10ka"), []string{"GET", "GET"}, false},
		{"raw no reason", get("/noreason"), []string{"GET"}, false},
		{"raw unknown status", get("/odd"), []string{"GET"}, false},
		{"raw body breaks off", get("/brokentyped"), []string{"GET"}, false},
		{"raw 204 with length", get("/nothinglen"), []string{"GET"}, false},
		{"raw two lengths", get("/twolengths"), []string{"GET"}, false},
		{"raw header over 4 KiB", get("/bigheader"), []string{"GET"}, false},
		{"raw long body", get("/bigtyped"), []string{"GET"}, false},
		{"raw head of long body", "HEAD /bigtyped HTTP/1.1\r\nHost: web.localhost\r\n\r\n", []string{"HEAD"}, false},
		{"raw pipelined", get("/simple") + "HEAD /simple HTTP/1.1\r\nHost: web.localhost\r\n\r\n" + get("/nothing") + get("/bigtyped"),
			[]string{"GET", "HEAD", "GET", "GET"}, false},
		{"raw obs-fold", get("/simple", "X-Folded: a\r\n b\r\n"), []string{"GET"}, true},
		{"raw bare LF", "GET /simple HTTP/1.1\nHost: web.localhost\n\n", []string{"GET"}, false},
		{"raw length on GET", get("/simple", "Content-Length: 0\r\n"), []string{"GET"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := func(addr string) (string, bool, []seenRequest) {
				p.up.CloseIdleConnections() // each run starts alike (no retries on stale connections)
				out, closed := exchange(t, addr, tc.raw, tc.methods)
				var ups []seenRequest
				for {
					select {
					case s := <-seen:
						ups = append(ups, s)
						continue
					case <-time.After(50 * time.Millisecond):
					}
					break
				}
				return fieldsInOrder(dateLine.ReplaceAllString(out, "Date: (now)\r"), tc.methods), closed, ups
			}
			raw0 := p.metrics.raw.Load()
			loop, loopClosed, loopUp := run(loopLn.Addr().String())
			if got, want := p.metrics.raw.Load()-raw0, rawAnswers[tc.name]; got != want {
				t.Errorf("the raw path gave %d answers, want %d", got, want)
			}
			refs := []string{handlerAddr}
			if !tc.notRP {
				refs = append(refs, rpAddr)
			}
			for _, ref := range refs {
				want, wantClosed, wantUp := run(ref)
				name := map[bool]string{true: "net/http + ReverseProxy", false: "net/http + the proxy's handler"}[ref == rpAddr]
				if loop != want || loopClosed != wantClosed {
					i := 0
					for i < min(len(loop), len(want)) && loop[i] == want[i] {
						i++
					}
					t.Errorf("loop answered (closed %v):\n%q\n%s answered (closed %v):\n%q\n(they differ from byte %d on: %q, %q)",
						loopClosed, short(loop), name, wantClosed, short(want), i, short(loop[i:]), short(want[i:]))
				}
				if !reflect.DeepEqual(loopUp, wantUp) {
					t.Errorf("the VM saw from the loop:\n%+v\nand from %s:\n%+v", loopUp, name, wantUp)
				}
			}
			if len(loop) == 0 && !slices.Contains([]string{"body breaks off", "raw body breaks off"}, tc.name) {
				t.Errorf("no answer at all")
			}
		})
	}
}

func short(s string) string {
	if len(s) > 600 {
		return s[:600] + "..."
	}
	return s
}

// Over TLS the loop does the handshake, answers HTTP/1.1 as net/http's
// TLS server does (Request.TLS set: the VM sees X-Forwarded-Proto: https,
// also on a connection handed over for a body), hands HTTP/2 connections
// to the server, and answers plain HTTP on the TLS port as net/http does.
func TestLoopOverTLS(t *testing.T) {
	upAddr, seen := rawUpstream(t, map[string]string{})
	rt := Route{VMID: "vm1", VMName: "web", Owner: "u1", Upstream: upAddr, Public: true, Running: true}
	p, err := New(Config{HTTPBind: "127.0.0.1:0", Secret: make([]byte, SecretSize),
		Log: slog.New(slog.DiscardHandler), UpstreamHeaderTimeout: 5 * time.Second, RatePerSecond: -1}, fixedRoutes{rt}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(nil)
	ts.StartTLS()
	certs, roots := ts.TLS.Certificates, ts.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	ts.Close()
	tc := &tls.Config{Certificates: certs, NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12}
	newServer := func() *http.Server {
		return &http.Server{Handler: p.Handler(), TLSConfig: tc.Clone(), ReadHeaderTimeout: readHeaderTimeout,
			ConnContext: connContext, ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelDebug)}
	}
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return limitListener{Listener: ln, lim: p.conns}
	}
	loop := newH1Listener(listen(), p, tc.Clone()) // as Serve does
	loopSrv := newServer()
	go loopSrv.Serve(loop)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		loopSrv.Shutdown(ctx)
		if err := loop.shutdown(ctx); err != nil {
			t.Error(err)
		}
	}()
	refLn := listen()
	refSrv := newServer()
	go refSrv.ServeTLS(refLn, "", "")
	defer refSrv.Close()

	upstreamSaw := func() []seenRequest {
		var ups []seenRequest
		for {
			select {
			case s := <-seen:
				ups = append(ups, s)
				continue
			case <-time.After(50 * time.Millisecond):
			}
			return ups
		}
	}
	dialTLS := func(addr string) net.Conn {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "example.com", NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name, raw string
		methods   []string
	}{
		{"get", "GET /a HTTP/1.1\r\nHost: web.localhost\r\n\r\n", []string{"GET"}},
		{"http/1.0", "GET /a HTTP/1.0\r\nHost: web.localhost\r\n\r\n", []string{"GET"}},
		{"post then get", "POST /a HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\nHost: web.localhost\r\n\r\n", []string{"POST", "GET"}},
	} {
		got, gotClosed := exchangeOn(t, dialTLS(loop.Addr().String()), tc.raw, tc.methods)
		gotUp := upstreamSaw()
		want, wantClosed := exchangeOn(t, dialTLS(refLn.Addr().String()), tc.raw, tc.methods)
		wantUp := upstreamSaw()
		got, want = dateLine.ReplaceAllString(got, "Date: (now)\r"), dateLine.ReplaceAllString(want, "Date: (now)\r")
		if got != want || gotClosed != wantClosed {
			t.Errorf("%s: loop answered (closed %v):\n%q\nnet/http answered (closed %v):\n%q", tc.name, gotClosed, got, wantClosed, want)
		}
		if !reflect.DeepEqual(gotUp, wantUp) || len(gotUp) != len(tc.methods) {
			t.Errorf("%s: the VM saw from the loop:\n%+v\nfrom net/http:\n%+v", tc.name, gotUp, wantUp)
		}
		for _, s := range gotUp {
			if s.Header.Get("X-Forwarded-Proto") != "https" {
				t.Errorf("%s: the VM saw X-Forwarded-Proto %q", tc.name, s.Header.Get("X-Forwarded-Proto"))
			}
		}
	}

	// HTTP/2 goes to the server.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.com"}, ForceAttemptHTTP2: true,
		DialTLSContext: nil}}
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest("GET", "https://"+loop.Addr().String()+"/h2", nil)
	req.Host = "web.localhost"
	c.Transport.(*http.Transport).TLSClientConfig.ServerName = "example.com"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || string(body) != "default" {
		t.Errorf("HTTP/2: %s %s %q", resp.Proto, resp.Status, body)
	}
	if ups := upstreamSaw(); len(ups) != 1 || ups[0].Header.Get("X-Forwarded-Proto") != "https" {
		t.Errorf("HTTP/2: the VM saw %+v", ups)
	}

	// Plain HTTP on the TLS port.
	raw := "GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n"
	pc, err := net.Dial("tcp", loop.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	rc, err := net.Dial("tcp", refLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := exchangeOn(t, pc, raw, nil)
	want, _ := exchangeOn(t, rc, raw, nil)
	if got != want || !strings.Contains(got, "400 Bad Request") {
		t.Errorf("plain HTTP to the TLS port: loop %q, net/http %q", got, want)
	}
}

// Shutdown closes the loop's idle connections at once, lets a request in
// flight run until ShutdownTimeout, and then ends it, its request to the
// VM included; Serve returns.
func TestLoopShutdown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	asked, vmGone := make(chan struct{}, 10), make(chan struct{}, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				r, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				if r.URL.Path == "/quick" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					_, _ = br.ReadByte() // until the proxy closes its pooled connection
					return
				}
				asked <- struct{}{}
				_, _ = br.ReadByte() // never answer; returns when the proxy closes
				vmGone <- struct{}{}
			}()
		}
	}()
	rt := Route{VMID: "vm1", VMName: "web", Upstream: ln.Addr().String(), Public: true, Running: true}
	p, err := New(Config{HTTPBind: "127.0.0.1:0", Secret: make([]byte, SecretSize), Log: slog.New(slog.DiscardHandler),
		UpstreamHeaderTimeout: time.Minute, ShutdownTimeout: 500 * time.Millisecond}, fixedRoutes{rt}, nil)
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

	idle, err := net.Dial("tcp", pl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET /quick HTTP/1.1\r\nHost: web.localhost\r\n\r\n")
	ibr := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(ibr, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("quick request: %v %v", resp, err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	busy, err := net.Dial("tcp", pl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: web.localhost\r\n\r\n")
	select {
	case <-asked:
	case <-time.After(5 * time.Second):
		t.Fatal("the VM was not asked")
	}

	start := time.Now()
	cancel()
	idle.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := ibr.ReadByte(); err != io.EOF {
		t.Errorf("idle connection at shutdown: %v, want it closed at once", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after its shutdown timeout")
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("serve returned after %s, before the request in flight had its %s", d, p.cfg.ShutdownTimeout)
	}
	select {
	case <-vmGone:
	case <-time.After(3 * time.Second):
		t.Error("the request to the VM stayed open after the shutdown")
	}
}

// fieldsInOrder returns the answers in out (to requests of methods) with
// each header's fields in net/http's order (sorted by name; a name's
// values in their order). The loop's raw path passes the VM's fields on
// in the VM's order, which HTTP does not give a meaning; everything else
// stays byte for byte, bodies and their framing included.
func fieldsInOrder(out string, methods []string) string {
	var b strings.Builder
	for i := 0; len(out) > 0; i++ {
		end := strings.Index(out, "\r\n\r\n")
		if end < 0 || !strings.HasPrefix(out, "HTTP/1.") {
			break
		}
		lines := strings.Split(out[:end], "\r\n")
		slices.SortStableFunc(lines[1:], func(a, b string) int {
			an, _, _ := strings.Cut(a, ":")
			bn, _, _ := strings.Cut(b, ":")
			return strings.Compare(http.CanonicalHeaderKey(an), http.CanonicalHeaderKey(bn))
		})
		b.WriteString(strings.Join(lines, "\r\n"))
		// The body's extent, as a client reads it.
		method := http.MethodGet
		if i < len(methods) {
			method = methods[i]
		}
		sr := strings.NewReader(out)
		br := bufio.NewReader(sr)
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			b.WriteString(out[end:])
			return b.String()
		}
		_, err = io.Copy(io.Discard, resp.Body)
		used := len(out) - sr.Len() - br.Buffered()
		if err != nil || resp.StatusCode < 200 {
			if resp.StatusCode < 200 {
				i-- // an informational answer: the same request's
			}
			if err != nil {
				used = len(out)
			}
		}
		b.WriteString(out[end:used])
		out = out[used:]
	}
	b.WriteString(out)
	return b.String()
}
