package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"slices"
	"time"
	"unsafe"

	"golang.org/x/net/http/httpguts"
)

// The loop's raw path. Most of what reaches a VM is a GET or HEAD without
// a body whose answer has a Content-Length. For those the loop reads the
// request where it lies in its buffer and writes it to the VM, and copies
// the VM's answer to the client from the upstream connection's buffer,
// without net/http's parsers, header maps and response writer: on a small
// host those were about a third of the daemon's CPU per proxied request
// (docs/proxy.md).
//
// What goes over the wire is what forward sends and answers, except that
// header fields keep the order, spelling and values the other side gave
// them: the same hop-by-hop fields are dropped both ways, X-Forwarded-*
// are set afresh and Forwarded dropped, the session cookie stripped, every
// Set-Cookie made host-only, and a Date added when the VM gave none. The
// raw path takes only a strict subset of HTTP/1.1 (see parseRaw and
// parseRawResponse); everything else takes net/http's path, decided
// before anything is read from the client (the request) or written to it
// (the answer), so a request is never sent twice.

var crlfcrlf = []byte("\r\n\r\n")

// rawRequest is a request parseRaw took: views into the loop's buffer,
// valid until the request is discarded from it.
type rawRequest struct {
	head    bool
	target  []byte // origin-form, as sent
	host    []byte // the Host field's value
	fields  []byte // the field lines, each ending in CRLF
	size    int    // request line, fields and the blank line
	whole   []byte // the request
	close   bool   // the client asked to close the connection
	cookies int    // Cookie lines
}

// maxRawCookieLines is the most Cookie lines the raw path takes.
const maxRawCookieLines = 8

// parseRaw reads the request at the start of b when it is one the raw
// path takes: whole in b; GET or HEAD; HTTP/1.1; an origin-form target
// that forward would send unchanged and whose path has no escapes; one
// valid Host; field names that are tokens and values without control
// characters, each line ending in CRLF (no obs-fold); no body, upgrade,
// expectation, TE or trailer; Connection naming only keep-alive or close.
func parseRaw(b []byte) (rq rawRequest, ok bool) {
	end := bytes.Index(b, crlfcrlf)
	if end < 0 {
		return rq, false
	}
	b = b[:end+4]
	rq.size, rq.whole = len(b), b
	nl := bytes.IndexByte(b, '\n')
	if nl < 1 || b[nl-1] != '\r' {
		return rq, false
	}
	line := b[:nl-1]
	switch {
	case bytes.HasPrefix(line, []byte("GET ")):
		line = line[4:]
	case bytes.HasPrefix(line, []byte("HEAD ")):
		rq.head, line = true, line[5:]
	default:
		return rq, false
	}
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 || string(line[sp+1:]) != "HTTP/1.1" || !rawTarget(line[:sp]) {
		return rq, false
	}
	rq.target = line[:sp]
	rq.fields = b[nl+1 : len(b)-2]
	hosts := 0
	for f := rq.fields; len(f) > 0; {
		name, value, rest, ok := nextField(f)
		if !ok {
			return rq, false
		}
		f = rest
		switch {
		case fieldIs(name, "host"):
			hosts++
			rq.host = value
		case fieldIs(name, "cookie"):
			rq.cookies++
			if rq.cookies > maxRawCookieLines {
				return rq, false
			}
		case fieldIs(name, "connection"):
			c, _, ok := connectionTokens(value)
			if !ok {
				return rq, false
			}
			rq.close = rq.close || c
		case fieldIs(name, "content-length"), fieldIs(name, "transfer-encoding"), fieldIs(name, "upgrade"),
			fieldIs(name, "expect"), fieldIs(name, "te"), fieldIs(name, "trailer"):
			return rq, false
		}
	}
	if hosts != 1 || len(rq.host) == 0 {
		return rq, false
	}
	h := unsafe.String(unsafe.SliceData(rq.host), len(rq.host))
	if !httpguts.ValidHostHeader(h) || !plainASCII(h) {
		return rq, false
	}
	return rq, true
}

// rawTarget reports whether t is an origin-form target that
// url.ParseRequestURI reads and RequestURI gives back unchanged (so
// forward would send it as it is), with a path of plain characters (no
// escapes: the path the proxy checks and logs is then the bytes as sent)
// and a query without semicolons or bad escapes (cleanQuery).
func rawTarget(t []byte) bool {
	if len(t) == 0 || t[0] != '/' {
		return false
	}
	i := 0
	for ; i < len(t) && t[i] != '?'; i++ {
		if !pathByte(t[i]) {
			return false
		}
	}
	if i == len(t) {
		return true
	}
	q := t[i+1:]
	for _, c := range q {
		if c <= ' ' || c >= 0x7f || c == '#' {
			return false
		}
	}
	return cleanQuery(unsafe.String(unsafe.SliceData(q), len(q)))
}

// pathByte reports whether c stands for itself in a path as url.URL
// writes it: unreserved, sub-delims, ':', '@' and '/'.
func pathByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':', '@', '/':
		return true
	}
	return false
}

// nextField splits the first field line of f (ending in CRLF) into its
// name and its value without the whitespace around it; false unless the
// name is a token right before the colon and the value has no control
// characters but tabs.
func nextField(f []byte) (name, value, rest []byte, ok bool) {
	nl := bytes.IndexByte(f, '\n')
	if nl < 1 || f[nl-1] != '\r' {
		return nil, nil, nil, false
	}
	line, rest := f[:nl-1], f[nl+1:]
	colon := bytes.IndexByte(line, ':')
	if colon < 1 {
		return nil, nil, nil, false
	}
	name = line[:colon]
	for _, c := range name {
		if !httpguts.IsTokenRune(rune(c)) {
			return nil, nil, nil, false
		}
	}
	value = line[colon+1:]
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, nil, nil, false
		}
	}
	for len(value) > 0 && (value[0] == ' ' || value[0] == '\t') {
		value = value[1:]
	}
	for len(value) > 0 && (value[len(value)-1] == ' ' || value[len(value)-1] == '\t') {
		value = value[:len(value)-1]
	}
	return name, value, rest, true
}

// fieldIs reports whether name is lower, ignoring ASCII case.
func fieldIs(name []byte, lower string) bool {
	return equalFoldASCII(unsafe.String(unsafe.SliceData(name), len(name)), lower)
}

// connectionTokens reads a Connection value: whether it says close and
// keep-alive; false when it names anything else (fields to drop, which
// net/http's path handles).
func connectionTokens(v []byte) (closes, keepAlive, ok bool) {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			tok, v = v, nil
		}
		tok = bytes.Trim(tok, " \t")
		switch {
		case len(tok) == 0:
		case fieldIs(tok, "keep-alive"):
			keepAlive = true
		case fieldIs(tok, "close"):
			closes = true
		default:
			return false, false, false
		}
	}
	return closes, keepAlive, true
}

// rawSkipped reports whether a request field is one writeRequest does
// not pass on as it is (notForwarded: hop-by-hop ones, the Host and the
// Cookie lines written apart, the forwarding ones set afresh), but the
// User-Agent, which writeRaw passes on where it stands.
func rawSkipped(name []byte) bool {
	return !fieldIs(name, "user-agent") && inFolded(notForwarded, name)
}

// inFolded reports whether set, keyed by canonical field names, holds
// name in any case (without an allocation).
func inFolded(set map[string]bool, name []byte) bool {
	var buf [32]byte
	if len(name) > len(buf) {
		return false // none of the names asked about is as long
	}
	canon := buf[:len(name)]
	upper := true
	for i, c := range name {
		switch {
		case upper && 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		case !upper && 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		canon[i] = c
		upper = c == '-'
	}
	return set[string(canon)]
}

// cookieLines returns the request's Cookie values, in cs.
func (rq *rawRequest) cookieLines(cs *[maxRawCookieLines]string) []string {
	out := cs[:0]
	if rq.cookies == 0 {
		return out
	}
	for f := rq.fields; len(f) > 0; {
		name, value, rest, _ := nextField(f)
		f = rest
		if fieldIs(name, "cookie") {
			out = append(out, unsafe.String(unsafe.SliceData(value), len(value)))
		}
	}
	return out
}

// writeRaw writes rq from the client at remoteAddr to b as forward sends
// it to the VM (see writeRequest).
func writeRaw(b *bytes.Buffer, rq *rawRequest, cookies []string, remoteAddr string, tls bool) {
	if rq.head {
		b.WriteString("HEAD ")
	} else {
		b.WriteString("GET ")
	}
	b.Write(rq.target)
	b.WriteString(" HTTP/1.1\r\nHost: ")
	b.Write(rq.host)
	b.WriteString("\r\n")
	for f := rq.fields; len(f) > 0; {
		line := f[:bytes.IndexByte(f, '\n')+1]
		name, value, rest, _ := nextField(f)
		f = rest
		if rawSkipped(name) || len(value) == 0 && fieldIs(name, "user-agent") {
			continue
		}
		b.Write(line)
	}
	writeCookies(b, cookies)
	writeForwarded(b, remoteAddr, unsafe.String(unsafe.SliceData(rq.host), len(rq.host)), tls)
}

// rawResponse is a VM's answer parseRawResponse took.
type rawResponse struct {
	code    int
	size    int   // status line, fields and the blank line
	length  int64 // body bytes to copy
	keep    bool  // the VM keeps the connection open
	hasDate bool
}

// parseRawResponse reads the response header h (ending in the blank line)
// when the raw path can pass it on: HTTP/1.1 or 1.0, a final status
// (200-599), fields as parseRaw takes them, no Transfer-Encoding or
// Trailer, Connection naming only keep-alive or close, and a body that is
// either none (an answer to HEAD, 204, 304) or framed by one valid
// Content-Length, with a Content-Type when it is not empty (net/http's
// server would sniff one).
func parseRawResponse(h []byte, head bool) (rs rawResponse, ok bool) {
	rs.size = len(h)
	nl := bytes.IndexByte(h, '\n')
	if nl < 1 || h[nl-1] != '\r' {
		return rs, false
	}
	line := h[:nl-1]
	switch {
	case bytes.HasPrefix(line, []byte("HTTP/1.1 ")):
		rs.keep = true
	case bytes.HasPrefix(line, []byte("HTTP/1.0 ")):
	default:
		return rs, false
	}
	line = line[9:]
	if len(line) < 3 || len(line) > 3 && line[3] != ' ' {
		return rs, false
	}
	for _, c := range line[:3] {
		if c < '0' || c > '9' {
			return rs, false
		}
		rs.code = rs.code*10 + int(c-'0')
	}
	if rs.code < 200 || rs.code > 599 {
		return rs, false
	}
	for _, c := range line[3:] {
		if c < ' ' && c != '\t' || c == 0x7f {
			return rs, false
		}
	}
	rs.length = -1
	typed := false
	for f := h[nl+1 : len(h)-2]; len(f) > 0; {
		name, value, rest, ok := nextField(f)
		if !ok {
			return rs, false
		}
		f = rest
		switch {
		case fieldIs(name, "content-length"):
			if rs.length >= 0 || len(value) == 0 || len(value) > 18 {
				return rs, false
			}
			var n int64
			for _, c := range value {
				if c < '0' || c > '9' {
					return rs, false
				}
				n = n*10 + int64(c-'0')
			}
			rs.length = n
		case fieldIs(name, "connection"):
			closes, keepAlive, ok := connectionTokens(value)
			if !ok {
				return rs, false
			}
			switch {
			case closes:
				rs.keep = false
			case keepAlive && string(h[5:8]) == "1.0":
				rs.keep = true
			}
		case fieldIs(name, "transfer-encoding"), fieldIs(name, "trailer"):
			return rs, false
		case fieldIs(name, "date"):
			rs.hasDate = true
		case fieldIs(name, "content-type"):
			typed = true
		}
	}
	switch {
	case head || rs.code == http.StatusNoContent || rs.code == http.StatusNotModified:
		rs.length = 0
	case rs.length < 0:
		return rs, false // chunked, or until the VM closes: net/http's path
	case rs.length > 0 && !typed:
		return rs, false // net/http's server sniffs a Content-Type
	}
	return rs, true
}

// hopSet is hopHeaders as a set.
var hopSet = func() map[string]bool {
	m := make(map[string]bool, len(hopHeaders))
	for _, k := range hopHeaders {
		m[k] = true
	}
	return m
}()

// writeRawHeader writes the client's answer header for the VM's header h:
// the status line as net/http writes it, the VM's fields but the
// hop-by-hop ones with every Set-Cookie made host-only (and the proxy's
// own cookie dropped), a Date, and Connection: close when the client
// asked for it.
func writeRawHeader(bw *bufio.Writer, h []byte, rs *rawResponse, closes bool, now time.Time) {
	writeStatusLine(bw, true, rs.code)
	suppressed := suppressedHeaders(rs.code)
	nl := bytes.IndexByte(h, '\n')
	for f := h[nl+1 : len(h)-2]; len(f) > 0; {
		line := f[:bytes.IndexByte(f, '\n')+1]
		name, value, rest, _ := nextField(f)
		f = rest
		switch {
		case inFolded(hopSet, name):
			continue // as removeHopByHop
		case suppressed != nil && slices.ContainsFunc(suppressed, func(k string) bool { return fieldIs(name, k) }):
			continue // what net/http's server leaves out
		case fieldIs(name, "set-cookie") && !plainSetCookie(value):
			c, ok := hostOnlyCookie(string(value))
			if ok {
				_, _ = bw.WriteString("Set-Cookie: ")
				_, _ = bw.WriteString(c)
				_, _ = bw.WriteString("\r\n")
			}
			continue
		}
		_, _ = bw.Write(line)
	}
	if !rs.hasDate {
		_, _ = bw.WriteString("Date: ")
		_, _ = bw.WriteString(httpDate(now))
		_, _ = bw.WriteString("\r\n")
	}
	if closes {
		_, _ = bw.WriteString("Connection: close\r\n")
	}
	_, _ = bw.WriteString("\r\n")
}

// plainSetCookie reports whether a Set-Cookie value passes as it is: not
// the proxy's own cookie, and no Domain attribute.
func plainSetCookie(v []byte) bool {
	first := true
	for len(v) > 0 {
		var part []byte
		if i := bytes.IndexByte(v, ';'); i >= 0 {
			part, v = v[:i], v[i+1:]
		} else {
			part, v = v, nil
		}
		name := part
		if i := bytes.IndexByte(part, '='); i >= 0 {
			name = part[:i]
		}
		name = bytes.Trim(name, " \t")
		if first && string(name) == cookieName || !first && fieldIs(name, "domain") {
			return false
		}
		first = false
	}
	return true
}

// serveRaw answers the request at the head of the loop's buffer when the
// raw path takes it: a request parseRaw takes, to a route the request may
// reach (a running VM, public or with the owner's session, not the
// proxy's own sign-in paths), within the connection and rate limits. done
// is false when it did not take it: nothing was read or sent, and
// net/http's path reads the request. keep reports whether the connection
// serves another request.
func (hc *h1Conn) serveRaw() (done, keep bool) {
	buf, _ := hc.br.Peek(hc.br.Buffered())
	rq, ok := parseRaw(buf)
	if !ok || overConnLimit(hc.ctx) != underLimits {
		return false, false
	}
	p := hc.l.p
	start := time.Now()
	host := normalizeHost(string(rq.host))
	rt, err := p.routes.Route(hc.ctx, host)
	if err != nil || !rt.Running {
		return false, false
	}
	path := rq.target
	if i := bytes.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if string(path) == loginPath || string(path) == logoutPath {
		return false, false
	}
	var cs [maxRawCookieLines]string
	cookies := rq.cookieLines(&cs)
	if !rt.Public && !p.admittedBy(cookies, rt) {
		return false, false
	}
	remoteIP := hostOnly(hc.remote)
	if ok, _ := p.rate.allow(remoteIP); !ok {
		return false, false // net/http's path answers 429
	}
	// From here on the request is the raw path's: it is answered here
	// whatever happens.
	if hc.l.shuttingDown() || !hc.l.setActive(hc, true) {
		return true, false // as net/http: no answer once shutting down
	}
	// The request leaves the buffer now (its bytes stay where they are
	// until the loop reads again): the watch of a slow request reads
	// from the client only when the buffer is empty.
	hc.br.Discard(rq.size)
	hc.beginRequest()
	status, n, whole, tail := hc.rawExchange(&rq, rt, cookies)
	if tail != nil {
		keep := hc.rawTail(tail, rq.whole, start)
		hc.endRequest()
		return true, keep
	}
	hc.endRequest()
	f := accessRecord{component: "proxy", remoteIP: remoteIP, host: host, vmID: rt.VMID, method: http.MethodGet,
		path: string(path), status: status, bytes: n, proto: "HTTP/1.1"}
	if rq.head {
		f.method = http.MethodHead
	}
	p.metrics.raw.Add(1)
	// Logged before the answer's last bytes leave, as serveHTTP's
	// requests are: a client that has its answer finds it logged.
	p.account(hc.ctx, start, f)
	if !whole {
		return true, false
	}
	_ = hc.bw.Flush()
	return true, hc.werr == nil && !rq.close
}

// rawTail is the end of a raw request that net/http's path answers: an
// error page for err, or the VM's answer on pc, read with
// http.ReadResponse (an answer parseRawResponse did not take).
type rawTail struct {
	rt  Route
	err error
	pc  *upConn
	w   upWatch
}

// rawExchange sends rq to the VM and copies a plain answer to the
// client's buffer (the caller flushes it); the status, the body bytes,
// and whether the body was whole. Anything else, nothing being written to
// the client yet, it leaves to rawTail.
func (hc *h1Conn) rawExchange(rq *rawRequest, rt Route, cookies []string) (status int, n int64, whole bool, tail *rawTail) {
	u, ctx := hc.l.p.up, hc.ctx
	pc, reused, err := u.get(ctx, rt.Upstream)
	if err != nil {
		return 0, 0, false, &rawTail{rt: rt, err: err}
	}
	var w upWatch
	for {
		w = u.watch(ctx, pc)
		pc.out.Reset()
		writeRaw(&pc.out, rq, cookies, hc.remote, hc.tlsState != nil)
		err = u.send(ctx, pc, w)
		if err != nil && reused && errors.Is(err, errNoAnswer) && ctx.Err() == nil {
			// The VM closed the connection while we reused it: once
			// more on a new one, as do.
			reused = false
			if pc, err = u.dialConn(ctx, rt.Upstream); err != nil {
				return 0, 0, false, &rawTail{rt: rt, err: err}
			}
			continue
		}
		break
	}
	if err != nil {
		return 0, 0, false, &rawTail{rt: rt, err: errors.Unwrap(err)}
	}
	// The whole header, if it fits the connection's buffer.
	var h []byte
	for {
		b, _ := pc.br.Peek(pc.br.Buffered())
		if i := bytes.Index(b, crlfcrlf); i >= 0 {
			h = b[:i+4]
			break
		}
		if len(b) == pc.br.Size() {
			return 0, 0, false, &rawTail{rt: rt, pc: pc, w: w}
		}
		if _, err := pc.br.Peek(len(b) + 1); err != nil {
			return 0, 0, false, &rawTail{rt: rt, pc: pc, w: w} // its error, read again
		}
	}
	rs, ok := parseRawResponse(h, rq.head)
	if !ok {
		return 0, 0, false, &rawTail{rt: rt, pc: pc, w: w}
	}
	if !pc.timer.Stop() && u.headerTimeout > 0 {
		return 0, 0, false, &rawTail{rt: rt, err: errors.Unwrap(u.failed(ctx, pc, w, timeoutError{}, true))}
	}
	pc.limit = -1
	writeRawHeader(hc.bw, h, &rs, rq.close, time.Now())
	pc.br.Discard(rs.size)
	// The body: what the connection's buffer holds, then straight
	// through a pooled buffer.
	left := rs.length
	var bp *[]byte
	for left > 0 && hc.werr == nil {
		var chunk []byte
		buffered := pc.br.Buffered() > 0
		if buffered {
			chunk, _ = pc.br.Peek(int(min(int64(pc.br.Buffered()), left)))
		} else {
			if bp == nil {
				bp = hc.l.p.buffers.get()
			}
			k, err := pc.br.Read((*bp)[:min(int64(len(*bp)), left)])
			if k == 0 && err != nil {
				break
			}
			chunk = (*bp)[:k]
		}
		_, _ = hc.bw.Write(chunk)
		if buffered {
			pc.br.Discard(len(chunk))
		}
		left -= int64(len(chunk))
		n += int64(len(chunk))
	}
	if bp != nil {
		hc.l.p.buffers.put(bp)
	}
	if w.stop() && left == 0 && rs.keep {
		u.put(pc)
	} else {
		pc.conn.Close()
	}
	if left > 0 {
		// The body broke off: the client's answer is cut short, as
		// forward's (net/http's server drops what it had not sent yet,
		// and closes).
		hc.bw.Reset(errWriter{hc})
		return rs.code, n, false, nil
	}
	return rs.code, n, true, nil
}

// rawTail answers the raw request the tail is about with net/http's
// path: the request (req, as the client sent it) is read with
// http.ReadRequest and answered through the loop's response writer, as
// serveHTTP answers. It reports whether the connection serves another
// request.
func (hc *h1Conn) rawTail(t *rawTail, req []byte, start time.Time) bool {
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(req)))
	if err != nil {
		// parseRaw took what net/http reads: not reached.
		if t.pc != nil {
			t.w.stop()
			t.pc.conn.Close()
		}
		return false
	}
	r.RemoteAddr = hc.remote
	r.TLS = hc.tlsState
	r = r.WithContext(hc.ctx)
	w := &hc.res
	w.reset(hc, r)
	hc.tail, hc.tailStart = t, start
	ok := hc.run(w)
	hc.tail = nil
	return ok && w.shouldReuseConnection()
}

// serveTail is serveHTTP for a raw request's tail.
func (p *Proxy) serveTail(w http.ResponseWriter, r *http.Request, t *rawTail, start time.Time) {
	sw := statusWriterFor(w, p)
	defer p.logged(r, sw, start, normalizeHost(r.Host), t.rt.VMID)
	if t.pc == nil {
		p.upstreamFailed(sw, r, t.rt, t.err)
		return
	}
	resp, err := p.up.readResponse(r.Context(), t.pc, outReq{req: r, to: sw}, t.w)
	if err != nil {
		p.upstreamFailed(sw, r, t.rt, errors.Unwrap(err))
		return
	}
	p.relay(sw, resp)
}
