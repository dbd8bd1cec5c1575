package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minionsdev/minions/guestagent/link"
	"github.com/minionsdev/minions/internal/errs"
)

// guest plays QEMU plus the guest agent: it listens on the serial socket
// (one connection at a time, as a virtio-serial port allows) and serves
// the guest side of the link; every stream is echoed back, prefixed with
// the guest's generation so a test can tell a restarted guest apart.
type guest struct {
	t      *testing.T
	path   string
	gen    int
	cancel context.CancelFunc
	done   chan struct{}
	l      net.Listener
}

func startGuest(t *testing.T, path string, gen int) *guest {
	t.Helper()
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &guest{t: t, path: path, gen: gen, cancel: cancel, done: make(chan struct{}), l: l}
	go func() {
		defer close(g.done)
		link.Serve(ctx, func(ctx context.Context) (io.ReadWriteCloser, error) {
			c, err := l.Accept()
			if err != nil {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return c, nil
		}, func(c net.Conn) {
			defer c.Close()
			fmt.Fprintf(c, "guest%d:", g.gen)
			io.Copy(c, c)
		}, nil)
	}()
	t.Cleanup(g.stop)
	return g
}

// stop ends the guest and removes its socket (QEMU exited).
func (g *guest) stop() {
	if g.cancel == nil {
		return
	}
	g.cancel()
	g.l.Close()
	<-g.done
	g.cancel = nil
	os.Remove(g.path)
}

type relayRun struct {
	cancel context.CancelFunc
	done   chan error
}

func startRelay(t *testing.T, cfg Config) *relayRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &relayRun{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- Run(ctx, cfg) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *relayRun) stop(t *testing.T) {
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Errorf("relay returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not stop")
	}
}

// connect dials the relay's hybrid vsock socket and does the CONNECT
// handshake, sending first (in the same write) any bytes in early.
func connect(t *testing.T, listen string, early []byte) (*net.UnixConn, *bufio.Reader) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", listen)
		if err == nil {
			uc := c.(*net.UnixConn)
			uc.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := uc.Write(append([]byte("CONNECT 1024\n"), early...)); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(uc)
			line, err := br.ReadString('\n')
			if err == nil {
				if !strings.HasPrefix(line, "OK ") {
					t.Fatalf("relay answered %q", line)
				}
				return uc, br
			}
			uc.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no relay connection: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sockets(t *testing.T) (serial, listen string) {
	dir, err := os.MkdirTemp("", "relay")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "agent.sock"), filepath.Join(dir, "vsock.sock")
}

// TestRelayBothWays sends 4 MiB through the relay to an echoing guest, the
// first bytes in the same write as CONNECT, and reads them back; a
// half-close from the host reaches the guest, whose close ends the
// host's read.
func TestRelayBothWays(t *testing.T) {
	serial, listen := sockets(t)
	startGuest(t, serial, 1)
	startRelay(t, Config{SerialSocket: serial, Listen: listen})

	data := make([]byte, 4<<20)
	rand.Read(data)
	c, br := connect(t, listen, data[:100])
	defer c.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := c.Write(data[100:]); err != nil {
			t.Error(err)
		}
		c.CloseWrite()
	}()
	got, err := io.ReadAll(br)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte("guest1:"), data...)
	if !bytes.Equal(got, want) {
		t.Fatalf("echo: got %d bytes, want %d (equal prefix %v)", len(got), len(want), bytes.HasPrefix(want, got))
	}
	if st, err := os.Stat(listen); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("listen socket: %v, %v (want mode 0600)", st, err)
	}
}

// TestRelayManyConnections runs several connections at once over the one
// guest link, each getting its own stream.
func TestRelayManyConnections(t *testing.T) {
	serial, listen := sockets(t)
	startGuest(t, serial, 1)
	startRelay(t, Config{SerialSocket: serial, Listen: listen})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, br := connect(t, listen, nil)
			defer c.Close()
			msg := fmt.Sprintf("hello %d", i)
			c.Write([]byte(msg))
			c.CloseWrite()
			got, err := io.ReadAll(br)
			if err != nil || string(got) != "guest1:"+msg {
				t.Errorf("connection %d: %q, %v", i, got, err)
			}
		}()
	}
	wg.Wait()
}

// TestRelayReconnect restarts the guest side (a reboot: QEMU's chardev
// drops and comes back) and then the relay itself (killed and restarted
// by the driver's repair): both times new connections reach the guest.
// When the serial socket is gone for good (QEMU exited), Run returns nil
// by itself and removes its socket.
func TestRelayReconnect(t *testing.T) {
	serial, listen := sockets(t)
	g := startGuest(t, serial, 1)
	r := startRelay(t, Config{SerialSocket: serial, Listen: listen, GoneAfter: 500 * time.Millisecond, SessionWait: 5 * time.Second})
	echo := func(want string) {
		t.Helper()
		c, br := connect(t, listen, nil)
		defer c.Close()
		c.Write([]byte("x"))
		c.CloseWrite()
		if got, err := io.ReadAll(br); err != nil || string(got) != want {
			t.Fatalf("echo %q, %v; want %q", got, err, want)
		}
	}
	echo("guest1:x")

	g.stop()
	g = startGuest(t, serial, 2)
	echo("guest2:x")

	r.stop(t)
	r = startRelay(t, Config{SerialSocket: serial, Listen: listen, GoneAfter: 500 * time.Millisecond, SessionWait: 5 * time.Second})
	echo("guest2:x")

	g.stop()
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not return after the serial socket went away")
	}
	if _, err := os.Stat(listen); !os.IsNotExist(err) {
		t.Fatalf("relay left its socket behind: %v", err)
	}
}

// TestRelayRefusesBadRequests: a line that is not "CONNECT <port>" is
// dropped without an answer, and the relay goes on serving.
func TestRelayRefusesBadRequests(t *testing.T) {
	serial, listen := sockets(t)
	startGuest(t, serial, 1)
	startRelay(t, Config{SerialSocket: serial, Listen: listen})
	if c, _ := connect(t, listen, nil); c != nil { // up
		c.Close()
	}
	for _, req := range []string{"HELLO\n", "CONNECT\n", "CONNECT x\n", "CONNECT -1\n", "CONNECT 99999999999\n"} {
		c, err := net.Dial("unix", listen)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(c, req)
		b, err := io.ReadAll(c)
		c.Close()
		if len(b) != 0 || err != nil {
			t.Errorf("%q: answered %q, %v; want the connection closed", req, b, err)
		}
	}
	c, br := connect(t, listen, []byte("y"))
	defer c.Close()
	c.CloseWrite()
	if got, _ := io.ReadAll(br); string(got) != "guest1:y" {
		t.Fatalf("after bad requests: %q", got)
	}
}

func TestConfigValidate(t *testing.T) {
	long := "/" + strings.Repeat("a", 107)
	for _, c := range []Config{{SerialSocket: "a"}, {Listen: "b"}, {SerialSocket: long, Listen: "b"}, {SerialSocket: "a", Listen: long}} {
		if err := c.Validate(); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("%+v: %v, want InvalidArgument", c, err)
		}
		if err := Run(context.Background(), c); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("Run(%+v): %v, want InvalidArgument", c, err)
		}
	}
	if err := (&Config{SerialSocket: "a", Listen: "b"}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestRelayIdleHook: Idle is called when the guest link comes up and when
// the last client connection closes, never while one is open.
func TestRelayIdleHook(t *testing.T) {
	serial, listen := sockets(t)
	startGuest(t, serial, 1)
	var calls atomic.Int32
	startRelay(t, Config{SerialSocket: serial, Listen: listen, Idle: func() { calls.Add(1) }})
	a, abr := connect(t, listen, nil) // waits for the link: one call
	b, bbr := connect(t, listen, nil)
	for deadline := time.Now().Add(5 * time.Second); calls.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // the call may trail the link's first CONNECT
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("idle called %d times with the link up and two connections open, want 1", n)
	}
	for _, c := range []struct {
		c  *net.UnixConn
		br *bufio.Reader
	}{{a, abr}, {b, bbr}} {
		c.c.CloseWrite()
		io.ReadAll(c.br)
		c.c.Close()
	}
	for deadline := time.Now().Add(5 * time.Second); calls.Load() != 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("idle called %d times after both connections closed, want 2", calls.Load())
		}
	}
}

// TestReleaseBuffers: closed connections leave their copy buffers for the
// next ones (at most maxFreeBufs), and ReleaseBuffers lets them all go at
// once, so that one GC frees them (a sync.Pool needed two).
func TestReleaseBuffers(t *testing.T) {
	ReleaseBuffers()
	serial, listen := sockets(t)
	startGuest(t, serial, 1)
	startRelay(t, Config{SerialSocket: serial, Listen: listen})
	for i := range maxFreeBufs + 2 {
		var wg, open sync.WaitGroup
		open.Add(6)
		for j := range 6 { // connections at once: a buffer each way
			wg.Add(1)
			go func() {
				defer wg.Done()
				opened := false
				defer func() {
					if !opened {
						open.Done() // connect failed: do not hold the others
					}
				}()
				c, br := connect(t, listen, nil)
				defer c.Close()
				// All six are open before any ends (on a busy host they
				// could otherwise run one after another and share buffers).
				opened = true
				open.Done()
				open.Wait()
				msg := fmt.Sprintf("hi %d.%d", i, j)
				c.Write([]byte(msg))
				c.CloseWrite()
				if got, err := io.ReadAll(br); err != nil || string(got) != "guest1:"+msg {
					t.Errorf("echo %q, %v", got, err)
				}
			}()
		}
		wg.Wait()
	}
	// Buffers go back after the client sees its echo end: wait for them.
	for deadline := time.Now().Add(5 * time.Second); freeBuffers() != maxFreeBufs; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d buffers kept after 12 connections at once, want %d", freeBuffers(), maxFreeBufs)
		}
	}
	b := getBuf()
	putBuf(b)
	if n := freeBuffers(); n != maxFreeBufs {
		t.Fatalf("%d buffers kept after a get and a put, want %d", n, maxFreeBufs)
	}
	ReleaseBuffers()
	if n := freeBuffers(); n != 0 {
		t.Fatalf("%d buffers kept after ReleaseBuffers, want 0", n)
	}
}

// TestRelayConnectKicksRestoredGuest: the relay of a fork starts before
// its guest is restored; the restored guest's old session drops what the
// relay sent meanwhile, and then answers the next HELLO. A client's
// CONNECT makes that HELLO come at once, not when the handshake's backoff
// (grown while the guest was not there) says.
func TestRelayConnectKicksRestoredGuest(t *testing.T) {
	serial, listen := sockets(t)
	l, err := net.Listen("unix", serial)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var restored atomic.Bool
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		// The old session: reads and drops everything up to and
		// including the first read after the restore.
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			if restored.Load() {
				break
			}
		}
		opened := false
		link.Serve(ctx, func(ctx context.Context) (io.ReadWriteCloser, error) {
			if opened {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			opened = true
			return c, nil
		}, func(c net.Conn) {
			defer c.Close()
			io.Copy(c, c)
		}, nil)
	}()
	startRelay(t, Config{SerialSocket: serial, Listen: listen})
	// Past the handshake's first second: its retries are 200 ms and
	// growing.
	time.Sleep(1500 * time.Millisecond)
	restored.Store(true)
	start := time.Now()
	c, _ := connect(t, listen, nil)
	c.Close()
	took := time.Since(start)
	t.Logf("connected %v after the restore", took)
	if took > 250*time.Millisecond {
		t.Fatalf("connected %v after the restore, want < 250 ms", took)
	}
}
