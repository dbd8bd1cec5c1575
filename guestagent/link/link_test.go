package link

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

func TestParseLine(t *testing.T) {
	tests := []struct {
		line  string
		kind  Kind
		nonce string
	}{
		{"MINIONS-LINK-HELLO 0123456789abcdef", KindHello, "0123456789abcdef"},
		{"MINIONS-LINK-OK 0123456789abcdef", KindOK, "0123456789abcdef"},
		{"MINIONS-LINK-OK 0123456789abcdef\r", KindOK, "0123456789abcdef"},
		{"MINIONS-LINK-HELLO 0123456789ABCDEF", KindNone, ""},
		{"MINIONS-LINK-HELLO 0123456789abcde", KindNone, ""},
		{"MINIONS-LINK-HELLO 0123456789abcdef0", KindNone, ""},
		{"MINIONS-LINK-HELLO  0123456789abcdef", KindNone, ""},
		{"xMINIONS-LINK-HELLO 0123456789abcdef", KindNone, ""},
		{"MINIONS-LINK-HELLO", KindNone, ""},
		{"", KindNone, ""},
		{"\x00\x01MINIONS", KindNone, ""},
	}
	for _, tt := range tests {
		kind, nonce := ParseLine([]byte(tt.line))
		if kind != tt.kind || nonce != tt.nonce {
			t.Errorf("ParseLine(%q) = %v, %q; want %v, %q", tt.line, kind, nonce, tt.kind, tt.nonce)
		}
	}
}

func FuzzParseLine(f *testing.F) {
	f.Add([]byte("MINIONS-LINK-HELLO 0123456789abcdef"))
	f.Add([]byte("MINIONS-LINK-OK 0123456789abcdef\r"))
	f.Add([]byte("MINIONS-LINK-OK 0123456789abcdeg"))
	f.Add([]byte{0, 1, 2, '\r'})
	f.Fuzz(func(t *testing.T, line []byte) {
		kind, nonce := ParseLine(line)
		trimmed := strings.TrimSuffix(string(line), "\r")
		switch kind {
		case KindNone:
			if nonce != "" {
				t.Fatalf("nonce %q for a non-handshake line", nonce)
			}
		case KindHello:
			if trimmed != helloPrefix+nonce {
				t.Fatalf("hello %q does not re-encode to %q", nonce, line)
			}
		case KindOK:
			if trimmed != okPrefix+nonce {
				t.Fatalf("ok %q does not re-encode to %q", nonce, line)
			}
		}
		if kind != KindNone && !validNonce([]byte(nonce)) {
			t.Fatalf("invalid nonce %q accepted", nonce)
		}
	})
}

// FuzzAccept feeds arbitrary stale bytes before a HELLO line: Accept must
// find a HELLO (the real one or one hidden in the garbage) and leave the
// stream positioned right after it.
func FuzzAccept(f *testing.F) {
	f.Add([]byte("garbage"))
	f.Add([]byte("MINIONS-LINK-HELLO 0000000000000000\nMINIONS-LINK-HEL"))
	f.Add(bytes.Repeat([]byte{'x'}, 5000))
	f.Fuzz(func(t *testing.T, garbage []byte) {
		const nonce = "00112233445566aa"
		in := append(append(append([]byte{}, garbage...), '\n'), helloPrefix+nonce+"\nTAIL"...)
		rw := &memRW{r: bytes.NewReader(in)}
		conn, got, err := Accept(context.Background(), rw)
		if err != nil {
			t.Fatalf("Accept: %v", err)
		}
		if got != nonce && !bytes.Contains(garbage, []byte(helloPrefix+got)) {
			t.Fatalf("nonce %q neither sent nor in garbage", got)
		}
		if !strings.HasPrefix(rw.w.String(), okPrefix+got+"\n") {
			t.Fatalf("reply %q", rw.w.String())
		}
		if got == nonce {
			rest, _ := io.ReadAll(conn)
			if string(rest) != "TAIL" {
				t.Fatalf("rest %q, want TAIL", rest)
			}
			if rw.w.String() != okPrefix+got+"\n" {
				t.Fatalf("reply %q", rw.w.String())
			}
		}
	})
}

type memRW struct {
	r io.Reader
	w bytes.Buffer
}

func (m *memRW) Read(p []byte) (int, error)  { return m.r.Read(p) }
func (m *memRW) Write(p []byte) (int, error) { return m.w.Write(p) }
func (m *memRW) Close() error                { return nil }

// socketpair returns two connected stream sockets, like the two ends of a
// virtio-serial port with its QEMU chardev.
func socketpair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "sp")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

func echo(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != msg {
		t.Fatalf("echo %q, want %q", buf, msg)
	}
}

// noClose hides Close so a guest "reopening its port" keeps the socket.
type noClose struct{ net.Conn }

func (noClose) Close() error { return nil }

func TestLinkOverGarbage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	host, guest := socketpair(t)

	// Stale bytes in both directions: half a yamux frame, an overlong
	// line, a HELLO/OK with bad nonces, an OK for a nonce never sent.
	stale := "\x00\x01\x00\x02garbage\n" + strings.Repeat("z", 300) + "\nMINIONS-LINK-OK 0123456789abcdef\nMINIONS-LINK-HELLO XYZ\n"
	// Both are written before either side starts, as a previous session
	// leaves them: written concurrently with the guest's OK they could
	// land after it, inside the new session.
	for _, end := range []io.Writer{guest, host} {
		if _, err := io.WriteString(end, stale); err != nil {
			t.Fatal(err)
		}
	}

	serveCtx, stopServe := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		opened := false
		Serve(serveCtx, func(ctx context.Context) (io.ReadWriteCloser, error) {
			if opened {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			opened = true
			return guest, nil
		}, echo, nil)
	}()

	sess, err := Dial(ctx, host, DialConfig{HelloRetry: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	for i := range 3 {
		st, err := sess.Open()
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, st, strings.Repeat("ping", i+1))
		st.Close()
	}
	stopServe()
	wg.Wait()
}

// TestLinkStaleHello: the guest first sees HELLOs the host has given up on
// (queued while the guest port was closed) and answers each; the host
// skips their OKs (not of this attempt) and links up on its own.
func TestLinkStaleHello(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	host, guest := socketpair(t)
	if _, err := io.WriteString(host, helloPrefix+"ffffffffffffffff\n"+helloPrefix+"eeeeeeeeeeeeeeee\n"); err != nil {
		t.Fatal(err)
	}
	// The guest starts late, as after a boot, with the HELLOs queued.
	go func() {
		time.Sleep(200 * time.Millisecond)
		Serve(ctx, func(context.Context) (io.ReadWriteCloser, error) { return noClose{guest}, nil }, echo, nil)
	}()

	start := time.Now()
	sess, err := Dial(ctx, host, DialConfig{HelloRetry: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	st, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, st, "hello after stale")
	t.Logf("converged in %v", time.Since(start))
}

// TestLinkHostReconnect: the host drops the session and starts a new one on
// the same stream (as the relay does after a keepalive failure); the guest
// must follow.
func TestLinkHostReconnect(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// The guest port outlives host sessions; each host session is a new
	// socket pair handed to the guest's openPort.
	ports := make(chan net.Conn)
	go Serve(ctx, func(ctx context.Context) (io.ReadWriteCloser, error) {
		select {
		case c := <-ports:
			return c, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}, echo, nil)

	for i := range 3 {
		host, guest := socketpair(t)
		ports <- guest
		sess, err := Dial(ctx, host, DialConfig{HelloRetry: 50 * time.Millisecond})
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		st, err := sess.Open()
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, st, "x")
		sess.Close()
	}
}

// TestHandshakeLeavesSessionBytes: bytes the guest writes right after its
// OK line reach the caller of Handshake.
func TestHandshakeLeavesSessionBytes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host, guest := socketpair(t)
	go func() {
		br := bufio.NewReader(guest)
		line, _ := br.ReadString('\n')
		_, nonce := ParseLine([]byte(strings.TrimSuffix(line, "\n")))
		io.WriteString(guest, "noise\n"+okPrefix+nonce+"\nSESSION")
	}()
	conn, err := Handshake(ctx, host, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "SESSION" {
		t.Fatalf("got %q, %v", buf, err)
	}
}

func TestHandshakeContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	host, guest := socketpair(t)
	go io.Copy(io.Discard, guest)
	if _, err := Handshake(ctx, host, 10*time.Millisecond); err != context.DeadlineExceeded {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}

// TestNewNonce: nonces are well formed (ParseLine accepts them) and do not
// repeat.
func TestNewNonce(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		n := NewNonce()
		if k, got := ParseLine([]byte(okPrefix + n)); k != KindOK || got != n {
			t.Fatalf("nonce %q does not parse: %v %q", n, k, got)
		}
		if seen[n] {
			t.Fatalf("nonce %q repeated", n)
		}
		seen[n] = true
	}
}

// TestLinkKickRestoredGuest: a guest restored from a saved state (a fork)
// first reads whatever the host sent with its old session, which drops it,
// and then answers the next HELLO. By then the host's backoff has grown
// (the relay started before the restore); a kick (a client waiting for
// the link) makes the next HELLO come at once instead of up to a second
// later.
func TestLinkKickRestoredGuest(t *testing.T) {
	// late: how long after the kick the guest reopens its port (beyond
	// the fast spell: a loaded host).
	for _, late := range []time.Duration{0, 600 * time.Millisecond} {
		t.Run(fmt.Sprint("reopen-after-", late), func(t *testing.T) { testLinkKick(t, late) })
	}
}

func testLinkKick(t *testing.T, late time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	host, guest := socketpair(t)
	var reopenAt atomic.Int64 // unix nanos; 0: not restored yet
	go func() {
		// The old session: reads and drops everything up to and
		// including the first read after the restore (and, when the
		// guest is slow, until it reopens its port).
		buf := make([]byte, 4096)
		for {
			if _, err := guest.Read(buf); err != nil {
				return
			}
			if at := reopenAt.Load(); at != 0 && time.Now().UnixNano() >= at {
				break
			}
		}
		opened := false
		Serve(ctx, func(ctx context.Context) (io.ReadWriteCloser, error) {
			if opened {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			opened = true
			return noClose{guest}, nil
		}, echo, nil)
	}()
	kick := make(chan struct{}, 1)
	type result struct {
		sess interface{ Close() error }
		at   time.Time
		err  error
	}
	done := make(chan result, 1)
	go func() {
		sess, err := Dial(ctx, host, DialConfig{Kick: kick})
		done <- result{sess, time.Now(), err}
	}()
	// Past the first second: the host's retries are 200 ms and growing.
	time.Sleep(1500 * time.Millisecond)
	kicked := time.Now()
	reopenAt.Store(kicked.Add(late).UnixNano())
	kick <- struct{}{}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.sess.Close()
	took := r.at.Sub(kicked) - late
	t.Logf("link up %v after the guest reopened its port", took)
	if took > 250*time.Millisecond {
		t.Fatalf("link up %v after the guest reopened its port, want < 250 ms", took)
	}
}

// slowGuest is the guest side of the link as a guest just restored under
// TCG runs it: each HELLO is answered only after answer (longer than the
// host's retry), every HELLO before the first session byte is answered,
// in order (as Accept and helloFilter do), and then it echoes on a yamux
// session.
func slowGuest(c net.Conn, answer time.Duration) {
	br := bufio.NewReader(c)
	lr := lineReader{br: br}
	for {
		if b, err := br.Peek(1); err != nil {
			return
		} else if b[0] != 'M' {
			break
		}
		line, err := lr.next()
		if err != nil {
			return
		}
		if kind, nonce := ParseLine(line); kind == KindHello {
			time.Sleep(answer)
			if _, err := io.WriteString(c, okPrefix+nonce+"\n"); err != nil {
				return
			}
		}
	}
	sess, err := yamux.Server(&bufferedConn{r: br, ReadWriteCloser: c}, yamuxConfig(0))
	if err != nil {
		return
	}
	for {
		st, err := sess.Accept()
		if err != nil {
			return
		}
		go echo(st)
	}
}

// TestLinkSlowGuest: a guest that takes longer to answer a HELLO than the
// host waits before sending the next one (a clone's first answers under
// TCG) links up at its first answer plus the answers owed for the HELLOs
// sent meanwhile, not once the host's retries have slowed down enough for
// an answer to its latest HELLO to arrive before the next one.
func TestLinkSlowGuest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	host, guest := socketpair(t)
	const answer = 25 * time.Millisecond
	go slowGuest(guest, answer)
	start := time.Now()
	sess, err := Dial(ctx, host, DialConfig{HelloRetry: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	took := time.Since(start)
	st, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, st, "after a slow handshake")
	t.Logf("link up in %v", took)
	// The first answer comes after 25 ms; the two or three HELLOs sent
	// meanwhile are answered 25 ms apart.
	if took > 250*time.Millisecond {
		t.Fatalf("link up in %v, want < 250 ms", took)
	}
}

// TestHandshakeOwedAnswerWrong: once the guest answered an earlier HELLO,
// anything but the OKs of the later ones, in order, fails the handshake
// (the caller starts over on a new connection) instead of being taken for
// session bytes.
func TestHandshakeOwedAnswerWrong(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host, guest := socketpair(t)
	go func() {
		br := bufio.NewReader(guest)
		var nonces []string
		for len(nonces) < 3 {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			_, n := ParseLine([]byte(strings.TrimSuffix(line, "\n")))
			nonces = append(nonces, n)
		}
		// The first HELLO answered, then the third's OK before the second's.
		io.WriteString(guest, okPrefix+nonces[0]+"\n"+okPrefix+nonces[2]+"\n"+okPrefix+nonces[1]+"\n")
		io.Copy(io.Discard, guest)
	}()
	if _, err := Handshake(ctx, host, 10*time.Millisecond); err == nil || !strings.Contains(err.Error(), "later HELLO") {
		t.Fatalf("err = %v, want the owed answers out of order refused", err)
	}
}
