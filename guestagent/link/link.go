package link

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"time"

	"github.com/hashicorp/yamux"
)

// Handshake line prefixes.
const (
	helloPrefix = "MINIONS-LINK-HELLO "
	okPrefix    = "MINIONS-LINK-OK "
	// maxLine bounds a line the parser considers; longer runs of bytes
	// without a newline are discarded.
	maxLine = 128
	// NonceLen is the length of a nonce in hex digits.
	NonceLen = 16
)

// Kind is the kind of a handshake line.
type Kind int

// Handshake line kinds.
const (
	KindNone  Kind = iota // not a handshake line
	KindHello             // MINIONS-LINK-HELLO
	KindOK                // MINIONS-LINK-OK
)

// ParseLine parses one line (without its trailing newline; a trailing \r is
// tolerated) and reports whether it is a well-formed handshake line, its
// kind and its nonce. Anything else, including a line with a malformed
// nonce, is KindNone.
func ParseLine(line []byte) (Kind, string) {
	line = bytes.TrimSuffix(line, []byte("\r"))
	var kind Kind
	var rest []byte
	switch {
	case bytes.HasPrefix(line, []byte(helloPrefix)):
		kind, rest = KindHello, line[len(helloPrefix):]
	case bytes.HasPrefix(line, []byte(okPrefix)):
		kind, rest = KindOK, line[len(okPrefix):]
	default:
		return KindNone, ""
	}
	if !validNonce(rest) {
		return KindNone, ""
	}
	return kind, string(rest)
}

func validNonce(b []byte) bool {
	if len(b) != NonceLen {
		return false
	}
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// NewNonce returns a fresh random nonce. A nonce only tells the host's
// HELLOs of this attempt from others (it is no secret), so it comes from
// math/rand/v2, whose generator the runtime seeds from the kernel: the
// host side of the link (each VM's relay process) links no crypto.
func NewNonce() string {
	const digits = "0123456789abcdef"
	var b [NonceLen]byte
	for i, x := 0, rand.Uint64(); i < NonceLen; i, x = i+1, x>>4 {
		b[i] = digits[x&15]
	}
	return string(b[:])
}

// Logger is what Serve logs to; *slog.Logger is one. The link package
// does not import log/slog, so that the relay links none of it.
type Logger interface {
	Debug(msg string, args ...any)
	Warn(msg string, args ...any)
}

type discardLog struct{}

func (discardLog) Debug(string, ...any) {}
func (discardLog) Warn(string, ...any)  {}

// lineReader reads lines of at most maxLine bytes from a buffered reader,
// discarding overlong ones.
type lineReader struct {
	br *bufio.Reader
}

// next returns the next line without its newline. Overlong lines are
// returned empty (they are never handshake lines).
func (l *lineReader) next() ([]byte, error) {
	var line []byte
	overlong := false
	for {
		frag, err := l.br.ReadSlice('\n')
		if !overlong {
			if len(line)+len(frag) > maxLine+1 {
				overlong, line = true, nil
			} else {
				line = append(line, frag...)
			}
		}
		switch {
		case err == nil:
			return bytes.TrimSuffix(line, []byte("\n")), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, err
		}
	}
}

// helloFilter answers further HELLO lines that precede the first session
// byte. The host sends a new HELLO when an answer is slow, and while the
// guest's port is closed (booting) the hypervisor holds them back, so the
// guest may find several queued; the host reads the OKs of all those it
// sent after the first one answered (Handshake). Session data cannot be
// mistaken for them: a yamux frame starts with its version byte, 0, and
// the host sends none before the last OK it is owed.
type helloFilter struct {
	lr     lineReader
	w      io.Writer
	passed bool
}

func (f *helloFilter) Read(p []byte) (int, error) {
	for !f.passed {
		b, err := f.lr.br.Peek(1)
		if err != nil {
			return 0, err
		}
		if b[0] != 'M' {
			f.passed = true
			break
		}
		line, err := f.lr.next()
		if err != nil {
			return 0, err
		}
		if kind, nonce := ParseLine(line); kind == KindHello {
			if _, err := io.WriteString(f.w, okPrefix+nonce+"\n"); err != nil {
				return 0, err
			}
		}
	}
	return f.lr.br.Read(p)
}

// bufferedConn reads through the bufio.Reader used by the handshake, so no
// byte the peer sent after its handshake line is lost.
type bufferedConn struct {
	r io.Reader
	io.ReadWriteCloser
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// closeOnDone closes c when ctx ends before the returned stop is called, so
// a blocked read returns.
func closeOnDone(ctx context.Context, c io.Closer) (stop func() bool) {
	return context.AfterFunc(ctx, func() { c.Close() })
}

// Accept runs the guest side of the handshake on rwc: it discards input up
// to a HELLO line, answers it with OK and returns the nonce and a stream
// positioned just after the HELLO line. It returns an error when rwc fails
// (io.EOF when the host went away) or ctx ends (rwc is then closed).
func Accept(ctx context.Context, rwc io.ReadWriteCloser) (io.ReadWriteCloser, string, error) {
	defer closeOnDone(ctx, rwc)()
	br := bufio.NewReaderSize(rwc, 4096)
	lr := lineReader{br: br}
	for {
		line, err := lr.next()
		if err != nil {
			if ctx.Err() != nil {
				return nil, "", ctx.Err()
			}
			return nil, "", fmt.Errorf("link accept: %w", err)
		}
		kind, nonce := ParseLine(line)
		if kind != KindHello {
			continue
		}
		if _, err := io.WriteString(rwc, okPrefix+nonce+"\n"); err != nil {
			return nil, "", fmt.Errorf("link accept: write ok: %w", err)
		}
		return &bufferedConn{r: &helloFilter{lr: lr, w: rwc}, ReadWriteCloser: rwc}, nonce, nil
	}
}

// Handshake runs the host side of the handshake on rwc: it writes HELLO with
// a fresh nonce and discards input up to an OK line for one of its HELLOs.
// If none comes within retry it sends a new HELLO with a new nonce, every
// retry for the first second (a restored or forked guest drops the HELLO
// its old session read, then answers the next one at once), then doubling
// up to 1 s. The guest answers every HELLO it reads before the first
// session byte, in order: after an OK for an earlier HELLO the host sends
// no more and reads exactly the OKs of the later ones (a guest slower to
// answer than the retry no longer chases a nonce that changes under it).
// It returns a stream positioned just after the last of them. On ctx end
// rwc is closed.
func Handshake(ctx context.Context, rwc io.ReadWriteCloser, retry time.Duration) (io.ReadWriteCloser, error) {
	return handshake(ctx, rwc, retry, nil)
}

// oweWait bounds the wait for each OK owed once the guest answered an
// earlier HELLO: it writes them as it reads the HELLOs, together.
const oweWait = time.Second

// textClip is line for an error message: at most 40 bytes, quoted by %q.
func textClip(line []byte) string {
	if len(line) > 40 {
		line = line[:40]
	}
	return string(line)
}

// Kick timing: after a kick (DialConfig.Kick) a HELLO goes out at once and
// then every kickRetry for kickFor, whatever the backoff had reached; then
// the backoff starts over (every retry for a second, then doubling).
const (
	kickRetry = 10 * time.Millisecond
	kickFor   = 300 * time.Millisecond
)

// handshake is Handshake with kicks: each receive from kick sends a HELLO
// at once, retries every kickRetry for kickFor and starts the backoff over
// (nil: no kicks).
func handshake(ctx context.Context, rwc io.ReadWriteCloser, retry time.Duration, kick <-chan struct{}) (io.ReadWriteCloser, error) {
	if retry <= 0 {
		retry = 100 * time.Millisecond
	}
	base := retry
	defer closeOnDone(ctx, rwc)()
	br := bufio.NewReaderSize(rwc, 4096)
	lr := lineReader{br: br}

	type result struct {
		line []byte
		err  error
	}
	lines := make(chan result)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			line, err := lr.next()
			select {
			case lines <- result{line, err}:
			case <-done:
				return
			}
			if err != nil {
				return
			}
			kind, _ := ParseLine(line)
			if kind == KindOK {
				// Wait to hear whether it matched: the reader must
				// stop right after the OK line so no session byte is
				// consumed here.
				select {
				case <-lines:
				case <-done:
					return
				}
			}
		}
	}()

	var sent []string // this attempt's nonces, in the order sent
	send := func() error {
		nonce := NewNonce()
		sent = append(sent, nonce)
		_, err := io.WriteString(rwc, helloPrefix+nonce+"\n")
		return err
	}
	// owed: once the guest answered one HELLO, the nonces of those sent
	// after it, whose OKs come next (nil: no answer yet).
	var owed []string
	if err := send(); err != nil {
		return nil, fmt.Errorf("link handshake: write hello: %w", err)
	}
	timer := time.NewTimer(retry)
	defer timer.Stop()
	steady := time.Now().Add(time.Second)
	var fastUntil time.Time // kicked: retry every kickRetry until then
	resend := func() error {
		if err := send(); err != nil {
			if ctx.Err() != nil {
				// The end of ctx closed the connection under this
				// write: the deadline is the reason.
				return ctx.Err()
			}
			return fmt.Errorf("link handshake: write hello: %w", err)
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-kick:
			if owed != nil {
				continue // answering: no more HELLOs
			}
			if err := resend(); err != nil {
				return nil, err
			}
			// After the fast spell the backoff starts over: a guest
			// slow to reopen its port (a loaded host) must not find it
			// grown.
			fastUntil = time.Now().Add(kickFor)
			retry, steady = base, fastUntil.Add(time.Second)
			timer.Reset(kickRetry)
		case <-timer.C:
			if owed != nil {
				return nil, fmt.Errorf("link handshake: the guest answered a HELLO but not the %d sent after it", len(owed))
			}
			if err := resend(); err != nil {
				return nil, err
			}
			now := time.Now()
			if now.Before(fastUntil) {
				timer.Reset(kickRetry)
				continue
			}
			if now.After(steady) {
				retry = min(retry*2, time.Second)
			}
			timer.Reset(retry)
		case r := <-lines:
			if r.err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				return nil, fmt.Errorf("link handshake: %w", r.err)
			}
			kind, got := ParseLine(r.line)
			if owed != nil {
				// Only the OKs of the later HELLOs, in order, may
				// come before the session.
				if kind != KindOK || got != owed[0] {
					return nil, fmt.Errorf("link handshake: %q where the OK of a later HELLO was due", textClip(r.line))
				}
				owed = owed[1:]
			} else {
				if kind != KindOK {
					continue
				}
				i := slices.Index(sent, got)
				if i < 0 {
					lines <- result{} // not this attempt's: let the reader go on
					continue
				}
				owed = slices.Clone(sent[i+1:])
			}
			if len(owed) > 0 {
				lines <- result{} // read on to the next OK
				timer.Reset(oweWait)
				continue
			}
			// The reader goroutine is parked on the ack send; done
			// releases it without a further read.
			return &bufferedConn{r: br, ReadWriteCloser: rwc}, nil
		}
	}
}

// yamuxConfig is the session configuration both sides use.
func yamuxConfig(keepAlive time.Duration) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = nil
	cfg.Logger = discardLogger{}
	cfg.EnableKeepAlive = keepAlive > 0
	if keepAlive > 0 {
		cfg.KeepAliveInterval = keepAlive
		cfg.ConnectionWriteTimeout = 2 * keepAlive
	}
	cfg.StreamOpenTimeout = 10 * time.Second
	cfg.StreamCloseTimeout = 30 * time.Second
	return cfg
}

type discardLogger struct{}

func (discardLogger) Print(...any)          {}
func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

// DialConfig configures the host side of a link.
type DialConfig struct {
	// HelloRetry is the initial interval between HELLO lines while the
	// guest does not answer (default 100 ms, doubling up to 1 s).
	HelloRetry time.Duration
	// KeepAlive is the yamux keepalive interval (default 2 s); a session
	// whose peer does not answer within twice this dies.
	KeepAlive time.Duration
	// Kick, if set, hurries the handshake: each receive sends a HELLO at
	// once and then one every 10 ms for 300 ms, whatever the backoff had
	// reached, and then starts the backoff over. The relay kicks when a client is waiting for a link that
	// is not up: a guest just restored (a fork) drops the HELLOs queued
	// while it was paused, and answers the next one at once.
	Kick <-chan struct{}
}

func (c DialConfig) withDefaults() DialConfig {
	if c.HelloRetry <= 0 {
		c.HelloRetry = 100 * time.Millisecond
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = 2 * time.Second
	}
	return c
}

// Dial runs the host side of the handshake on rwc and returns a yamux client
// session over it. Closing the session closes rwc. On error rwc is closed.
func Dial(ctx context.Context, rwc io.ReadWriteCloser, cfg DialConfig) (*yamux.Session, error) {
	cfg = cfg.withDefaults()
	conn, err := handshake(ctx, rwc, cfg.HelloRetry, cfg.Kick)
	if err != nil {
		rwc.Close()
		return nil, err
	}
	sess, err := yamux.Client(conn, yamuxConfig(cfg.KeepAlive))
	if err != nil {
		rwc.Close()
		return nil, fmt.Errorf("link dial: %w", err)
	}
	return sess, nil
}

// Serve runs the guest side until ctx ends: it opens the port with
// openPort, waits for a host handshake, serves a yamux session and calls
// handle (in its own goroutine) for every stream the host opens; when the
// stream ends (the host went away) it closes the port and starts over.
// openPort should block until a host may be present rather than fail fast;
// its errors are logged and retried after a short pause. Serve returns
// ctx.Err().
func Serve(ctx context.Context, openPort func(context.Context) (io.ReadWriteCloser, error), handle func(net.Conn), log Logger) error {
	if log == nil {
		log = discardLog{}
	}
	for ctx.Err() == nil {
		port, err := openPort(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			log.Warn("open agent port", "err", err)
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		if err := serveOnce(ctx, port, handle); err != nil && ctx.Err() == nil {
			log.Debug("link session ended", "err", err)
		}
		port.Close()
	}
	return ctx.Err()
}

func serveOnce(ctx context.Context, port io.ReadWriteCloser, handle func(net.Conn)) error {
	conn, _, err := Accept(ctx, port)
	if err != nil {
		return err
	}
	sess, err := yamux.Server(conn, yamuxConfig(0))
	if err != nil {
		return err
	}
	defer sess.Close()
	defer context.AfterFunc(ctx, func() { sess.Close() })()
	for {
		st, err := sess.Accept()
		if err != nil {
			return err
		}
		go handle(st)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
