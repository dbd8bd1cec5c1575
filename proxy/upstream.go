package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// upstream is the reverse proxy's transport to VMs. A request without a
// body (GET, HEAD, most of what browsers send) is written and its response
// read on the calling goroutine over a pooled keep-alive connection, so a
// proxied request costs no goroutine hand-offs beyond the server's own;
// http.Transport, which the rest (bodies, upgrades) still takes, runs a
// reader and a writer goroutine per connection and hands every request and
// response between three goroutines, each hand-off a thread wake-up. On a
// small shared host those wake-ups were most of the proxy's CPU.
//
// The wire format is net/http's own (Request.Write, ReadResponse); what
// http.Transport does around it and matters here is kept: response
// headers bounded in time (headerTimeout) and size (maxHeaderBytes),
// informational (1xx) responses passed to the client trace, a request
// cancelled when its context ends, a connection reused only after its
// response was read to the end and neither side asked to close, an idle
// connection that the VM closed or wrote to unasked never reused, and an
// idempotent request retried once on a new connection when a reused one
// fails before any answer. Safe for concurrent use.
type upstream struct {
	dial          func(ctx context.Context, network, addr string) (net.Conn, error)
	fallback      http.RoundTripper
	headerTimeout time.Duration
	idleTimeout   time.Duration // pooled connections unused this long are closed
	maxIdle       int           // pooled connections in all
	maxIdlePer    int           // pooled connections per upstream address
	now           func() time.Time
	sentPart      func() // tests: called when a request was sent in parts

	mu        sync.Mutex
	idle      map[string][]*upConn // by address; the most recently used last
	nIdle     int
	nextSweep time.Time
}

// maxHeaderBytes bounds a VM's response headers (1xx ones included), so a
// VM cannot make the proxy buffer without end.
const maxHeaderBytes = 1 << 20

// maxKeptRequest is the largest request buffer a pooled connection keeps.
const maxKeptRequest = 64 << 10

// upConn is one keep-alive connection to a VM.
type upConn struct {
	u     *upstream
	addr  string
	conn  net.Conn        // what the dialer returned (an idleConn)
	raw   syscall.RawConn // for the liveness check of an idle connection; may be nil
	br    *bufio.Reader
	ic    *idleConn    // conn as an idleConn, to extend its deadline; may be nil
	out   bytes.Buffer // the request, until the first Read sends it
	limit int64        // bytes the header reader may still take; <0: no limit
	since time.Time
	timer *time.Timer // the response header timeout; closes conn
	// state: 0 idle or in use, 1 the header timer fired, 2 cancelled.
	state atomic.Int32
	// The callbacks of raw.Read and their state, made once per connection.
	send      sendState
	sendStep  func(fd uintptr) bool
	open      bool
	quietStep func(fd uintptr) bool
}

func newUpstream(dial func(ctx context.Context, network, addr string) (net.Conn, error), fallback http.RoundTripper, headerTimeout time.Duration) *upstream {
	return &upstream{dial: dial, fallback: fallback, headerTimeout: headerTimeout, idleTimeout: 90 * time.Second,
		maxIdle: 4096, maxIdlePer: 128, now: time.Now, idle: make(map[string][]*upConn)}
}

// Read feeds the bufio.Reader, enforcing the header limit.
func (pc *upConn) Read(b []byte) (int, error) {
	if pc.limit == 0 {
		return 0, errHeaderTooLarge
	}
	if pc.limit > 0 && int64(len(b)) > pc.limit {
		b = b[:pc.limit]
	}
	var n int
	var err error
	if pc.out.Len() > 0 {
		n, err = pc.sendAndRead(b)
	} else {
		n, err = pc.conn.Read(b)
	}
	if pc.limit > 0 {
		pc.limit -= int64(n)
	}
	return n, err
}

// sendAndRead writes the request in pc.out and reads the start of the
// answer into b in one turn of the poller: the write, then a wait for the
// socket to become readable, then the read. A plain write and read would
// first try the read, which cannot succeed that soon, and pay a system
// call for the EAGAIN on every request. The wait cannot miss the answer:
// it is armed before the request leaves. When the socket takes only part
// of the request, the rest goes the ordinary way (the header timeout then
// runs from the start of the send: a VM that does not read its request
// gets a 504 no later than one that does not answer).
func (pc *upConn) sendAndRead(b []byte) (int, error) {
	st := &pc.send
	*st = sendState{out: pc.out.Bytes(), b: b}
	err := pc.raw.Read(pc.sendStep)
	out, n, rerr, partial := st.out, st.n, st.err, st.partial
	*st = sendState{}
	if pc.out.Cap() > maxKeptRequest {
		pc.out = bytes.Buffer{} // a rare huge request: do not pool its buffer
	} else {
		pc.out.Reset()
	}
	if pc.ic != nil {
		pc.ic.touch()
	}
	switch {
	case err != nil:
		return 0, err
	case partial:
		if pc.u.sentPart != nil {
			pc.u.sentPart()
		}
		if _, err := pc.conn.Write(out); err != nil {
			return 0, err
		}
		return pc.conn.Read(b)
	case rerr != nil:
		if n < 0 {
			n = 0
		}
		op := "write"
		if _, ok := rerr.(*os.SyscallError); !ok {
			op, rerr = "read", os.NewSyscallError("read", rerr)
		}
		return n, &net.OpError{Op: op, Net: "tcp", Addr: pc.conn.RemoteAddr(), Err: rerr}
	case n == 0 && len(b) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// sendState is what sendStep works on, kept in the connection so that a
// request allocates no closure.
type sendState struct {
	out, b        []byte
	n             int
	err           error
	sent, partial bool
}

// sendStepFn is sendAndRead's callback for RawConn.Read.
func (pc *upConn) sendStepFn(fd uintptr) bool {
	st := &pc.send
	if !st.sent {
		st.sent = true
		for len(st.out) > 0 {
			w, err := rawWrite(fd, st.out)
			switch {
			case err == syscall.EAGAIN:
				st.partial = true
				return true
			case err != 0:
				st.err = os.NewSyscallError("write", err)
				return true
			}
			st.out = st.out[w:]
		}
		return false // wait until the answer can be read
	}
	n, err := rawRead(fd, st.b)
	st.n = n
	if err != 0 {
		st.err = err
	}
	return err != syscall.EAGAIN
}

// quietStepFn is quiet's callback for RawConn.Read: a peek that does not
// block.
func (pc *upConn) quietStepFn(fd uintptr) bool {
	var b [1]byte
	// recvfrom(fd, b, 1, MSG_PEEK|MSG_DONTWAIT, nil, nil), raw (see rawRead).
	_, _, err := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	pc.open = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
	return true
}

var errHeaderTooLarge = errors.New("upstream response headers exceed 1 MiB")

// timeoutError is a net.Error that says it is a timeout, so the proxy
// answers 504.
type timeoutError struct{}

func (timeoutError) Error() string   { return "timeout awaiting upstream response headers" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

var _ net.Error = timeoutError{}

// RoundTrip implements http.RoundTripper.
func (u *upstream) RoundTrip(req *http.Request) (*http.Response, error) {
	if !inline(req) {
		return u.fallback.RoundTrip(req)
	}
	return u.do(req.Context(), req.URL.Host, outReq{req: req, close: req.Close})
}

// outReq is a request without a body as do sends it: req itself
// (Request.Write; informational answers go to its client trace), or, with
// to set, the incoming request req as forward sends it (writeRequest;
// informational answers go to the client through to).
type outReq struct {
	req   *http.Request
	to    *statusWriter
	close bool // the request asked to close the connection
}

func (o outReq) write(b *bytes.Buffer) error {
	if o.to != nil {
		writeRequest(b, o.req)
		return nil
	}
	return o.req.Write(b)
}

func (o outReq) got1xx(code int, h textproto.MIMEHeader) error {
	if o.to != nil {
		wh := o.to.Header()
		for k, vv := range h {
			wh[k] = vv
		}
		o.to.WriteHeader(code)
		clear(wh) // WriteHeader keeps them for 1xx answers
		return nil
	}
	if trace := httptrace.ContextClientTrace(o.req.Context()); trace != nil && trace.Got1xxResponse != nil {
		return trace.Got1xxResponse(code, h)
	}
	return nil
}

// do sends a request without a body to addr over a pooled connection and
// reads the response headers.
func (u *upstream) do(ctx context.Context, addr string, out outReq) (*http.Response, error) {
	pc, reused, err := u.get(ctx, addr)
	if err != nil {
		return nil, err
	}
	resp, err := u.exchange(ctx, pc, out)
	if err != nil && reused && errors.Is(err, errNoAnswer) && idempotent(out.req.Method) && ctx.Err() == nil {
		// The VM closed the connection while we reused it: what
		// http.Transport does too, once, on a new connection.
		if pc, err = u.dialConn(ctx, addr); err != nil {
			return nil, err
		}
		resp, err = u.exchange(ctx, pc, out)
	}
	if err != nil {
		return nil, errors.Unwrap(err) // errNoAnswer wraps the cause
	}
	return resp, nil
}

// inline reports whether req may take the goroutine-free path: plain
// HTTP, no body, no protocol upgrade.
func inline(req *http.Request) bool {
	return req.URL.Scheme == "http" && (req.Body == nil || req.Body == http.NoBody) &&
		req.ContentLength == 0 && len(req.TransferEncoding) == 0 && req.Header.Get("Upgrade") == "" &&
		req.Header.Get("Expect") == ""
}

func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// errNoAnswer wraps an error that came before any byte of a response.
var errNoAnswer = errors.New("no answer")

type noAnswer struct{ err error }

func (e noAnswer) Error() string        { return e.err.Error() }
func (e noAnswer) Unwrap() error        { return e.err }
func (e noAnswer) Is(target error) bool { return target == errNoAnswer }

// wrapped returns err wrapped so that RoundTrip can unwrap it (once).
func wrapped(err error) error { return fmt.Errorf("%w", err) }

// exchange writes req on pc and reads the response headers. On error pc
// is closed. Errors are wrapped once (noAnswer when nothing was read).
func (u *upstream) exchange(ctx context.Context, pc *upConn, out outReq) (*http.Response, error) {
	w := u.watch(ctx, pc)
	pc.out.Reset()
	if err := out.write(&pc.out); err != nil {
		return nil, u.failed(ctx, pc, w, err, false)
	}
	if err := u.send(ctx, pc, w); err != nil {
		return nil, err
	}
	return u.readResponse(ctx, pc, out, w)
}

// watch starts an exchange on pc: pc is closed when ctx ends.
func (u *upstream) watch(ctx context.Context, pc *upConn) upWatch {
	pc.state.Store(0)
	w := upWatch{pc: pc}
	if hc, _ := ctx.Value(connAbortKey{}).(*h1Conn); hc != nil && hc.ctx == ctx {
		// The loop's request: its connection closes pc when the request
		// ends, without a context.AfterFunc (two allocations and a
		// registration in the context per request).
		w.hc = hc
		hc.watchUp(pc)
	} else {
		w.stopF = context.AfterFunc(ctx, pc.abort)
	}
	return w
}

// failed ends an exchange on pc that failed with err, closing pc, and
// returns the error to report: the context's when it ended, a timeout
// when the header timer fired, wrapped once (noAnswer when nothing was
// read).
func (u *upstream) failed(ctx context.Context, pc *upConn, w upWatch, err error, answered bool) error {
	w.stop()
	pc.conn.Close()
	switch {
	case pc.state.Load() == 2 || ctx.Err() != nil:
		err = ctx.Err()
		if err == nil {
			err = context.Canceled
		}
	case pc.state.Load() == 1:
		err = timeoutError{}
	}
	if !answered {
		return noAnswer{err}
	}
	return wrapped(err)
}

// send sends the request in pc.out and waits for the first byte of the
// answer, with the header timer running (readResponse stops it).
func (u *upstream) send(ctx context.Context, pc *upConn, w upWatch) error {
	if pc.raw == nil {
		if _, err := pc.conn.Write(pc.out.Bytes()); err != nil {
			return u.failed(ctx, pc, w, err, false)
		}
		pc.out.Reset()
	}
	if u.headerTimeout > 0 {
		pc.timer.Reset(u.headerTimeout)
	}
	pc.limit = maxHeaderBytes
	if _, err := pc.br.Peek(1); err != nil {
		pc.timer.Stop()
		return u.failed(ctx, pc, w, err, false)
	}
	return nil
}

// readResponse reads the response headers of the request send sent
// (informational answers go to out) and stops the header timer.
func (u *upstream) readResponse(ctx context.Context, pc *upConn, out outReq, w upWatch) (*http.Response, error) {
	fail := func(err error) (*http.Response, error) {
		pc.timer.Stop()
		return nil, u.failed(ctx, pc, w, err, true)
	}
	var resp *http.Response
	var err error
	for n := 0; ; n++ {
		resp, err = http.ReadResponse(pc.br, out.req)
		if err != nil {
			return fail(err)
		}
		if resp.StatusCode < 100 || resp.StatusCode > 199 {
			break
		}
		if resp.StatusCode == http.StatusSwitchingProtocols || n >= 5 {
			return fail(fmt.Errorf("unexpected %s from upstream", resp.Status))
		}
		if err := out.got1xx(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
			return fail(err)
		}
	}
	if !pc.timer.Stop() && u.headerTimeout > 0 {
		return nil, u.failed(ctx, pc, w, timeoutError{}, true)
	}
	pc.limit = -1
	keep := !resp.Close && !out.close
	resp.Body = &upBody{rc: resp.Body, pc: pc, w: w, keep: keep}
	return resp, nil
}

// abort closes pc for a request that ended while pc was in use (the
// client went away, or the proxy shuts down).
func (pc *upConn) abort() {
	if pc.state.CompareAndSwap(0, 2) {
		pc.conn.Close()
	}
}

// upWatch ends an exchange on pc when its request's context ends: through
// the loop's client connection (hc), or a context.AfterFunc.
type upWatch struct {
	pc    *upConn
	hc    *h1Conn
	stopF func() bool
}

// stop stops the watch, as the AfterFunc's stop: false when the request
// already ended (pc is then closed, or being closed).
func (w upWatch) stop() bool {
	if w.hc != nil {
		return w.hc.unwatchUp(w.pc)
	}
	return w.stopF()
}

// upBody returns its connection to the pool when the response was read to
// the end, and closes it when the reader gives up early.
type upBody struct {
	rc   io.ReadCloser
	pc   *upConn
	w    upWatch
	keep bool
	done bool
}

func (b *upBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
		if b.pc.state.Load() == 2 {
			err = context.Canceled
		}
	}
	return n, err
}

func (b *upBody) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

func (b *upBody) finish(eof bool) {
	b.done = true
	if eof && b.w.stop() && b.keep {
		b.pc.u.put(b.pc)
		return
	}
	b.w.stop()
	b.pc.conn.Close()
}

// get returns an idle connection to addr that is still open and has
// nothing unread, or a new one.
func (u *upstream) get(ctx context.Context, addr string) (*upConn, bool, error) {
	now := u.now()
	for {
		u.mu.Lock()
		l := u.idle[addr]
		if len(l) == 0 {
			u.mu.Unlock()
			break
		}
		pc := l[len(l)-1]
		l[len(l)-1] = nil
		// An emptied list stays, so that put reuses its array (put's
		// sweep removes empty lists).
		u.idle[addr] = l[:len(l)-1]
		u.nIdle--
		u.mu.Unlock()
		if now.Sub(pc.since) < u.idleTimeout && pc.quiet() {
			return pc, true, nil
		}
		pc.conn.Close()
	}
	pc, err := u.dialConn(ctx, addr)
	return pc, false, err
}

func (u *upstream) dialConn(ctx context.Context, addr string) (*upConn, error) {
	c, err := u.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return u.newConn(addr, c), nil
}

func (u *upstream) newConn(addr string, c net.Conn) *upConn {
	pc := &upConn{u: u, addr: addr, conn: c}
	if sc, ok := rawOf(c).(syscall.Conn); ok {
		pc.raw, _ = sc.SyscallConn()
	}
	pc.ic, _ = c.(*idleConn)
	if tc, ok := rawOf(c).(*net.TCPConn); ok && pc.ic != nil {
		// The rest of a body is read with raw system calls too.
		if s := newSysConn(tc, tc); s != nil {
			pc.ic.Conn = s
		}
	}
	pc.sendStep, pc.quietStep = pc.sendStepFn, pc.quietStepFn
	pc.br = bufio.NewReaderSize(pc, 4<<10)
	pc.timer = time.AfterFunc(time.Hour, func() {
		if pc.state.CompareAndSwap(0, 1) {
			pc.conn.Close()
		}
	})
	pc.timer.Stop()
	return pc
}

func rawOf(c net.Conn) net.Conn {
	if ic, ok := c.(*idleConn); ok {
		return ic.Conn
	}
	return c
}

// quiet reports whether an idle connection is still open and the VM sent
// nothing on it since its last response (a peek that does not block).
// Without access to the socket it trusts the connection.
func (pc *upConn) quiet() bool {
	if pc.br.Buffered() > 0 {
		return false
	}
	if pc.raw == nil {
		return true
	}
	pc.open = false
	err := pc.raw.Read(pc.quietStep)
	return err == nil && pc.open
}

// put pools pc for reuse, or closes it when the pool is full.
func (u *upstream) put(pc *upConn) {
	now := u.now()
	pc.since = now
	var stale []*upConn
	u.mu.Lock()
	if now.After(u.nextSweep) {
		for addr, l := range u.idle {
			keep := l[:0]
			for _, c := range l {
				if now.Sub(c.since) >= u.idleTimeout {
					stale = append(stale, c)
					u.nIdle--
				} else {
					keep = append(keep, c)
				}
			}
			if len(keep) == 0 {
				delete(u.idle, addr)
			} else {
				clear(l[len(keep):])
				u.idle[addr] = keep
			}
		}
		u.nextSweep = now.Add(u.idleTimeout / 2)
	}
	pooled := false
	if u.idle != nil && u.nIdle < u.maxIdle && len(u.idle[pc.addr]) < u.maxIdlePer {
		u.idle[pc.addr] = append(u.idle[pc.addr], pc)
		u.nIdle++
		pooled = true
	}
	u.mu.Unlock()
	if !pooled {
		stale = append(stale, pc)
	}
	for _, c := range stale {
		c.conn.Close()
	}
}

// CloseIdleConnections closes the pooled connections (and the fallback's).
func (u *upstream) CloseIdleConnections() {
	u.mu.Lock()
	idle := u.idle
	u.idle, u.nIdle = make(map[string][]*upConn), 0
	u.mu.Unlock()
	for _, l := range idle {
		for _, pc := range l {
			pc.conn.Close()
		}
	}
	if ci, ok := u.fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}
