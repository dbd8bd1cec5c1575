package vsockcli

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

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
