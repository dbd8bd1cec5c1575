package proxy

import (
	"bytes"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// forward is the proxy's fast path: a GET or HEAD without a body (most of
// what browsers send) goes to the VM without httputil.ReverseProxy. The
// request is written straight from the incoming one (no cloned header map,
// no outgoing http.Request), and the answer's header map is handed to the
// client's as it is. What goes over the wire is what ReverseProxy (with
// p.rewrite and rewriteSetCookies) sends and answers: hop-by-hop headers
// and the ones named in Connection dropped both ways, X-Forwarded-* set
// afresh and Forwarded dropped, the session cookie stripped, the Host the
// client used, no User-Agent added, "Te: trailers" kept, 1xx answers
// passed on, trailers announced and copied, every Set-Cookie made
// host-only, streamed answers (no length, or text/event-stream) flushed
// at every write, and a body that breaks off aborting the client's
// response. Requests it cannot send this way (see forwardable) take
// ReverseProxy. Every check of who is asking happens before, in serveHTTP.
func (p *Proxy) forward(w *statusWriter, r *http.Request, rt Route) {
	resp, err := p.up.do(r.Context(), rt.Upstream, outReq{req: r, to: w})
	if err != nil {
		p.upstreamFailed(w, r, rt, err)
		return
	}
	p.relay(w, resp)
}

// relay answers with the VM's response resp (see forward).
func (p *Proxy) relay(w *statusWriter, resp *http.Response) {
	removeHopByHop(resp.Header)
	_ = rewriteSetCookies(resp)
	h := resp.Header // ours alone: the client's answer takes it as it is
	if !w.adoptHeader(h) {
		h = w.Header()
		for k, vv := range resp.Header {
			h[k] = vv // no copy of the values either
		}
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	// The header map is not touched again until it is written: the
	// trailers below are set only after a flush.
	w.writeHeaderKept(resp.StatusCode)
	if err := p.copyBody(w, resp); err != nil {
		resp.Body.Close()
		// The status line is out: all that is left is to cut the
		// client's response short, as ReverseProxy does.
		panic(http.ErrAbortHandler)
	}
	resp.Body.Close()
	if len(resp.Trailer) > 0 {
		_ = http.NewResponseController(w).Flush()
		if len(resp.Trailer) == announced {
			for k, vv := range resp.Trailer {
				h[k] = vv
			}
			return
		}
		for k, vv := range resp.Trailer {
			for _, v := range vv {
				h.Add(http.TrailerPrefix+k, v)
			}
		}
	}
}

// copyBody copies resp's body to w through a pooled buffer, flushing after
// every write when the answer is a stream.
func (p *Proxy) copyBody(w *statusWriter, resp *http.Response) error {
	flush := resp.ContentLength == -1 || isEventStream(resp.Header.Get("Content-Type"))
	bp := p.buffers.get()
	defer p.buffers.put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if flush {
				if err := w.FlushError(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

func isEventStream(ct string) bool {
	if len(ct) < len("text/event-stream") || !strings.EqualFold(ct[:len("text/event-stream")], "text/event-stream") {
		return false
	}
	base, _, _ := mime.ParseMediaType(ct)
	return base == "text/event-stream"
}

// forwardable reports whether r may take forward: GET or HEAD with no
// body, no upgrade or expectation, an origin-form target whose query
// ReverseProxy would not re-encode, and a plain ASCII Host.
func forwardable(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if r.ContentLength != 0 || len(r.TransferEncoding) != 0 {
		return false
	}
	// HTTP/2 gives every request a Body, empty when the stream ended
	// with the headers (ContentLength 0 then; a declared length of 0 the
	// server enforces).
	if r.Body != nil && r.Body != http.NoBody && r.ProtoMajor != 2 {
		return false
	}
	if r.URL.Opaque != "" || r.URL.Host != "" || r.URL.User != nil || r.URL.Path == "" || r.URL.Path[0] != '/' {
		return false
	}
	if _, ok := r.Header["Upgrade"]; ok {
		return false
	}
	if _, ok := r.Header["Expect"]; ok {
		return false
	}
	if r.Host == "" || !httpguts.ValidHostHeader(r.Host) || !plainASCII(r.Host) {
		return false
	}
	return cleanQuery(r.URL.RawQuery)
}

func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// cleanQuery reports whether ReverseProxy would send q unchanged (it
// re-encodes a query with a semicolon or a bad escape).
func cleanQuery(q string) bool {
	for i := 0; i < len(q); {
		switch q[i] {
		case ';':
			return false
		case '%':
			if i+2 >= len(q) || !ishex(q[i+1]) || !ishex(q[i+2]) {
				return false
			}
			i += 3
		default:
			i++
		}
	}
	return true
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// hopHeaders are dropped between hops (RFC 9110 7.6.1, and what
// ReverseProxy drops).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// notForwarded are request headers forward writes itself or drops:
// hop-by-hop, the ones Request.Write writes itself, and the forwarding
// headers set afresh.
var notForwarded = map[string]bool{"Host": true, "User-Agent": true, "Content-Length": true,
	"Forwarded": true, "X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true,
	"Cookie": true}

func init() {
	for _, k := range hopHeaders {
		notForwarded[k] = true
	}
}

func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// writeRequest writes r as forward sends it to the VM (see forward).
func writeRequest(b *bytes.Buffer, r *http.Request) {
	b.WriteString(r.Method)
	b.WriteByte(' ')
	b.WriteString(r.URL.RequestURI())
	b.WriteString(" HTTP/1.1\r\nHost: ")
	b.WriteString(r.Host)
	b.WriteString("\r\n")
	// Headers the client named in Connection are hop-by-hop too.
	var named []string
	for _, f := range r.Header["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				named = append(named, textproto.CanonicalMIMEHeaderKey(sf))
			}
		}
	}
	if ua := r.Header["User-Agent"]; len(ua) > 0 && ua[0] != "" && !slices.Contains(named, "User-Agent") {
		writeField(b, "User-Agent", ua[0])
	}
	var keysArr [32]string
	keys := keysArr[:0]
	for k := range r.Header {
		if !notForwarded[k] && !slices.Contains(named, k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys) // what Request.Write does: the same order every time
	for _, k := range keys {
		for _, v := range r.Header[k] {
			writeField(b, k, v)
		}
	}
	if !slices.Contains(named, "Cookie") {
		writeCookies(b, r.Header["Cookie"])
	}
	if httpguts.HeaderValuesContainsToken(r.Header["Te"], "trailers") {
		b.WriteString("Te: trailers\r\n")
	}
	writeForwarded(b, r.RemoteAddr, r.Host, r.TLS != nil)
}

// writeForwarded ends a request to the VM: X-Forwarded-For (the client's
// IP address, when remoteAddr has a port), -Host and -Proto set afresh,
// and the blank line.
func writeForwarded(b *bytes.Buffer, remoteAddr, host string, tls bool) {
	if ip := hostOnly(remoteAddr); ip != remoteAddr {
		writeField(b, "X-Forwarded-For", ip)
	}
	writeField(b, "X-Forwarded-Host", host)
	if tls {
		b.WriteString("X-Forwarded-Proto: https\r\n\r\n")
	} else {
		b.WriteString("X-Forwarded-Proto: http\r\n\r\n")
	}
}

// writeCookies writes the client's Cookie lines without the proxy's own
// session cookie, joined into one line as stripSessionCookie does.
func writeCookies(b *bytes.Buffer, lines []string) {
	first := true
	for _, line := range lines {
		for part := range strings.SplitSeq(line, ";") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			if name, _, _ := strings.Cut(part, "="); name == cookieName {
				continue
			}
			if first {
				b.WriteString("Cookie: ")
				first = false
			} else {
				b.WriteString("; ")
			}
			writeValue(b, part)
		}
	}
	if !first {
		b.WriteString("\r\n")
	}
}

func writeField(b *bytes.Buffer, k, v string) {
	b.WriteString(k)
	b.WriteString(": ")
	writeValue(b, textproto.TrimString(v))
	b.WriteString("\r\n")
}

// writeValue writes v with CR and LF as spaces, as http.Header.Write does
// (the server already refused requests carrying them).
func writeValue(b *bytes.Buffer, v string) {
	if !strings.ContainsAny(v, "\r\n") {
		b.WriteString(v)
		return
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b.WriteByte(c)
	}
}
