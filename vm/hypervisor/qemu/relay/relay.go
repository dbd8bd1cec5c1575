package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/minionsdev/minions/guestagent/link"
	"github.com/minionsdev/minions/internal/errs"
)

// Config configures Run.
type Config struct {
	// SerialSocket is QEMU's virtio-serial chardev unix socket (a server).
	SerialSocket string
	// Listen is the hybrid vsock unix socket the relay creates (mode 0600).
	Listen string
	// Log receives the relay's log (default: discard); *slog.Logger is a
	// Logger.
	Log Logger
	// GoneAfter is how long the serial socket must stay refused or absent,
	// after having been connected once, before the relay decides QEMU has
	// exited and returns (default 2 s).
	GoneAfter time.Duration
	// SessionWait bounds how long a CONNECT waits for the guest link to
	// be up (default 10 s).
	SessionWait time.Duration
	// KeepAlive is the link keepalive interval (default 2 s): a guest that
	// does not answer within twice this is treated as gone (rebooted).
	KeepAlive time.Duration
	// Idle, if set, is called when the relay has nothing in flight: each
	// time the guest link comes up and each time the last open client
	// connection closes. It runs on the relay's goroutine and must not
	// block; cmd/minions-relay uses it to hand freed memory back to the
	// OS.
	Idle func()
}

// Logger is where the relay logs: messages with key-value pairs, as
// log/slog takes them. The relay does not import log/slog (each VM's relay
// process would link it); cmd/minions-relay writes a small text log.
type Logger interface {
	Debug(msg string, args ...any)
	Info(msg string, args ...any)
	Warn(msg string, args ...any)
}

type discardLog struct{}

func (discardLog) Debug(string, ...any) {}
func (discardLog) Info(string, ...any)  {}
func (discardLog) Warn(string, ...any)  {}

// Validate reports whether c is usable.
func (c *Config) Validate() error {
	if c.SerialSocket == "" || c.Listen == "" {
		return errs.New(errs.InvalidArgument, "relay config: serial socket and listen path are required")
	}
	if len(c.Listen) > 107 || len(c.SerialSocket) > 107 {
		return errs.New(errs.InvalidArgument, "relay config: socket path longer than 107 bytes")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Log == nil {
		c.Log = discardLog{}
	}
	if c.GoneAfter == 0 {
		c.GoneAfter = 2 * time.Second
	}
	if c.SessionWait == 0 {
		c.SessionWait = 10 * time.Second
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = 2 * time.Second
	}
	return c
}

type relay struct {
	cfg Config
	log Logger

	mu      sync.Mutex
	sess    *yamux.Session
	changed chan struct{} // closed and replaced whenever sess changes
	kick    chan struct{} // a client waits for a link that is not up (link.DialConfig.Kick)
	nextID  atomic.Uint32
	active  atomic.Int32 // open client connections
}

func (r *relay) idle() {
	if r.cfg.Idle != nil {
		r.cfg.Idle()
	}
}

// Run runs the agent relay of one QEMU VM until ctx ends (it returns
// nil) or QEMU is gone (the serial socket refuses or vanishes for GoneAfter
// after having been connected; it returns nil too). It removes the Listen
// socket when it returns. Guest reboots and relay restarts are handled by
// redoing the link handshake.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	r := &relay{cfg: cfg, log: cfg.Log, changed: make(chan struct{}), kick: make(chan struct{}, 1)}

	os.Remove(cfg.Listen)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Listen, Net: "unix"})
	if err != nil {
		return errs.New(errs.Unavailable, "relay: listen %s: %w", cfg.Listen, err)
	}
	defer os.Remove(cfg.Listen)
	if err := os.Chmod(cfg.Listen, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("relay: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.acceptLoop(ctx, l)
	}()
	err = r.linkLoop(ctx)
	cancel()
	l.Close()
	wg.Wait()
	return err
}

func (r *relay) setSession(s *yamux.Session) {
	r.mu.Lock()
	r.sess = s
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// session waits up to SessionWait for a live link session. While there
// is none it kicks the link's handshake: a guest just restored (a fork,
// whose relay started before the restore) answers the next HELLO at once,
// and the backoff must not keep the client waiting for it.
func (r *relay) session(ctx context.Context) (*yamux.Session, error) {
	t := time.NewTimer(r.cfg.SessionWait)
	defer t.Stop()
	kicked := false
	for {
		r.mu.Lock()
		s, changed := r.sess, r.changed
		r.mu.Unlock()
		if s != nil && !s.IsClosed() {
			return s, nil
		}
		if !kicked {
			kicked = true
			select {
			case r.kick <- struct{}{}:
			default: // a kick is pending already
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, errors.New("guest link not up")
		}
	}
}

func (r *relay) linkLoop(ctx context.Context) error {
	connected := false
	var goneSince time.Time
	for ctx.Err() == nil {
		// DialUnix, Dialer.DialUnix and ListenUnix, not Dial and Listen,
		// whose address resolution links the DNS resolver: about 280 KB
		// of the binary, whose pages each relay maps (TestNoResolver).
		var d net.Dialer
		conn, err := d.DialUnix(ctx, "unix", nil, &net.UnixAddr{Name: r.cfg.SerialSocket, Net: "unix"})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if connected && (errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)) {
				if goneSince.IsZero() {
					goneSince = time.Now()
				} else if time.Since(goneSince) >= r.cfg.GoneAfter {
					r.log.Info("serial socket gone: hypervisor exited", "socket", r.cfg.SerialSocket)
					return nil
				}
			}
			sleepCtx(ctx, 20*time.Millisecond)
			continue
		}
		connected, goneSince = true, time.Time{}
		start := time.Now()
		sess, err := link.Dial(ctx, conn, link.DialConfig{KeepAlive: r.cfg.KeepAlive, Kick: r.kick})
		if err != nil {
			if ctx.Err() == nil {
				r.log.Debug("link handshake", "err", err)
				sleepCtx(ctx, 20*time.Millisecond)
			}
			continue
		}
		r.log.Info("guest link up", "handshake_ms", time.Since(start).Milliseconds())
		r.setSession(sess)
		r.idle()
		select {
		case <-sess.CloseChan():
			r.log.Info("guest link down")
		case <-ctx.Done():
		}
		sess.Close()
		r.setSession(nil)
	}
	return nil
}

func (r *relay) acceptLoop(ctx context.Context, l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				r.log.Warn("accept", "err", err)
			}
			return
		}
		go r.serveClient(ctx, c)
	}
}

// serveClient answers one hybrid vsock CONNECT with a new link stream.
func (r *relay) serveClient(ctx context.Context, c net.Conn) {
	r.active.Add(1)
	defer func() {
		c.Close()
		if r.active.Add(-1) == 0 {
			r.idle()
		}
	}()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReaderSize(c, 64)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	port, ok := strings.CutPrefix(strings.TrimSpace(line), "CONNECT ")
	if _, err := strconv.ParseUint(port, 10, 32); !ok || err != nil {
		r.log.Warn("bad hybrid vsock request", "line", strings.TrimSpace(line))
		return
	}
	var st net.Conn
	for attempt := 0; ; attempt++ {
		sess, err := r.session(ctx)
		if err != nil {
			r.log.Debug("connect: no guest link", "err", err)
			return
		}
		if st, err = sess.Open(); err == nil {
			break
		}
		if attempt == 2 {
			r.log.Debug("connect: open stream", "err", err)
			return
		}
	}
	defer st.Close()
	if _, err := fmt.Fprintf(c, "OK %d\n", r.nextID.Add(1)); err != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { c.Close(); st.Close() })
	defer stop()
	done := make(chan struct{})
	// br may hold bytes the client sent right after CONNECT; after them,
	// read the connection directly: br's tiny buffer would cut the stream
	// into 64-byte link frames.
	buffered, _ := br.Peek(br.Buffered())
	in := io.MultiReader(bytes.NewReader(append([]byte(nil), buffered...)), c)
	go func() {
		copyBuf(st, in)
		st.Close() // a yamux Close is a half-close: reads go on
		close(done)
	}()
	copyBuf(c, st)
	if uc, ok := c.(*net.UnixConn); ok {
		uc.CloseWrite()
	}
	<-done
}

// copyBufSize is the relay's copy buffer per direction of a connection:
// big enough for full-speed bulk transfers, small enough that an idle host
// of many relays holds little (they are kept for reuse until
// ReleaseBuffers).
const copyBufSize = 32 << 10

// maxFreeBufs bounds the copy buffers kept for reuse (two per open
// connection).
const maxFreeBufs = 8

// bufs holds the copy buffers of closed connections for the next ones. It
// is not a sync.Pool: a pool's buffers survive one GC (in its victim
// cache), so an idle relay would need two GCs to let them go, and each GC
// of the runtime leaves its own metadata resident (measured: a second GC
// cost an idle relay about 150 KiB more than one).
var bufs struct {
	mu   sync.Mutex
	free []*[copyBufSize]byte
}

func getBuf() *[copyBufSize]byte {
	bufs.mu.Lock()
	defer bufs.mu.Unlock()
	if n := len(bufs.free); n > 0 {
		b := bufs.free[n-1]
		bufs.free[n-1] = nil
		bufs.free = bufs.free[:n-1]
		return b
	}
	return new([copyBufSize]byte)
}

func putBuf(b *[copyBufSize]byte) {
	bufs.mu.Lock()
	defer bufs.mu.Unlock()
	if len(bufs.free) < maxFreeBufs {
		bufs.free = append(bufs.free, b)
	}
}

// ReleaseBuffers drops the copy buffers kept for reuse, so that the next
// GC frees them; buffers in use are not affected. An idle relay process
// calls it before it returns its free memory to the OS. Safe for
// concurrent use.
func ReleaseBuffers() {
	bufs.mu.Lock()
	defer bufs.mu.Unlock()
	bufs.free = nil
}

// freeBuffers is how many copy buffers are kept for reuse (for tests).
func freeBuffers() int {
	bufs.mu.Lock()
	defer bufs.mu.Unlock()
	return len(bufs.free)
}

// copyBuf copies src to dst through a reused buffer (io.Copy would
// allocate one per call, or take a path that bypasses it).
func copyBuf(dst io.Writer, src io.Reader) {
	b := getBuf()
	defer putBuf(b)
	io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, b[:])
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
