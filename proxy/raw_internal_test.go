package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The raw path takes only requests net/http's server reads the same way
// and forward would send unchanged; everything else (smuggling attempts
// included) is left to net/http, which reads it from the start.
func TestParseRawTakesAStrictSubset(t *testing.T) {
	const host = "Host: web.localhost\r\n"
	for _, tc := range []struct {
		req  string
		take bool
	}{
		{"GET / HTTP/1.1\r\n" + host + "\r\n", true},
		{"HEAD /a/b.css?v=1&x=%2F HTTP/1.1\r\n" + host + "Accept: */*\r\n\r\n", true},
		{"GET /~u/a-b_c.d!$&'()*+,;=:@ HTTP/1.1\r\n" + host + "\r\n", true},
		{"GET / HTTP/1.1\r\n" + host + "Connection: keep-alive, close\r\n\r\n", true},
		{"GET / HTTP/1.1\r\n" + host + "X-Tab:\tv\t\r\nX-High: caf\xc3\xa9\r\n\r\n", true},
		{"GET / HTTP/1.1\r\n" + host + "\r\nGET / HTTP/1.1\r\n", true}, // pipelined: the first
		// Not whole yet, or not GET/HEAD over HTTP/1.1.
		{"GET / HTTP/1.1\r\n" + host, false},
		{"POST / HTTP/1.1\r\n" + host + "\r\n", false},
		{"get / HTTP/1.1\r\n" + host + "\r\n", false},
		{"GET / HTTP/1.0\r\n" + host + "\r\n", false},
		{"GET / HTTP/1.1 \r\n" + host + "\r\n", false},
		{"GET  / HTTP/1.1\r\n" + host + "\r\n", false},
		// Targets forward would change or net/http reads otherwise.
		{"GET http://web.localhost/ HTTP/1.1\r\n" + host + "\r\n", false},
		{"GET * HTTP/1.1\r\n" + host + "\r\n", false},
		{"GET /a%2Fb HTTP/1.1\r\n" + host + "\r\n", false},
		{"GET /a\"b HTTP/1.1\r\n" + host + "\r\n", false},
		{"GET /caf\xc3\xa9 HTTP/1.1\r\n" + host + "\r\n", false},
		{"GET /#frag HTTP/1.1\r\n" + host + "\r\n", false},
		{"GET /?a;b HTTP/1.1\r\n" + host + "\r\n", false},
		{"GET /?a=%zz HTTP/1.1\r\n" + host + "\r\n", false},
		{"GET /?a\x7f HTTP/1.1\r\n" + host + "\r\n", false},
		// Framing and line endings.
		{"GET / HTTP/1.1\n" + host + "\r\n", false},
		{"GET / HTTP/1.1\r\nHost: web.localhost\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "X-A: 1\rX-B: 2\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "X-Folded: a\r\n b\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "Content-Length: 0\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello", false},
		{"GET / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "transfer-encoding : chunked\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "Expect: 100-continue\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "TE: trailers\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "Trailer: X\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "Connection: X-Drop\r\nX-Drop: 1\r\n\r\n", false},
		// Fields.
		{"GET / HTTP/1.1\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "Host: other\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: \r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "X Y: 1\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + ": 1\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "X-Nul: a\x00b\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + "X-Del: a\x7fb\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n" + host + strings.Repeat("Cookie: a=1\r\n", maxRawCookieLines+1) + "\r\n", false},
	} {
		rq, ok := parseRaw([]byte(tc.req))
		if ok != tc.take {
			t.Errorf("parseRaw(%q) took it: %v, want %v", tc.req, ok, tc.take)
			continue
		}
		if !ok {
			continue
		}
		// What it takes, net/http reads as the same request.
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tc.req)))
		if err != nil {
			t.Errorf("parseRaw took %q, net/http refuses it: %v", tc.req, err)
			continue
		}
		if got := string(rq.whole); got != tc.req[:rq.size] || !strings.HasSuffix(got, "\r\n\r\n") {
			t.Errorf("parseRaw(%q): the request is %q", tc.req, got)
		}
		if r.Method != map[bool]string{true: "HEAD", false: "GET"}[rq.head] || r.RequestURI != string(rq.target) ||
			r.URL.RequestURI() != string(rq.target) || r.Host != string(rq.host) || r.Close != rq.close {
			t.Errorf("parseRaw(%q) = %+v; net/http reads %s %s (sends %s) host %q close %v", tc.req, rq, r.Method, r.RequestURI,
				r.URL.RequestURI(), r.Host, r.Close)
		}
	}
}

// The raw path passes on only answers whose framing it can copy as it is.
func TestParseRawResponse(t *testing.T) {
	for _, tc := range []struct {
		h      string
		head   bool
		take   bool
		code   int
		length int64
		keep   bool
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n", false, true, 200, 5, true},
		{"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", false, true, 404, 0, true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n", false, true, 200, 5, false},
		{"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n", false, true, 200, 5, false},
		{"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nConnection: Keep-Alive\r\n\r\n", false, true, 200, 5, true},
		{"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", true, true, 200, 0, true},             // HEAD: no body
		{"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nContent-Type: x\r\n\r\n", true, true, 200, 0, true}, // HEAD: no body
		{"HTTP/1.1 204 No Content\r\n\r\n", false, true, 204, 0, true},
		{"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n", false, true, 304, 0, true},
		// net/http's path.
		{"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", false, false, 0, 0, false}, // until close
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, false, 0, 0, false},        // sniffed type
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: x\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nContent-Type: x\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\nContent-Type: x\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: +5\r\nContent-Type: x\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\nContent-Type: x\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\nContent-Type: x\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: x\r\nTrailer: X-Sum\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: x\r\nConnection: X-Hop\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: x\r\n folded\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 200 OK\nContent-Length: 5\r\nContent-Type: x\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 101 Switching Protocols\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", false, false, 0, 0, false},
		{"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n", false, false, 0, 0, false},
	} {
		rs, ok := parseRawResponse([]byte(tc.h), tc.head)
		if ok != tc.take {
			t.Errorf("parseRawResponse(%q, head %v) took it: %v, want %v", tc.h, tc.head, ok, tc.take)
			continue
		}
		if ok && (rs.code != tc.code || rs.length != tc.length || rs.keep != tc.keep || rs.size != len(tc.h)) {
			t.Errorf("parseRawResponse(%q, head %v) = %+v, want code %d length %d keep %v", tc.h, tc.head, rs, tc.code, tc.length, tc.keep)
		}
	}
}

// The client's header drops the hop-by-hop fields, makes every
// Set-Cookie host-only and drops the proxy's own cookie, as forward does.
func TestWriteRawHeader(t *testing.T) {
	h := "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\n" +
		"Proxy-Connection: x\r\nTE: trailers\r\nProxy-Authenticate: Basic\r\nContent-Type: text/plain\r\n" +
		"Set-Cookie: a=1; Path=/; Domain=.example.com\r\nSet-Cookie: minions_session=evil\r\nset-cookie: b=2;domain=x\r\nSet-Cookie: c=3; HttpOnly\r\n\r\n"
	rs, ok := parseRawResponse([]byte(h), false)
	if !ok {
		t.Fatal("not taken")
	}
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	writeRawHeader(bw, []byte(h), &rs, true, time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC))
	bw.Flush()
	want := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2\r\n" +
		"Set-Cookie: c=3; HttpOnly\r\nDate: Mon, 07 Dec 2026 10:00:00 GMT\r\nConnection: close\r\n\r\n"
	if b.String() != want {
		t.Errorf("header:\n%q\nwant\n%q", b.String(), want)
	}
}
