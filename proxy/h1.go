package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// h1Listener serves plain HTTP/1.x connections in one goroutine each:
// read a request, answer it (serveHTTP, usually forward over a pooled
// upstream connection), read the next. net/http's server costs a
// proxied request several goroutine wake-ups on top of that (a
// background read started and aborted per request, a context per
// request); on a small shared host those wake-ups were most of the
// proxy's CPU. What the loop answers, it answers byte for byte as
// net/http's server would (h1Response mirrors its response writer).
//
// The loop takes only requests it is sure of: HTTP/1.x GET or HEAD
// without a body, upgrade or expectation, with a valid Host and header
// fields (see loopable). On anything else (a request with a body, a
// WebSocket upgrade, a request net/http would refuse with an error) it
// hands the connection, with the bytes of that request, to the
// http.Server that accepts from this listener, which serves the rest of
// the connection as it always did.
//
// Unlike net/http, the loop does not watch the client's connection while
// a request is in flight: a client that goes away is noticed when its
// answer cannot be written (the upstream's header timeout bounds the wait
// before that).
type h1Listener struct {
	net.Listener // the connections' source; Close closes it
	p            *Proxy
	tls          *tls.Config // nil: plain HTTP
	handoff      chan net.Conn
	errc         chan error
	done         chan struct{}
	closeOnce    sync.Once

	mu      sync.Mutex
	conns   map[*h1Conn]bool // served by the loop; true while a request is in flight
	closing bool
	wg      sync.WaitGroup
}

func newH1Listener(ln net.Listener, p *Proxy, tc *tls.Config) *h1Listener {
	l := &h1Listener{Listener: ln, p: p, tls: tc, handoff: make(chan net.Conn), errc: make(chan error, 1),
		done: make(chan struct{}), conns: make(map[*h1Conn]bool)}
	go l.acceptLoop()
	return l
}

func (l *h1Listener) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				l.errc <- err
				return
			}
			// Out of descriptors and the like: wait and retry, as
			// http.Server does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.p.log.Warn("proxy accept", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		hc := l.track(c)
		if hc == nil {
			c.Close()
			continue
		}
		go hc.serve()
	}
}

// Accept returns the connections the loop handed over.
func (l *h1Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.handoff:
		return c, nil
	case err := <-l.errc:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; connections being served stay open (see
// shutdown).
func (l *h1Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}

func (l *h1Listener) track(c net.Conn) *h1Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return nil
	}
	hc := newH1Conn(l, c)
	l.conns[hc] = false
	l.wg.Add(1)
	return hc
}

// setActive marks hc as answering a request (or not). It reports false
// when the listener is shutting down and hc should close.
func (l *h1Listener) setActive(hc *h1Conn, active bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conns[hc] = active
	return !l.closing
}

func (l *h1Listener) untrack(hc *h1Conn) {
	l.mu.Lock()
	delete(l.conns, hc)
	l.mu.Unlock()
	l.wg.Done()
}

func (l *h1Listener) shuttingDown() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closing
}

// shutdown closes the loop's idle connections at once and the others
// after their answer, as http.Server.Shutdown does; when ctx ends first
// it closes them all.
func (l *h1Listener) shutdown(ctx context.Context) error {
	// The listener is the server's to close (http.Server.Shutdown):
	// closed here first, its Serve would return an error.
	l.mu.Lock()
	l.closing = true
	for hc, active := range l.conns {
		if !active {
			hc.c.Close()
		}
	}
	l.mu.Unlock()
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		l.mu.Lock()
		for hc := range l.conns {
			hc.abort() // ends the request to the VM too
			hc.c.Close()
		}
		l.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// maxRequestHeader is what net/http's server reads for a request's
// header before it answers 431 (DefaultMaxHeaderBytes plus its slack).
const maxRequestHeader = http.DefaultMaxHeaderBytes + 4096

// h1Conn is one client connection served by the loop.
type h1Conn struct {
	l        *h1Listener
	c        net.Conn // as accepted
	rw       net.Conn // c with raw reads and writes (sysConn), or the TLS connection over that
	tlsState *tls.ConnectionState
	ctx      context.Context // the requests' context; cancelled when the client is gone
	cancel   context.CancelFunc
	remote   string
	br       *bufio.Reader // reads through rec
	bw       *bufio.Writer // net/http's conn.bufw (4 KiB), through werr
	body     *bufio.Writer // net/http's response.w (2 KiB), over chunks
	chunks   chunkWriter
	res      h1Response // the answer being written (see h1Response.reset)
	werr     error      // the first write error on c

	// The bytes of the request being read, kept to hand it over.
	recording bool
	rec       []byte

	// Watching the client while a slow request is answered: whether it
	// went away (see startWatch).
	watchTimer *time.Timer
	watchMu    sync.Mutex
	inRequest  bool
	reqStart   time.Time     // when the request in flight began
	armed      bool          // watchTimer is set
	watchDone  chan struct{} // non-nil while a watch runs
	peeked     bool          // the watch read a byte of the next request:
	peekedByte byte          // it is read first

	// The upstream connection a request is using, closed by abort.
	upMu    sync.Mutex
	up      *upConn
	aborted bool

	// The raw path's request that net/http's path ends (see rawTail).
	tail      *rawTail
	tailStart time.Time

	// The client connection's read deadline as last set by the loop,
	// and whether it is an idle wait's (see idleDeadline).
	readDeadline time.Time
	idleSet      bool
}

// watchAfter is how long a request runs before the loop watches its
// client's connection for a close (net/http watches every request from
// the start, at the cost of a goroutine and its wake-ups per request).
// Each busy connection's watch timer fires about once per watchAfter,
// and each firing wakes a thread (and the runtime's monitor): at 25 ms
// that was 40 wake-ups a second per connection. A client that leaves
// during a request slower than this has the request to the VM cancelled
// within watchAfter.
const watchAfter = 250 * time.Millisecond

// startWatch runs on the watch timer: unless the request in flight is
// already answered, a goroutine reads one byte from the client. EOF or an
// error means the client went away: the connection's context is
// cancelled, which ends the request to the VM. A byte is the start of the
// next request, kept for the loop. stopWatch ends the read with a
// deadline.
//
// The timer is not set and stopped for every request (on a connection
// with requests a millisecond apart that was two timer changes per
// request, each able to wake a thread parked in the poller): it is set
// when a request begins and none is set, and when it fires for a request
// that has not run watchAfter yet (a later one than it was set for), it
// is set again for the rest of that request's watchAfter. So a request is
// watched from watchAfter after its start, as before, and a busy
// connection changes its timer about once per watchAfter.
func (hc *h1Conn) startWatch() {
	hc.watchMu.Lock()
	defer hc.watchMu.Unlock()
	hc.armed = false
	if !hc.inRequest || hc.watchDone != nil {
		return
	}
	if left := watchAfter - time.Since(hc.reqStart); left > 0 {
		hc.armed = true
		hc.watchTimer.Reset(left)
		return
	}
	if hc.br.Buffered() > 0 {
		return
	}
	done := make(chan struct{})
	hc.watchDone = done
	go func() {
		defer close(done)
		var b [1]byte
		n, err := hc.rw.Read(b[:])
		if n == 1 {
			hc.peeked, hc.peekedByte = true, b[0]
			return
		}
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			hc.abort()
		}
	}()
}

// beginRequest notes the request's start and sets the watch timer unless
// it is set.
func (hc *h1Conn) beginRequest() {
	now := time.Now()
	hc.watchMu.Lock()
	hc.inRequest = true
	hc.reqStart = now
	arm := !hc.armed
	hc.armed = true
	hc.watchMu.Unlock()
	if arm {
		hc.watchTimer.Reset(watchAfter)
	}
}

// endRequest stops the watch (and waits for its read to end). The timer
// stays set; firing with no request in flight, it does nothing.
func (hc *h1Conn) endRequest() {
	hc.watchMu.Lock()
	hc.inRequest = false
	done := hc.watchDone
	hc.watchDone = nil
	hc.watchMu.Unlock()
	if done != nil {
		hc.setReadDeadline(time.Unix(1, 0))
		<-done
	}
}

func newH1Conn(l *h1Listener, c net.Conn) *h1Conn {
	hc := &h1Conn{l: l, c: c, rw: sysConnFor(c), remote: c.RemoteAddr().String()}
	ctx := context.WithValue(context.Background(), http.LocalAddrContextKey, c.LocalAddr())
	ctx = context.WithValue(connContext(ctx, c), connAbortKey{}, hc)
	hc.ctx, hc.cancel = context.WithCancel(ctx)
	hc.watchTimer = time.AfterFunc(time.Hour, hc.startWatch)
	hc.watchTimer.Stop()
	hc.br = bufio.NewReaderSize(recReader{hc}, 4<<10)
	hc.bw = bufio.NewWriterSize(errWriter{hc}, 4<<10)
	hc.chunks.hc = hc
	hc.body = bufio.NewWriterSize(&hc.chunks, 2<<10)
	return hc
}

// connAbortKey is the context key of a loop connection's requests: the
// *h1Conn, whose abort also closes the upstream connection in use (see
// watchUp).
type connAbortKey struct{}

// abort cancels the connection's requests and closes the upstream
// connection one of them is using (as a context.AfterFunc would).
func (hc *h1Conn) abort() {
	hc.cancel()
	hc.upMu.Lock()
	hc.aborted = true
	pc := hc.up
	hc.up = nil
	hc.upMu.Unlock()
	if pc != nil {
		pc.abort()
	}
}

// watchUp has abort close pc until unwatchUp; when the requests were
// already cancelled, it closes pc at once.
func (hc *h1Conn) watchUp(pc *upConn) {
	hc.upMu.Lock()
	if hc.aborted {
		hc.upMu.Unlock()
		pc.abort()
		return
	}
	hc.up = pc
	hc.upMu.Unlock()
}

// unwatchUp ends watchUp; false when abort came first (as the stop
// function of context.AfterFunc).
func (hc *h1Conn) unwatchUp(pc *upConn) bool {
	hc.upMu.Lock()
	defer hc.upMu.Unlock()
	if hc.up != pc {
		return false
	}
	hc.up = nil
	return true
}

// recReader reads from the client's connection and, while a request is
// read, keeps a copy of its bytes.
type recReader struct{ hc *h1Conn }

var errRequestTooLarge = errors.New("request header too large")

func (r recReader) Read(b []byte) (int, error) {
	hc := r.hc
	if hc.recording && len(hc.rec) >= maxRequestHeader {
		return 0, errRequestTooLarge
	}
	var n int
	var err error
	if hc.peeked && len(b) > 0 {
		b[0], hc.peeked = hc.peekedByte, false
		n = 1
	} else {
		n, err = hc.rw.Read(b)
	}
	if hc.recording && n > 0 {
		hc.rec = append(hc.rec, b[:n]...)
	}
	return n, err
}

// errWriter notes the first error writing to the client.
type errWriter struct{ hc *h1Conn }

func (w errWriter) Write(b []byte) (int, error) {
	n, err := w.hc.rw.Write(b)
	if err != nil && w.hc.werr == nil {
		w.hc.werr = err
	}
	return n, err
}

func (hc *h1Conn) serve() {
	handedOver := false
	defer func() {
		hc.watchTimer.Stop()
		if !handedOver {
			hc.abort()
			hc.c.Close()
		}
		hc.l.untrack(hc)
	}()
	if hc.l.tls != nil {
		tc, ok := hc.handshake()
		if !ok {
			return
		}
		if proto := hc.tlsState.NegotiatedProtocol; proto != "" && proto != "http/1.1" {
			// HTTP/2 (and ACME's tls-alpn-01): the server's.
			handedOver = hc.give(tc)
			return
		}
	}
	idle := hc.l.p.cfg.IdleTimeout
	first := true
	for {
		now := time.Now()
		switch {
		case first:
			hc.setReadDeadline(now.Add(readHeaderTimeout))
		case idle > 0:
			hc.idleDeadline(now, idle)
		default:
			hc.setReadDeadline(time.Time{})
		}
		if _, err := hc.br.Peek(1); err != nil {
			return
		}
		if !first && !headerBuffered(hc.br) {
			hc.setReadDeadline(time.Now().Add(readHeaderTimeout))
		}
		first = false
		if done, keep := hc.serveRaw(); done {
			if !keep || !hc.l.setActive(hc, false) {
				return
			}
			continue
		}
		buffered, _ := hc.br.Peek(hc.br.Buffered())
		hc.rec = append(hc.rec[:0], buffered...)
		hc.recording = true
		r, err := http.ReadRequest(hc.br)
		hc.recording = false
		if hc.l.shuttingDown() {
			return // as net/http: no answer once shutting down
		}
		if err != nil {
			if commonReadError(err) {
				return // no answer, as net/http
			}
			handedOver = hc.handOver()
			return
		}
		if !loopable(r) {
			handedOver = hc.handOver()
			return
		}
		if cap(hc.rec) > maxKeptRequest {
			hc.rec = nil
		}
		r.RemoteAddr = hc.remote
		r.TLS = hc.tlsState
		r = r.WithContext(hc.ctx)
		if !hc.l.setActive(hc, true) {
			return
		}
		w := &hc.res
		w.reset(hc, r)
		if !hc.answer(w) {
			return
		}
		if !hc.l.setActive(hc, false) || !w.shouldReuseConnection() {
			return
		}
	}
}

// setReadDeadline sets the client connection's read deadline and notes
// it (see idleDeadline).
func (hc *h1Conn) setReadDeadline(t time.Time) {
	hc.idleSet = false
	if t.Equal(hc.readDeadline) {
		return
	}
	hc.readDeadline = t
	hc.l.p.deadlineSets.Add(1)
	_ = hc.rw.SetReadDeadline(t)
}

// idleDeadline sets the deadline for the next request's first byte: idle
// after now. A deadline is a runtime timer, and moving it for every
// request (two timer-heap changes and a lock per request) was a
// measurable share of a proxied request's CPU, so a deadline already set
// for the idle wait is moved only when it is more than idle/8 behind:
// a connection with no request for idle is closed after between 7/8 of
// idle and idle (the upstream side's idleConn does the same).
func (hc *h1Conn) idleDeadline(now time.Time, idle time.Duration) {
	want := now.Add(idle)
	if hc.idleSet && !hc.readDeadline.After(want) && hc.readDeadline.Add(idle/8).After(want) {
		return
	}
	hc.setReadDeadline(want)
	hc.idleSet = true
}

// answer serves one request; false when the handler gave up (panicked).
func (hc *h1Conn) answer(w *h1Response) bool {
	hc.beginRequest()
	defer hc.endRequest()
	return hc.run(w)
}

// run answers w's request with serveHTTP, or the raw path's tail with
// serveTail; false when the handler gave up (panicked).
func (hc *h1Conn) run(w *h1Response) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				hc.l.p.log.Error("panic serving", "remote_ip", hostOnly(hc.remote), "panic", v, "stack", string(buf))
			}
			_ = hc.bw.Flush() // what net/http flushes before it closes
			ok = false
		}
	}()
	hc.chunks = chunkWriter{hc: hc, res: w}
	hc.body.Reset(&hc.chunks)
	if hc.tail != nil {
		hc.l.p.serveTail(w, w.req, hc.tail, hc.tailStart)
	} else {
		hc.l.p.serveHTTP(w, w.req)
	}
	w.finish()
	return true
}

// handOver gives the connection, from the request just read on, to the
// http.Server; false when it no longer accepts.
func (hc *h1Conn) handOver() bool {
	_ = hc.rw.SetReadDeadline(time.Time{})
	var c net.Conn = &replayConn{Conn: hc.rw, replay: hc.rec}
	if hc.tlsState != nil {
		c = &replayTLSConn{replayConn: c.(*replayConn), state: *hc.tlsState}
	}
	return hc.give(c)
}

// give hands c to the http.Server; false when it no longer accepts.
func (hc *h1Conn) give(c net.Conn) bool {
	select {
	case hc.l.handoff <- c:
		return true
	case <-hc.l.done:
		return false
	}
}

// handshake runs the TLS handshake as net/http's server does (bounded
// by readHeaderTimeout; a plain HTTP request gets net/http's 400).
func (hc *h1Conn) handshake() (*tls.Conn, bool) {
	tc := tls.Server(hc.rw, hc.l.tls)
	dl := time.Now().Add(readHeaderTimeout)
	_ = hc.c.SetReadDeadline(dl)
	_ = hc.c.SetWriteDeadline(dl)
	if err := tc.HandshakeContext(hc.ctx); err != nil {
		var re tls.RecordHeaderError
		if errors.As(err, &re) && re.Conn != nil && recordLooksLikeHTTP(re.RecordHeader) {
			_, _ = io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
		}
		hc.l.p.log.Debug("tls handshake", "remote_ip", hostOnly(hc.remote), "err", err)
		return nil, false
	}
	_ = hc.c.SetReadDeadline(time.Time{})
	_ = hc.c.SetWriteDeadline(time.Time{})
	st := tc.ConnectionState()
	hc.tlsState, hc.rw = &st, tc
	return tc, true
}

func recordLooksLikeHTTP(h [5]byte) bool {
	switch string(h[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// replayConn is a client connection handed to http.Server: it reads the
// bytes the loop already took before the rest.
type replayConn struct {
	net.Conn
	replay []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.replay) > 0 {
		n := copy(b, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// replayTLSConn is a replayConn over TLS: http.Server takes the
// connection's TLS state from ConnectionState (Request.TLS).
type replayTLSConn struct {
	*replayConn
	state tls.ConnectionState
}

func (c *replayTLSConn) ConnectionState() tls.ConnectionState { return c.state }

// headerBuffered reports whether a whole request header is in br.
func headerBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, []byte("\r\n\r\n"))
}

// commonReadError is an error net/http's server answers with silence: the
// client went away or timed out.
func commonReadError(err error) bool {
	if err == io.EOF {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "read"
}

// loopable reports whether the loop answers r itself: what forward takes
// (forwardable: among others a valid Host), over HTTP/1.x, with valid
// header fields (what net/http's server checks before it calls a
// handler; http.ReadRequest already refused a second Host).
func loopable(r *http.Request) bool {
	if r.ProtoMajor != 1 || !forwardable(r) {
		return false
	}
	for k, vv := range r.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// hasToken reports whether v holds token as a whole word (separated by
// spaces, tabs or commas), ignoring case: net/http's test for
// "Connection: close" and "keep-alive".
func hasToken(v, token string) bool {
	if len(token) > len(v) || token == "" {
		return false
	}
	if v == token {
		return true
	}
	boundary := func(c byte) bool { return c == ' ' || c == ',' || c == '\t' }
	for i := 0; i+len(token) <= len(v); i++ {
		if !equalFoldASCII(v[i:i+len(token)], token) {
			continue
		}
		if i > 0 && !boundary(v[i-1]) {
			continue
		}
		if end := i + len(token); end < len(v) && !boundary(v[end]) {
			continue
		}
		return true
	}
	return false
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
