package proxy

import (
	"bufio"
	"bytes"
	"context"
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
	handoff      chan net.Conn
	errc         chan error
	done         chan struct{}
	closeOnce    sync.Once

	mu      sync.Mutex
	conns   map[*h1Conn]bool // served by the loop; true while a request is in flight
	closing bool
	wg      sync.WaitGroup
}

func newH1Listener(ln net.Listener, p *Proxy) *h1Listener {
	l := &h1Listener{Listener: ln, p: p, handoff: make(chan net.Conn), errc: make(chan error, 1),
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
	l.Close()
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
	l      *h1Listener
	c      net.Conn
	ctx    context.Context
	remote string
	br     *bufio.Reader // reads through rec
	bw     *bufio.Writer // net/http's conn.bufw (4 KiB), through werr
	body   *bufio.Writer // net/http's response.w (2 KiB), over chunks
	chunks chunkWriter
	werr   error // the first write error on c

	// The bytes of the request being read, kept to hand it over.
	recording bool
	rec       []byte
}

func newH1Conn(l *h1Listener, c net.Conn) *h1Conn {
	hc := &h1Conn{l: l, c: c, remote: c.RemoteAddr().String()}
	ctx := context.WithValue(context.Background(), http.LocalAddrContextKey, c.LocalAddr())
	hc.ctx = connContext(ctx, c)
	hc.br = bufio.NewReaderSize(recReader{hc}, 4<<10)
	hc.bw = bufio.NewWriterSize(errWriter{hc}, 4<<10)
	hc.chunks.hc = hc
	hc.body = bufio.NewWriterSize(&hc.chunks, 2<<10)
	return hc
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
	n, err := hc.c.Read(b)
	if hc.recording && n > 0 {
		hc.rec = append(hc.rec, b[:n]...)
	}
	return n, err
}

// errWriter notes the first error writing to the client.
type errWriter struct{ hc *h1Conn }

func (w errWriter) Write(b []byte) (int, error) {
	n, err := w.hc.c.Write(b)
	if err != nil && w.hc.werr == nil {
		w.hc.werr = err
	}
	return n, err
}

func (hc *h1Conn) serve() {
	handedOver := false
	defer func() {
		if !handedOver {
			hc.c.Close()
		}
		hc.l.untrack(hc)
	}()
	idle := hc.l.p.cfg.IdleTimeout
	first := true
	for {
		now := time.Now()
		switch {
		case first:
			_ = hc.c.SetReadDeadline(now.Add(readHeaderTimeout))
		case idle > 0:
			_ = hc.c.SetReadDeadline(now.Add(idle))
		default:
			_ = hc.c.SetReadDeadline(time.Time{})
		}
		if _, err := hc.br.Peek(1); err != nil {
			return
		}
		if !first && !headerBuffered(hc.br) {
			_ = hc.c.SetReadDeadline(time.Now().Add(readHeaderTimeout))
		}
		first = false
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
		r = r.WithContext(hc.ctx)
		if !hc.l.setActive(hc, true) {
			return
		}
		w := &h1Response{hc: hc, req: r, handlerHeader: make(http.Header), contentLength: -1,
			wants10KeepAlive: r.ProtoMinor == 0 && hasToken(r.Header.Get("Connection"), "keep-alive"),
			wantsClose:       r.Close || hasToken(r.Header.Get("Connection"), "close")}
		if !hc.answer(w) {
			return
		}
		if !hc.l.setActive(hc, false) || !w.shouldReuseConnection() {
			return
		}
	}
}

// answer serves one request; false when the handler gave up (panicked).
func (hc *h1Conn) answer(w *h1Response) (ok bool) {
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
	hc.l.p.serveHTTP(w, w.req)
	w.finish()
	return true
}

// handOver gives the connection, from the request just read on, to the
// http.Server; false when it no longer accepts.
func (hc *h1Conn) handOver() bool {
	_ = hc.c.SetReadDeadline(time.Time{})
	c := &replayConn{Conn: hc.c, replay: hc.rec}
	select {
	case hc.l.handoff <- c:
		return true
	case <-hc.l.done:
		return false
	}
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
