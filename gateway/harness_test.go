package gateway

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/gateway/internal/agenttest"
	"github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/internal/errs"
)

// Agent kinds a harness can run behind the gateway.
const (
	fakeAgent  = "fake"       // gateway/internal/agenttest
	guestAgent = "guestagent" // the real agent's SSH server, in process
)

var agentKinds = []string{fakeAgent, guestAgent}

// testKey is a client key pair with its OpenSSH private key file.
type testKey struct {
	signer gossh.Signer
	file   string
}

func newTestKey(t testing.TB, dir, name string) testKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := gossh.MarshalPrivateKey(priv, name)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return testKey{signer: signer, file: file}
}

// fakeUsers is an in-memory Users. A user's Credential is its key's
// fingerprint.
type fakeUsers struct {
	mu      sync.Mutex
	byKey   map[string]User
	fail    error // returned by Authenticate when set
	watches map[string]map[*context.CancelCauseFunc]bool
}

func (f *fakeUsers) add(k gossh.PublicKey, u User) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u.Credential = gossh.FingerprintSHA256(k)
	f.byKey[string(k.Marshal())] = u
}

// remove unregisters k and ends what was bound to it.
func (f *fakeUsers) remove(k gossh.PublicKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.byKey, string(k.Marshal()))
	for cancel := range f.watches[gossh.FingerprintSHA256(k)] {
		(*cancel)(errs.New(errs.Unauthenticated, "key removed"))
	}
	delete(f.watches, gossh.FingerprintSHA256(k))
}

func (f *fakeUsers) Bind(ctx context.Context, u User) (context.Context, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	bound, cancel := context.WithCancelCause(ctx)
	known := false
	for _, v := range f.byKey {
		known = known || v.Credential == u.Credential
	}
	if !known {
		cancel(errs.New(errs.Unauthenticated, "key removed"))
		return bound, func() {}
	}
	if f.watches == nil {
		f.watches = map[string]map[*context.CancelCauseFunc]bool{}
	}
	if f.watches[u.Credential] == nil {
		f.watches[u.Credential] = map[*context.CancelCauseFunc]bool{}
	}
	f.watches[u.Credential][&cancel] = true
	return bound, func() {
		f.mu.Lock()
		delete(f.watches[u.Credential], &cancel)
		f.mu.Unlock()
		cancel(context.Canceled)
	}
}

// bound counts the live bindings (for leak checks).
func (f *fakeUsers) bound() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, m := range f.watches {
		n += len(m)
	}
	return n
}

func (f *fakeUsers) Authenticate(_ context.Context, k gossh.PublicKey) (User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return User{}, f.fail
	}
	u, ok := f.byKey[string(k.Marshal())]
	if !ok {
		return User{}, errs.New(errs.NotFound, "key %s: %w", gossh.FingerprintSHA256(k), errs.NotFound)
	}
	return u, nil
}

func (f *fakeUsers) Register(_ context.Context, name string, k gossh.PublicKey, _ string) (User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range f.byKey {
		if u.Name == name {
			return User{}, errs.New(errs.AlreadyExists, "user %s already exists", name)
		}
	}
	u := User{Name: name, Credential: gossh.FingerprintSHA256(k)}
	f.byKey[string(k.Marshal())] = u
	return u, nil
}

type fakeVM struct {
	owner   string
	running bool
}

// fakeVMs is VMs over one in-process agent shared by every VM.
type fakeVMs struct {
	client *gossh.Client
	mu     sync.Mutex
	vms    map[string]*fakeVM
}

func (f *fakeVMs) Agent(_ context.Context, u User, name string) (*gossh.Client, func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vm, ok := f.vms[name]
	if !ok || (vm.owner != u.Name && !u.Admin) {
		return nil, nil, errs.New(errs.NotFound, "vm %s: %w", name, errs.NotFound)
	}
	if !vm.running {
		return nil, nil, errs.New(errs.FailedPrecondition, "vm %s is stopped: run `ssh host start %s`", name, name)
	}
	return f.client, func() {}, nil
}

func (f *fakeVMs) setRunning(name string, running bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vms[name].running = running
}

// fakeCommands is a tiny command grammar.
type fakeCommands struct {
	vms *fakeVMs
	mu  sync.Mutex
	log []string
}

func (f *fakeCommands) Run(ctx context.Context, u User, args []string, stdin io.Reader, stdout, stderr io.Writer, interactive bool) int {
	f.mu.Lock()
	f.log = append(f.log, fmt.Sprintf("%s:%s:%v", u.Name, strings.Join(args, " "), interactive))
	f.mu.Unlock()
	switch args[0] {
	case "help":
		fmt.Fprintln(stdout, "usage: list | create | destroy | whoami | help")
		return 0
	case "whoami":
		fmt.Fprintln(stdout, u.Name)
		return 0
	case "upper":
		b, _ := io.ReadAll(stdin)
		fmt.Fprint(stdout, strings.ToUpper(string(b)))
		return 0
	case "start":
		f.vms.setRunning(args[1], true)
		fmt.Fprintf(stdout, "started %s\n", args[1])
		return 0
	case "fail":
		fmt.Fprintln(stderr, "it failed")
		return 3
	}
	fmt.Fprintf(stderr, "unknown command %q\n", args[0])
	return 2
}

// dashModel is the test dashboard: one line, q quits.
type dashModel struct {
	text string
	size string
}

func (m dashModel) Init() tea.Cmd { return nil }
func (m dashModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.KeyMsg:
		if msg.String() == "q" {
			return m, tea.Quit
		}
	case tea.WindowSizeMsg:
		m.size = fmt.Sprintf("%dx%d", msg.Width, msg.Height)
	}
	return m, nil
}
func (m dashModel) View() string { return m.text + "\nsize " + m.size + "\n" }

type harness struct {
	t        testing.TB
	dir      string
	srv      *Server
	root     string  // the guest's files (home of its root user)
	hostKey  testKey // the host's key for the agent
	alice    testKey // owns vm "web"
	bob      testKey // owns nothing
	admin    testKey
	stranger testKey // unregistered
	users    *fakeUsers
	// dashboard, when set before a session starts, replaces dashModel.
	dashboard Dashboard
	vms       *fakeVMs
	cmds      *fakeCommands
}

func newHarness(t testing.TB, tweak func(*Config)) *harness {
	t.Helper()
	return newHarnessWith(t, fakeAgent, tweak)
}

// startGuestAgent serves the real guest agent's SSH server on ln, with the
// guest's root account at home.
func startGuestAgent(t testing.TB, ln net.Listener, hostKey gossh.PublicKey, dir, home string) {
	t.Helper()
	fsRoot := filepath.Join(dir, "guestfs")
	if err := os.MkdirAll(filepath.Join(fsRoot, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	passwd := "root:x:0:0:root:" + home + ":/bin/sh\n"
	if err := os.WriteFile(filepath.Join(fsRoot, "etc", "passwd"), []byte(passwd), 0o644); err != nil {
		t.Fatal(err)
	}
	srv, err := guestagent.NewServer(guestagent.Config{
		AuthorizedKey: hostKey,
		HostKeyPath:   filepath.Join(dir, "agent_host_key"),
		Root:          fsRoot,
		// Every machine hook is set: a test must never change the host.
		Power:       func(bool) error { return errors.New("not in tests") },
		SetHostname: func(string) error { return errors.New("not in tests") },
		SetTime:     func(time.Time) error { return errors.New("not in tests") },
		ReseedRNG:   func([]byte) error { return errors.New("not in tests") },
		SetNetwork: func(net.HardwareAddr, netip.Prefix, netip.Addr) error {
			return errors.New("not in tests")
		},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); srv.ServeConn(ctx, c) }()
		}
	}()
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
}

func dialAgent(t testing.TB, ln net.Listener, signer gossh.Signer) *gossh.Client {
	t.Helper()
	c, err := gossh.Dial("unix", ln.Addr().String(), &gossh.ClientConfig{
		User:            "root",
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newHarnessWith(t testing.TB, kind string, tweak func(*Config)) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{t: t, dir: dir}
	h.hostKey = newTestKey(t, dir, "host_key")
	h.alice = newTestKey(t, dir, "alice")
	h.bob = newTestKey(t, dir, "bob")
	h.admin = newTestKey(t, dir, "admin")
	h.stranger = newTestKey(t, dir, "stranger")

	root := filepath.Join(dir, "guest")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "hello.txt"), []byte("hello from the guest\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.root = root
	ln, err := net.Listen("unix", filepath.Join(dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	switch kind {
	case fakeAgent:
		a, err := agenttest.Start(ln, h.hostKey.signer.PublicKey(), root)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
	case guestAgent:
		startGuestAgent(t, ln, h.hostKey.signer.PublicKey(), dir, root)
	default:
		t.Fatalf("unknown agent kind %q", kind)
	}
	client := dialAgent(t, ln, h.hostKey.signer)
	t.Cleanup(func() { client.Close() })

	h.users = &fakeUsers{byKey: map[string]User{}}
	h.users.add(h.alice.signer.PublicKey(), User{Name: "alice"})
	h.users.add(h.bob.signer.PublicKey(), User{Name: "bob"})
	h.users.add(h.admin.signer.PublicKey(), User{Name: "root", Admin: true})
	h.vms = &fakeVMs{client: client, vms: map[string]*fakeVM{
		"web":  {owner: "alice", running: true},
		"idle": {owner: "alice", running: false},
	}}
	h.cmds = &fakeCommands{vms: h.vms}

	cfg := Config{
		Bind:        "127.0.0.1:0",
		HostKeyPath: filepath.Join(dir, "gateway", "host_ed25519"),
		Policy:      PolicyOpen,
		Log:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	dash := func(sess ssh.Session, u User, r *lipgloss.Renderer) tea.Model {
		if h.dashboard != nil {
			return h.dashboard(sess, u, r)
		}
		return dashModel{text: r.NewStyle().Bold(true).Render("dashboard for " + u.Name)}
	}
	h.srv, err = New(cfg, h.users, h.vms, h.cmds, dash)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	return h
}

func (h *harness) port() string {
	_, p, _ := net.SplitHostPort(h.srv.Addr().String())
	return p
}

// dial connects a Go SSH client to the gateway as login with key.
func (h *harness) dial(login string, key testKey) *gossh.Client {
	h.t.Helper()
	c, err := h.dialErr(login, key)
	if err != nil {
		h.t.Fatalf("dial %s: %v", login, err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

func (h *harness) dialErr(login string, key testKey) (*gossh.Client, error) {
	want := h.srv.HostKey()
	return gossh.Dial("tcp", h.srv.Addr().String(), &gossh.ClientConfig{
		User: login,
		Auth: []gossh.AuthMethod{gossh.PublicKeys(key.signer)},
		HostKeyCallback: func(_ string, _ net.Addr, k gossh.PublicKey) error {
			if !bytes.Equal(k.Marshal(), want.Marshal()) {
				return errors.New("host key mismatch")
			}
			return nil
		},
		Timeout: 10 * time.Second,
	})
}

// run runs cmd on a new session and returns stdout, stderr and exit status
// (-1 for a signal).
func run(t testing.TB, c *gossh.Client, cmd string, stdin io.Reader) (string, string, int) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatalf("new session: %v", err)
	}
	defer s.Close()
	var out, errb bytes.Buffer
	s.Stdout, s.Stderr, s.Stdin = &out, &errb, stdin
	err = s.Run(cmd)
	return out.String(), errb.String(), exitCode(t, err)
}

func exitCode(t testing.TB, err error) int {
	t.Helper()
	var ee *gossh.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		if ee.Signal() != "" {
			return -1
		}
		return ee.ExitStatus()
	}
	t.Fatalf("session: %v", err)
	return 0
}

// waitFor reads from r into buf until buf contains want or the deadline.
type waitBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan struct{}
}

func newWaitBuffer() *waitBuffer { return &waitBuffer{ch: make(chan struct{}, 1)} }

func (w *waitBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	select {
	case w.ch <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *waitBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor waits until the output contains want.
func (w *waitBuffer) waitFor(t testing.TB, want string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if strings.Contains(w.String(), want) {
			return
		}
		select {
		case <-w.ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %q in output:\n%q", want, w.String())
		}
	}
}

// waitForWithin reports whether the output contains want within d.
func (w *waitBuffer) waitForWithin(want string, d time.Duration) bool {
	deadline := time.After(d)
	for {
		if strings.Contains(w.String(), want) {
			return true
		}
		select {
		case <-w.ch:
		case <-deadline:
			return false
		}
	}
}

// forEachAgent runs test against each agent kind.
func forEachAgent(t *testing.T, test func(t *testing.T, kind string)) {
	for _, kind := range agentKinds {
		t.Run(kind, func(t *testing.T) { test(t, kind) })
	}
}
