package vsockcli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/guestagent/link"
	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/testenv"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/qemu/relay"
)

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// recorder captures the side effects the agent must not really perform
// on the test host (hostname, clock, power).
type recorder struct {
	mu       sync.Mutex
	hostname string
	time     time.Time
	power    chan bool
}

// env is one in-process guest agent behind a relay, as in production but
// with the guest end of the virtio-serial port played by a unix socket
// the test serves.
type env struct {
	t      *testing.T
	root   string
	signer ssh.Signer
	rec    *recorder
	srv    *guestagent.Server
	serial string
	listen string
	ep     hypervisor.AgentEndpoint

	guestStop func()
	relayStop func() error
	relayDone chan error
}

type envOpts struct {
	mounts    []guestagent.Mount
	growMount string
	goneAfter time.Duration
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.SkipUnlessCI(t, "needs root (runs commands as other users)")
	}
	dir, err := os.MkdirTemp("/tmp", "h1t")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := filepath.Join(dir, "root")
	home := filepath.Join(root, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(home, 0o700)
	// nobody's home does not exist anywhere (a fixed path like /nonexistent
	// may exist on the host, and the agent looks at the real filesystem).
	nobodyHome := filepath.Join(dir, "nonexistent")
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte(
		"root:x:0:0:root:"+home+":/bin/sh\nnobody:x:65534:65534:nobody:"+nobodyHome+":/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nnogroup:x:65534:\n"), 0o644)

	e := &env{t: t, root: root, signer: newSigner(t), rec: &recorder{power: make(chan bool, 4)},
		serial: filepath.Join(dir, "serial.sock"), listen: filepath.Join(dir, "agent.sock")}
	e.ep = hypervisor.AgentEndpoint{Kind: KindHybrid, Path: e.listen, Port: proto.DefaultVsockPort}
	mounts := o.mounts
	if mounts == nil {
		mounts = []guestagent.Mount{}
	}
	e.srv, err = guestagent.NewServer(guestagent.Config{
		AuthorizedKey: e.signer.PublicKey(),
		HostKeyPath:   filepath.Join(root, "etc/minions/agent_host_key"),
		Root:          root,
		Mounts:        func() ([]guestagent.Mount, error) { return mounts, nil },
		GrowMount:     o.growMount,
		FreezeTimeout: 2 * time.Second,
		SetHostname: func(n string) error {
			e.rec.mu.Lock()
			e.rec.hostname = n
			e.rec.mu.Unlock()
			return nil
		},
		SetTime: func(tm time.Time) error {
			e.rec.mu.Lock()
			e.rec.time = tm
			e.rec.mu.Unlock()
			return nil
		},
		// Never the host's RNG or eth0 (the in-process agent runs on the host).
		ReseedRNG:  func([]byte) error { return nil },
		SetNetwork: func(net.HardwareAddr, netip.Prefix, netip.Addr) error { return nil },
		Power:      func(reboot bool) error { e.rec.power <- reboot; return nil },
		Log:        testLog(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.startGuest()
	e.startRelay(o.goneAfter)
	t.Cleanup(func() {
		e.relayStop()
		e.stopGuest()
	})
	return e
}

// startGuest plays QEMU + guest: it listens on the serial socket and runs
// the guest side of the link on each connection (one at a time, as a
// virtio-serial port allows).
func (e *env) startGuest() {
	l, err := net.Listen("unix", e.serial)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		link.Serve(ctx, func(ctx context.Context) (io.ReadWriteCloser, error) {
			c, err := l.Accept()
			if err != nil {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return c, nil
		}, func(c net.Conn) { e.srv.ServeConn(ctx, c) }, nil)
	}()
	e.guestStop = func() {
		cancel()
		l.Close()
		wg.Wait()
	}
}

func (e *env) stopGuest() {
	if e.guestStop != nil {
		e.guestStop()
		e.guestStop = nil
	}
}

func (e *env) startRelay(goneAfter time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- relay.Run(ctx, relay.Config{SerialSocket: e.serial, Listen: e.listen, GoneAfter: goneAfter,
			KeepAlive: 200 * time.Millisecond, Log: testLog(e.t)})
	}()
	e.relayDone = done
	e.relayStop = func() error {
		cancel()
		select {
		case err := <-done:
			done <- err
			return err
		case <-time.After(10 * time.Second):
			return errors.New("relay did not stop")
		}
	}
}

func (e *env) config() Config {
	return Config{Signer: e.signer, HostKey: ssh.FixedHostKey(e.srv.HostKey()), Timeout: 5 * time.Second}
}

func (e *env) client(ctx context.Context) *Client {
	e.t.Helper()
	c, err := WaitReady(ctx, e.ep, e.config())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestExec(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)

	tests := []struct {
		name     string
		req      ExecRequest
		code     int
		out, err string
	}{
		{name: "true", req: ExecRequest{Command: "true"}},
		{name: "exit code", req: ExecRequest{Command: "echo out; echo err >&2; exit 3"}, code: 3, out: "out\n", err: "err\n"},
		{name: "exit 255", req: ExecRequest{Command: "exit 255"}, code: 255},
		{name: "killed", req: ExecRequest{Command: "kill -9 $$"}, code: 128 + 9},
		{name: "not found", req: ExecRequest{Command: "/nonexistent-cmd 2>/dev/null"}, code: 127},
		{name: "argv quoting", req: ExecRequest{Argv: []string{"printf", "%s|", "a b", "it's", "$HOME", ""}}, out: "a b|it's|$HOME||"},
		{name: "env", req: ExecRequest{Command: `echo "$FOO $USER $HOME"`, Env: map[string]string{"FOO": "bar baz"}}, out: "bar baz root " + filepath.Join(e.root, "root") + "\n"},
		{name: "stdin", req: ExecRequest{Command: "tr a-z A-Z", Stdin: strings.NewReader("hello\n")}, out: "HELLO\n"},
		{name: "no tty", req: ExecRequest{Command: "test -t 0 || echo notty"}, out: "notty\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			req := tt.req
			req.Stdout, req.Stderr = &out, &errb
			code, err := c.Exec(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if code != tt.code || out.String() != tt.out || errb.String() != tt.err {
				t.Errorf("got %d %q %q, want %d %q %q", code, out.String(), errb.String(), tt.code, tt.out, tt.err)
			}
		})
	}
}

func TestExecAsOtherUser(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	e.client(ctx) // the relay is up
	cfg := e.config()
	cfg.User = "nobody"
	c, err := Dial(ctx, e.ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	if code, err := c.Exec(ctx, ExecRequest{Command: "id -u; pwd", Stdout: &out}); err != nil || code != 0 {
		t.Fatalf("exec: %d %v", code, err)
	}
	if out.String() != "65534\n/\n" {
		t.Fatalf("got %q", out.String())
	}
	cfg.User = "nosuchuser"
	c2, err := Dial(ctx, e.ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Exec(ctx, ExecRequest{Command: "true"}); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("exec as unknown user: %v", err)
	}
}

// TestExecStdinStreaming: stdin is delivered as it is written, not at EOF.
func TestExecStdinStreaming(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	pr, pw := io.Pipe()
	out := newWatcher()
	done := make(chan int, 1)
	go func() {
		code, err := c.Exec(ctx, ExecRequest{Command: "while read l; do echo got-$l; done; echo eof", Stdin: pr, Stdout: out})
		if err != nil {
			t.Error(err)
		}
		done <- code
	}()
	for i := range 3 {
		fmt.Fprintf(pw, "line%d\n", i)
		out.wait(t, fmt.Sprintf("got-line%d\n", i))
	}
	pw.Close()
	out.wait(t, "eof\n")
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	// A large stream arrives intact.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	var sum bytes.Buffer
	if code, err := c.Exec(ctx, ExecRequest{Command: "wc -c", Stdin: bytes.NewReader(big), Stdout: &sum}); err != nil || code != 0 {
		t.Fatal(code, err)
	}
	if strings.TrimSpace(sum.String()) != fmt.Sprint(len(big)) {
		t.Fatalf("wc -c = %q, want %d", sum.String(), len(big))
	}
}

// watcher is an io.Writer that lets a test wait for output.
type watcher struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan struct{}
}

func newWatcher() *watcher { return &watcher{ch: make(chan struct{}, 1)} }

func (w *watcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	w.mu.Unlock()
	select {
	case w.ch <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *watcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func (w *watcher) wait(t *testing.T, sub string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(w.String(), sub) {
		select {
		case <-w.ch:
		case <-deadline:
			t.Fatalf("output %q never contained %q", w.String(), sub)
		}
	}
}

func TestPTY(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	resize := make(chan WindowSize, 1)
	out := newWatcher()
	done := make(chan int, 1)
	go func() {
		code, err := c.Exec(ctx, ExecRequest{
			Command: `test -t 0 && echo tty=yes; echo term=$TERM; echo size=$(stty size);` +
				` while [ "$(stty size)" != "40 100" ]; do sleep 0.02; done; echo resized=$(stty size); exit 4`,
			TTY: true, Term: "vt100", Width: 80, Height: 24, Resize: resize, Stdout: out,
		})
		if err != nil {
			t.Error(err)
		}
		done <- code
	}()
	out.wait(t, "size=24 80")
	resize <- WindowSize{Width: 100, Height: 40}
	out.wait(t, "resized=40 100")
	if code := <-done; code != 4 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"tty=yes\r\n", "term=vt100\r\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output %q lacks %q", out.String(), want)
		}
	}
}

func TestShell(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	out := newWatcher()
	code, err := c.Exec(ctx, ExecRequest{TTY: true, Stdin: strings.NewReader("echo in-$((6*7))-shell; exit 5\n"), Stdout: out})
	if err != nil || code != 5 {
		t.Fatalf("shell: %d %v", code, err)
	}
	if !strings.Contains(out.String(), "in-42-shell") {
		t.Fatalf("output %q", out.String())
	}
}

func TestSignal(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	for _, tt := range []struct {
		sig      string
		code     int
		wantText string
	}{
		{"TERM", 7, "got-term"},
		{"KILL", 128 + 9, ""},
		{"INT", 128 + 2, ""},
	} {
		t.Run(tt.sig, func(t *testing.T) {
			sigs := make(chan string, 1)
			out := newWatcher()
			done := make(chan int, 1)
			go func() {
				script := "echo ready; while :; do sleep 0.02; done"
				if tt.sig == "TERM" {
					script = "trap 'echo got-term; exit 7' TERM; " + script
				}
				code, err := c.Exec(ctx, ExecRequest{Command: script, Signals: sigs, Stdout: out})
				if err != nil {
					t.Error(err)
				}
				done <- code
			}()
			out.wait(t, "ready")
			sigs <- tt.sig
			select {
			case code := <-done:
				if code != tt.code || !strings.Contains(out.String(), tt.wantText) {
					t.Fatalf("exit %d output %q, want %d with %q", code, out.String(), tt.code, tt.wantText)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("command did not end after signal")
			}
		})
	}
}

func TestExecContextKills(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.client(testCtx(t))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Exec(ctx, ExecRequest{Command: "sleep 30"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestSFTP(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	name := filepath.Join(e.root, "root", "blob.bin")
	if err := c.WriteFile(ctx, name, data, 0o640); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(name)
	if err != nil || !bytes.Equal(onDisk, data) {
		t.Fatalf("file on disk differs (%v)", err)
	}
	if st, _ := os.Stat(name); st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", st.Mode())
	}
	got, err := c.ReadFile(ctx, name)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back differs (%v)", err)
	}
	if _, err := c.ReadFile(ctx, filepath.Join(e.root, "missing")); !errors.Is(err, errs.NotFound) {
		t.Fatalf("missing file: %v", err)
	}
	s, err := c.SFTP()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if wd, err := s.Getwd(); err != nil || wd != filepath.Join(e.root, "root") {
		t.Fatalf("sftp working directory %q, %v", wd, err)
	}

	// The subsystem ends with exit-status 0 once the client is done (scp
	// and sftp exit 1 without it).
	ch, reqs, err := c.SSH().OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	ok, err := ch.SendRequest("subsystem", true, ssh.Marshal(&struct{ Name string }{"sftp"}))
	if err != nil || !ok {
		t.Fatalf("subsystem request: %v %v", ok, err)
	}
	sc, err := sftp.NewClientPipe(ch, halfCloser{ch})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Stat(name); err != nil {
		t.Fatal(err)
	}
	sc.Close()
	select {
	case req, ok := <-reqs:
		var st struct{ Status uint32 }
		if !ok || req.Type != "exit-status" || ssh.Unmarshal(req.Payload, &st) != nil || st.Status != 0 {
			t.Fatalf("after the sftp client closed: %v %+v", ok, req)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit-status after the sftp client closed")
	}
}

// halfCloser turns Close into CloseWrite, as an sftp client over stdin
// does.
type halfCloser struct{ ssh.Channel }

func (h halfCloser) Close() error { return h.CloseWrite() }

func TestDirectTCPIP(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				// Echo until EOF, then say bye: checks half-close.
				io.Copy(conn, conn)
				io.WriteString(conn, "bye")
				conn.Close()
			}()
		}
	}()
	conn, err := c.DialTCP(ctx, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "hello over the agent")
	conn.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "hello over the agent"+"bye" {
		t.Fatalf("got %q, %v", got, err)
	}
	conn.Close()
	// A closed port is refused with an error, not a hang.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l2.Addr().String()
	l2.Close()
	if _, err := c.DialTCP(ctx, addr); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
}

func TestWrongKeyRefused(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	cfg := e.config()
	cfg.Signer = newSigner(t)
	start := time.Now()
	_, err := WaitReady(ctx, e.ep, cfg)
	if !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("err = %v, want unauthenticated", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("WaitReady retried an authentication failure")
	}
	// And a wrong pinned host key is refused by the client.
	cfg = e.config()
	cfg.HostKey = ssh.FixedHostKey(newSigner(t).PublicKey())
	if _, err := Dial(ctx, e.ep, cfg); err == nil {
		t.Fatal("dial with a wrong pinned host key succeeded")
	}
}

func TestHostKeyPersists(t *testing.T) {
	e := newEnv(t, envOpts{})
	path := filepath.Join(e.root, "etc/minions/agent_host_key")
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("host key file: %v %v", st, err)
	}
	s2, err := guestagent.LoadOrCreateHostKey(path)
	if err != nil || !bytes.Equal(s2.PublicKey().Marshal(), e.srv.HostKey().Marshal()) {
		t.Fatal("host key changed on reload")
	}
}

func TestPingStatus(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	p, err := c.Ping(ctx)
	if err != nil || p.Version == "" || len(p.BootID) != 36 || p.UptimeMS <= 0 {
		t.Fatalf("ping %+v %v", p, err)
	}
	os.WriteFile(filepath.Join(e.root, "etc/machine-id"), []byte("0123456789abcdef0123456789abcdef\n"), 0o444)
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if st.Hostname != host || st.Kernel == "" || st.MemTotal == 0 || st.MemAvailable == 0 || st.DiskTotal == 0 ||
		st.Procs == 0 || st.AgentVersion != guestagent.Version || st.MachineID != "0123456789abcdef0123456789abcdef" || st.UptimeS <= 0 {
		t.Fatalf("status %+v", st)
	}
	var out bytes.Buffer
	if err := Debug(ctx, c, []string{"ping"}, &out); err != nil || !strings.HasPrefix(out.String(), "pong") {
		t.Fatalf("debug ping: %q %v", out.String(), err)
	}
	out.Reset()
	if err := Debug(ctx, c, []string{"exec", "echo", "a b"}, &out); err != nil || out.String() != "a b\n" {
		t.Fatalf("debug exec: %q %v", out.String(), err)
	}
	if err := Debug(ctx, c, []string{"exec", "exit 2"}, io.Discard); err == nil {
		t.Fatal("debug exec of a failing command succeeded")
	}
	out.Reset()
	if err := Debug(ctx, c, []string{"status"}, &out); err != nil || !strings.Contains(out.String(), `"mem_total"`) {
		t.Fatalf("debug status: %q %v", out.String(), err)
	}
	if err := Debug(ctx, c, []string{"bogus"}, io.Discard); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("debug bogus: %v", err)
	}
}

func TestConfigure(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	os.MkdirAll(filepath.Join(e.root, "etc/ssh"), 0o755)
	os.WriteFile(filepath.Join(e.root, "etc/ssh/ssh_host_dsa_key"), []byte("old"), 0o600)
	hostname, mid, now := "web-1", "00112233445566778899aabbccddeeff", time.Now().Add(time.Hour).UnixNano()
	userKey := string(ssh.MarshalAuthorizedKey(newSigner(t).PublicKey()))
	err := c.Configure(ctx, proto.Configure{
		Hostname: &hostname, MachineID: &mid, TimeUnixNano: &now,
		AuthorizedKeys: []string{userKey}, Reseed: []byte("0123456789abcdef"), RegenHostKeys: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.rec.mu.Lock()
	if e.rec.hostname != hostname || e.rec.time.UnixNano() != now {
		t.Errorf("recorded hostname %q time %v", e.rec.hostname, e.rec.time)
	}
	e.rec.mu.Unlock()
	for file, want := range map[string]string{
		"etc/hostname":              hostname + "\n",
		"etc/machine-id":            mid + "\n",
		"root/.ssh/authorized_keys": strings.TrimSpace(userKey) + "\n",
	} {
		if got, err := os.ReadFile(filepath.Join(e.root, file)); err != nil || string(got) != want {
			t.Errorf("%s = %q (%v), want %q", file, got, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(e.root, "etc/ssh/ssh_host_dsa_key")); !os.IsNotExist(err) {
		t.Error("old host key not removed")
	}
	for _, k := range []string{"ssh_host_ed25519_key", "ssh_host_ecdsa_key"} {
		if _, err := os.Stat(filepath.Join(e.root, "etc/ssh", k)); err != nil {
			t.Errorf("host keys not regenerated: %v", err)
		}
	}
	for _, bad := range []proto.Configure{
		{Hostname: ptr("-bad-")},
		{MachineID: ptr("xyz")},
		{AuthorizedKeys: []string{"not a key"}},
	} {
		if err := c.Configure(ctx, bad); !errors.Is(err, errs.FailedPrecondition) {
			t.Errorf("configure %+v: err = %v", bad, err)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestShutdown(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	for _, reboot := range []bool{false, true} {
		if err := c.Shutdown(ctx, reboot); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-e.rec.power:
			if got != reboot {
				t.Fatalf("power(%v), want %v", got, reboot)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("power function not called")
		}
	}
}

// loopFS creates an ext4 filesystem of sizeMiB on a loop device mounted in
// a temporary directory, and returns its mount and backing file.
func loopFS(t *testing.T, sizeMiB int) (guestagent.Mount, string) {
	t.Helper()
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("no losetup")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	sh := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	sh("truncate", "-s", fmt.Sprintf("%dM", sizeMiB), img)
	sh("mkfs.ext4", "-q", img)
	dev := sh("losetup", "--find", "--show", img)
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	sh("mount", dev, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	return guestagent.Mount{Source: dev, Target: mnt, FSType: "ext4"}, img
}

func TestFreezeThaw(t *testing.T) {
	ctx := testCtx(t)
	m, _ := loopFS(t, 32)
	e := newEnv(t, envOpts{mounts: []guestagent.Mount{m}})
	c := e.client(ctx)

	// writeBlocks reports whether a synced write to the filesystem is held
	// up (as it is while frozen) for at least 300 ms.
	writeDone := func() <-chan struct{} {
		done := make(chan struct{})
		go func() {
			defer close(done)
			f, err := os.Create(filepath.Join(m.Target, fmt.Sprint(time.Now().UnixNano())))
			if err == nil {
				f.WriteString("x")
				f.Sync()
				f.Close()
			}
		}()
		return done
	}
	frozen, err := c.FSFreeze(ctx)
	if err != nil || len(frozen) != 1 || frozen[0] != m.Target {
		t.Fatalf("freeze: %v %v", frozen, err)
	}
	if again, err := c.FSFreeze(ctx); err != nil || len(again) != 1 {
		t.Fatalf("second freeze is not idempotent: %v %v", again, err)
	}
	done := writeDone()
	select {
	case <-done:
		t.Fatal("write completed on a frozen filesystem")
	case <-time.After(300 * time.Millisecond):
	}
	if err := c.FSThaw(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("write still blocked after thaw")
	}
	if err := c.FSThaw(ctx); err != nil {
		t.Fatalf("thaw is not idempotent: %v", err)
	}

	// Auto-thaw when the freezing connection goes away.
	c2, err := Dial(ctx, e.ep, e.config())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.FSFreeze(ctx); err != nil {
		t.Fatal(err)
	}
	done = writeDone()
	c2.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("not thawed after the freezing connection closed")
	}

	// Auto-thaw after the timeout (2 s in this test).
	if _, err := c.FSFreeze(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	<-writeDone()
	if d := time.Since(start); d < time.Second || d > 10*time.Second {
		t.Fatalf("auto-thaw after %v, want about 2 s", d)
	}
}

func TestGrowFS(t *testing.T) {
	ctx := testCtx(t)
	if !hasCap(24) { // CAP_SYS_RESOURCE; TestQEMUAgent covers growfs in a VM
		t.Skip("EXT4_IOC_RESIZE_FS needs CAP_SYS_RESOURCE")
	}
	m, img := loopFS(t, 32)
	e := newEnv(t, envOpts{growMount: m.Target})
	c := e.client(ctx)
	before, err := c.GrowFS(ctx) // already full size: a no-op
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 96<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("losetup", "-c", m.Source).CombinedOutput(); err != nil {
		t.Fatalf("losetup -c: %v %s", err, out)
	}
	after, err := c.GrowFS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after < before+60<<20 {
		t.Fatalf("size %d -> %d, want about +64 MiB", before, after)
	}
}

// TestRelayReconnect: the guest side goes away and comes back (a VM
// reboot as the relay sees it); the relay redoes the handshake and new
// connections work. Then the serial socket disappears for good and the
// relay returns by itself.
func TestRelayReconnect(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{goneAfter: 500 * time.Millisecond})
	c := e.client(ctx)
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		e.stopGuest()
		c.Close()
		// While the guest is down, CONNECT fails or waits; nothing hangs.
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		if _, err := Dial(short, e.ep, e.config()); err == nil {
			t.Fatal("dial succeeded with the guest down")
		}
		cancel()
		os.Remove(e.serial)
		e.startGuest()
		start := time.Now()
		c = e.client(ctx)
		if _, err := c.Ping(ctx); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		t.Logf("round %d: reconnected in %v", i, time.Since(start))
	}
	e.stopGuest()
	os.Remove(e.serial)
	select {
	case err := <-e.relayDone:
		e.relayDone <- err
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not return after the serial socket went away")
	}
	if _, err := os.Stat(e.listen); !os.IsNotExist(err) {
		t.Fatal("relay left its socket behind")
	}
}

// TestGuestDiesSilently: the guest side stops answering without closing
// the serial connection (a guest reboot under QEMU keeps the chardev
// connected); the relay's keepalive notices, it reconnects and redoes the
// handshake with the new guest.
func TestGuestDiesSilently(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	e.stopGuest()
	os.Remove(e.serial)
	l, err := net.Listen("unix", e.serial)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	serve := func(ctx context.Context) {
		link.Serve(ctx, func(ctx context.Context) (io.ReadWriteCloser, error) {
			c, err := l.Accept()
			if err != nil {
				return nil, err
			}
			conns = append(conns, c)
			// The guest never closes the connection itself.
			return noClose{c}, nil
		}, func(c net.Conn) { e.srv.ServeConn(ctx, c) }, nil)
	}
	g1, stop1 := context.WithCancel(ctx)
	done1 := make(chan struct{})
	go func() { serve(g1); close(done1) }()
	c := e.client(ctx)
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	stop1()
	<-done1
	c.Close()
	go serve(ctx)
	start := time.Now()
	c = e.client(ctx)
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("reconnected after a silent guest death in %v", time.Since(start))
}

// hasCap reports whether the process has capability bit n in effect.
func hasCap(n uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			fmt.Sscanf(strings.TrimSpace(v), "%x", &caps)
			return caps&(1<<n) != 0
		}
	}
	return false
}

type noClose struct{ net.Conn }

func (noClose) Close() error { return nil }

func TestShellQuote(t *testing.T) {
	tests := []struct {
		argv []string
		want string
	}{
		{[]string{"ls", "-la", "/tmp"}, "ls -la /tmp"},
		{[]string{"echo", "a b"}, "echo 'a b'"},
		{[]string{"echo", "it's"}, `echo 'it'\''s'`},
		{[]string{"echo", ""}, "echo ''"},
		{[]string{"echo", "$(rm -rf /)"}, "echo '$(rm -rf /)'"},
	}
	for _, tt := range tests {
		if got := ShellQuote(tt.argv); got != tt.want {
			t.Errorf("ShellQuote(%q) = %q, want %q", tt.argv, got, tt.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	s := newSigner(t)
	for _, tt := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{}, false},
		{Config{Signer: s}, false},
		{Config{Signer: s, HostKey: ssh.InsecureIgnoreHostKey()}, true},
		{Config{Signer: s, HostKey: ssh.InsecureIgnoreHostKey(), Timeout: -1}, false},
	} {
		if err := tt.cfg.Validate(); (err == nil) != tt.ok {
			t.Errorf("Validate(%+v) = %v", tt.cfg, err)
		}
	}
	if err := (&relay.Config{SerialSocket: "a"}).Validate(); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("relay validate: %v", err)
	}
}

// TestExecFastExit: a command that exits at once must not close its
// channel before the exec request is answered (the reply was lost).
func TestExecFastExit(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	for i := range 100 {
		if code, err := c.Exec(ctx, ExecRequest{Command: "true"}); err != nil || code != 0 {
			t.Fatalf("run %d: %d, %v", i, code, err)
		}
	}
}

// TestWaitReadyObserves: WaitReady tells Config.Observe how long it
// connected, shook hands and pinged (the phases of a fork's "agent" step).
func TestWaitReadyObserves(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	cfg := e.config()
	var mu sync.Mutex
	got := map[string]time.Duration{}
	var order []string
	cfg.Observe = func(phase string, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, phase)
		got[phase] += d
	}
	c, err := WaitReady(ctx, e.ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("phases %v: %v", order, got)
	for _, p := range []string{"connect", "handshake", "ping"} {
		if d, ok := got[p]; !ok || d <= 0 {
			t.Errorf("phase %s: %v, %v (want a positive time)", p, d, ok)
		}
	}
	// NoPing: the handshake is the last phase.
	clear(got)
	cfg.NoPing = true
	c2, err := WaitReady(ctx, e.ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, ok := got["ping"]; ok || got["handshake"] <= 0 {
		t.Errorf("with NoPing: phases %v, want a handshake and no ping", got)
	}
	if _, err := c2.Ping(ctx); err != nil {
		t.Errorf("client from WaitReady with NoPing: %v", err)
	}
}
