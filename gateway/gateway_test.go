package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
	gossh "golang.org/x/crypto/ssh"
)

func TestRelayExec(t *testing.T) { forEachAgent(t, testRelayExec) }

func testRelayExec(t *testing.T, kind string) {
	h := newHarnessWith(t, kind, nil)
	c := h.dial("web", h.alice)
	tests := []struct {
		name     string
		cmd      string
		stdin    string
		wantOut  string
		wantErr  string
		wantExit int
	}{
		{"arithmetic and exit status", "echo $((6*7)); exit 3", "", "42\n", "", 3},
		{"true", "true", "", "", "", 0},
		{"stdin to stdout", "tr a-z A-Z", "hello gateway", "HELLO GATEWAY", "", 0},
		{"stderr apart", "echo out; echo err >&2; exit 1", "", "out\n", "err\n", 1},
		{"working directory is the guest", "cat hello.txt", "", "hello from the guest\n", "", 0},
		{"exit signal", "kill -TERM $$", "", "", "", -1},
		{"large output", "head -c 3000000 /dev/zero | wc -c", "", "3000000\n", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in io.Reader
			if tt.stdin != "" {
				in = strings.NewReader(tt.stdin)
			}
			out, errOut, code := run(t, c, tt.cmd, in)
			if out != tt.wantOut || errOut != tt.wantErr || code != tt.wantExit {
				t.Fatalf("got out=%q err=%q exit=%d; want out=%q err=%q exit=%d", out, errOut, code, tt.wantOut, tt.wantErr, tt.wantExit)
			}
		})
	}
}

func TestRelayPTYResizeAndTerm(t *testing.T) { forEachAgent(t, testRelayPTYResizeAndTerm) }

func testRelayPTYResizeAndTerm(t *testing.T, kind string) {
	h := newHarnessWith(t, kind, nil)
	c := h.dial("web", h.alice)
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Setenv("LANG", "C.UTF-8"); err != nil {
		t.Fatalf("setenv: %v", err)
	}
	if err := s.RequestPty("xterm-256color", 40, 100, gossh.TerminalModes{gossh.ECHO: 0}); err != nil {
		t.Fatal(err)
	}
	out := newWaitBuffer()
	s.Stdout = out
	stdin, err := s.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(stdin, "stty size; echo term=$TERM lang=$LANG; tty\n")
	out.waitFor(t, "40 100")
	out.waitFor(t, "term=xterm-256color lang=C.UTF-8")
	out.waitFor(t, "/dev/pts/")
	if err := s.WindowChange(50, 120); err != nil {
		t.Fatal(err)
	}
	// The relay forwards requests and data on separate paths, so the
	// first stty may run before the resize lands; the size must follow.
	for i := 0; ; i++ {
		fmt.Fprintf(stdin, "stty size\n")
		if out.waitForWithin("50 120", time.Second) {
			break
		}
		if i == 9 {
			t.Fatalf("the window change never reached the PTY:\n%q", out.String())
		}
	}
	fmt.Fprintf(stdin, "exit 7\n")
	if code := exitCode(t, s.Wait()); code != 7 {
		t.Fatalf("exit %d, want 7", code)
	}
}

func TestRelaySFTP(t *testing.T) { forEachAgent(t, testRelaySFTP) }

func testRelaySFTP(t *testing.T, kind string) {
	h := newHarnessWith(t, kind, nil)
	c := h.dial("web", h.alice)
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()

	data := make([]byte, 10<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	f, err := sc.Create("big.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadFrom(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(filepath.Join(h.root, "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(onDisk) != sha256.Sum256(data) {
		t.Fatal("file in the guest differs from the one sent")
	}
	g, err := sc.Open("big.bin")
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(g)
	g.Close()
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(back) != sha256.Sum256(data) {
		t.Fatal("file read back differs")
	}
	entries, err := sc.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, ","); !strings.Contains(got, "hello.txt") || !strings.Contains(got, "big.bin") {
		t.Fatalf("listing = %s", got)
	}
}

// startHTTP serves a fixed body on loopback (the "guest's" web server).
func startHTTP(t testing.TB) net.Addr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "guest http %s", r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr()
}

func httpGetVia(t testing.TB, dial func() (net.Conn, error), path string) (string, error) {
	t.Helper()
	tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return dial() }}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := cl.Get("http://guest" + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestRelayDirectTCPIP(t *testing.T) { forEachAgent(t, testRelayDirectTCPIP) }

func testRelayDirectTCPIP(t *testing.T, kind string) {
	h := newHarnessWith(t, kind, nil)
	addr := startHTTP(t)
	c := h.dial("web", h.alice)
	body, err := httpGetVia(t, func() (net.Conn, error) { return c.Dial("tcp", addr.String()) }, "/x")
	if err != nil {
		t.Fatal(err)
	}
	if body != "guest http /x" {
		t.Fatalf("body %q", body)
	}
	// A refused target is reported as an open failure, not a hang.
	if _, err := c.Dial("tcp", "127.0.0.1:1"); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
}

// TestIsolation: another user's key cannot reach alice's VM by exec, shell,
// sftp or forwarding; nothing reveals that the VM exists; an admin can.
func TestIsolation(t *testing.T) { forEachAgent(t, testIsolation) }

func testIsolation(t *testing.T, kind string) {
	h := newHarnessWith(t, kind, nil)
	addr := startHTTP(t)
	bob := h.dial("web", h.bob)

	out, errOut, code := run(t, bob, "echo $((6*7))", nil)
	if strings.Contains(out, "42") || code == 0 {
		t.Fatalf("bob's exec reached the VM: out=%q err=%q exit=%d", out, errOut, code)
	}
	if strings.Contains(errOut, "web") && !strings.Contains(errOut, "unknown command") {
		t.Fatalf("stderr reveals the vm: %q", errOut)
	}
	if _, err := sftp.NewClient(bob); err == nil {
		t.Fatal("bob got an sftp session")
	}
	if _, err := bob.Dial("tcp", addr.String()); err == nil {
		t.Fatal("bob's forward was opened")
	}
	// The same for a VM that does not exist: indistinguishable.
	nobody := h.dial("nosuchvm", h.bob)
	out2, errOut2, code2 := run(t, nobody, "echo $((6*7))", nil)
	if out2 != out || strings.ReplaceAll(errOut2, "nosuchvm", "web") != errOut || code2 != code {
		t.Fatalf("existing and missing vm differ: %q/%q/%d vs %q/%q/%d", out, errOut, code, out2, errOut2, code2)
	}

	admin := h.dial("web", h.admin)
	if out, _, code := run(t, admin, "echo $((6*7))", nil); out != "42\n" || code != 0 {
		t.Fatalf("admin: out=%q exit=%d", out, code)
	}
}

func TestFrontDoorCommands(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial("alice", h.alice)
	tests := []struct {
		name     string
		cmd      string
		stdin    string
		wantOut  string
		wantErr  string
		wantExit int
	}{
		{"no command no pty prints help", "", "", "usage: list | create | destroy | whoami | help\n", "", 0},
		{"whoami", "whoami", "", "alice\n", "", 0},
		{"stdin reaches the command", "upper", "abc", "ABC", "", 0},
		{"exit code passes through", "fail", "", "", "it failed\n", 3},
		{"quoted arguments", `nope "a b"`, "", "", "unknown command \"nope\"\n", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := c.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var out, errb bytes.Buffer
			s.Stdout, s.Stderr, s.Stdin = &out, &errb, strings.NewReader(tt.stdin)
			if tt.cmd == "" {
				err = s.Shell()
				if err == nil {
					err = s.Wait()
				}
			} else {
				err = s.Run(tt.cmd)
			}
			code := exitCode(t, err)
			if out.String() != tt.wantOut || errb.String() != tt.wantErr || code != tt.wantExit {
				t.Fatalf("got out=%q err=%q exit=%d", out.String(), errb.String(), code)
			}
		})
	}
	h.cmds.mu.Lock()
	defer h.cmds.mu.Unlock()
	if got := h.cmds.log[1]; got != "alice:whoami:false" {
		t.Fatalf("command log %q: want non-interactive whoami as alice", got)
	}
}

func TestFrontDoorPTYCommandIsInteractive(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial("alice", h.alice)
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.RequestPty("xterm", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	s.Stdout = &out
	// Window changes during a command must not wedge the session.
	if err := s.Start("whoami"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		_ = s.WindowChange(30+i, 90)
	}
	if code := exitCode(t, s.Wait()); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if out.String() != "alice\r\n" {
		t.Fatalf("out %q", out.String())
	}
	h.cmds.mu.Lock()
	defer h.cmds.mu.Unlock()
	if h.cmds.log[0] != "alice:whoami:true" {
		t.Fatalf("log %v", h.cmds.log)
	}
}

func TestDashboard(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial("alice", h.alice)
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.RequestPty("xterm-256color", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	out := newWaitBuffer()
	s.Stdout = out
	in, _ := s.StdinPipe()
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "dashboard for alice")
	out.waitFor(t, "size 80x24")
	if err := s.WindowChange(40, 100); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "size 100x40")
	fmt.Fprint(in, "q")
	if code := exitCode(t, s.Wait()); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestDashboardNoSize: a client that requests a PTY of 0x0 (script, some
// CI runners, ssh -tt without a terminal) gets the dashboard at 80x24, not
// a "too small" screen; a later real size applies.
func TestDashboardNoSize(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial("alice", h.alice)
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.RequestPty("xterm-256color", 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	out := newWaitBuffer()
	s.Stdout = out
	in, _ := s.StdinPipe()
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "dashboard for alice")
	out.waitFor(t, "size 80x24")
	if err := s.WindowChange(40, 100); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "size 100x40")
	if err := s.WindowChange(0, 0); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "size 80x24")
	fmt.Fprint(in, "q")
	if code := exitCode(t, s.Wait()); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestUnknownKeyNonInteractive(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AuthRate = 3 })
	for i := 0; i < 3; i++ {
		c := h.dial("whoever", h.stranger)
		_, errOut, code := run(t, c, "list", nil)
		if code != ExitUnregistered || !strings.Contains(errOut, "is not registered") || !strings.Contains(errOut, gossh.FingerprintSHA256(h.stranger.signer.PublicKey())) {
			t.Fatalf("attempt %d: err=%q exit=%d", i, errOut, code)
		}
	}
	// The fourth is refused with a clear message, not dropped.
	c := h.dial("whoever", h.stranger)
	_, errOut, code := run(t, c, "list", nil)
	if code != 8 || !strings.Contains(errOut, "too many failed authentication attempts from 127.0.0.1; try again in") {
		t.Fatalf("rate limited: err=%q exit=%d", errOut, code)
	}
	if _, err := c.Dial("tcp", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "too many failed") {
		t.Fatalf("forward while limited: %v", err)
	}
	// A registered key from the same address still gets in.
	a := h.dial("alice", h.alice)
	if out, _, code := run(t, a, "whoami", nil); out != "alice\n" || code != 0 {
		t.Fatalf("alice while the ip is limited: %q %d", out, code)
	}
}

func TestKeyboardInteractiveExplains(t *testing.T) {
	h := newHarness(t, nil)
	var instruction string
	_, err := gossh.Dial("tcp", h.srv.Addr().String(), &gossh.ClientConfig{
		User: "alice",
		Auth: []gossh.AuthMethod{gossh.KeyboardInteractive(func(name, instr string, q []string, echo []bool) ([]string, error) {
			instruction = instr
			return nil, nil
		})},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(),
		Timeout:         10 * time.Second,
	})
	if err == nil {
		t.Fatal("keyboard-interactive login succeeded")
	}
	if !strings.Contains(instruction, "public keys only") {
		t.Fatalf("instruction %q", instruction)
	}
}

func TestAuthBackendDown(t *testing.T) {
	h := newHarness(t, nil)
	h.users.mu.Lock()
	h.users.fail = fmt.Errorf("database is locked")
	h.users.mu.Unlock()
	c := h.dial("alice", h.alice)
	_, errOut, code := run(t, c, "whoami", nil)
	if code != 7 || !strings.Contains(errOut, "cannot check your key") {
		t.Fatalf("err=%q exit=%d", errOut, code)
	}
}

func TestStoppedVM(t *testing.T) { forEachAgent(t, testStoppedVM) }

func testStoppedVM(t *testing.T, kind string) {
	h := newHarnessWith(t, kind, nil)
	c := h.dial("idle", h.alice)
	_, errOut, code := run(t, c, "echo hi", nil)
	if code != 5 || !strings.Contains(errOut, "vm idle is stopped: run `ssh host start idle`") {
		t.Fatalf("exec: err=%q exit=%d", errOut, code)
	}
	if _, err := c.Dial("tcp", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("forward to a stopped vm: %v", err)
	}

	// Interactive: offered to start it, then lands in its shell.
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.RequestPty("xterm", 30, 90, gossh.TerminalModes{gossh.ECHO: 0}); err != nil {
		t.Fatal(err)
	}
	out := newWaitBuffer()
	s.Stdout, s.Stderr = out, out
	in, _ := s.StdinPipe()
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "Start idle now? [y/N]")
	fmt.Fprint(in, "y")
	out.waitFor(t, "started idle")
	fmt.Fprint(in, "stty size; exit 4\n")
	out.waitFor(t, "30 90")
	if code := exitCode(t, s.Wait()); code != 4 {
		t.Fatalf("exit %d", code)
	}
}

func TestSignUp(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Policy, c.InviteCode = PolicyInvite, "sekrit" })
	c := h.dial("carol", h.stranger)
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.RequestPty("xterm-256color", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	out := newWaitBuffer()
	s.Stdout = out
	in, _ := s.StdinPipe()
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "Pick a user name")
	fmt.Fprint(in, "carol\r")
	out.waitFor(t, "invite:")
	fmt.Fprint(in, "guess\r")
	out.waitFor(t, "wrong invite code")
	fmt.Fprint(in, "sekrit\r")
	out.waitFor(t, "dashboard for carol")
	fmt.Fprint(in, "q")
	if code := exitCode(t, s.Wait()); code != 0 {
		t.Fatalf("exit %d", code)
	}
	u, err := h.users.Authenticate(context.Background(), h.stranger.signer.PublicKey())
	if err != nil || u.Name != "carol" {
		t.Fatalf("after sign-up: %v %v", u, err)
	}
	// The key is now carol's everywhere.
	c2 := h.dial("x", h.stranger)
	if out, _, _ := run(t, c2, "whoami", nil); out != "carol\n" {
		t.Fatalf("whoami %q", out)
	}
}

func TestSignUpClosed(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Policy = PolicyClosed })
	c := h.dial("x", h.stranger)
	_, errOut, code := run(t, c, "whoami", nil)
	if code != ExitUnregistered || !strings.Contains(errOut, "sign-up is closed") {
		t.Fatalf("err=%q exit=%d", errOut, code)
	}
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.RequestPty("xterm", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	out := newWaitBuffer()
	s.Stdout = out
	in, _ := s.StdinPipe()
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "Sign-up is closed")
	fmt.Fprint(in, "q")
	if code := exitCode(t, s.Wait()); code != ExitUnregistered {
		t.Fatalf("exit %d", code)
	}
}

func TestHostKeyPersists(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "host_key")
	a, err := LoadOrCreateHostKey(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	if st, _ := os.Stat(filepath.Dir(path)); st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", st.Mode())
	}
	b, err := LoadOrCreateHostKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.PublicKey().Marshal(), b.PublicKey().Marshal()) || a.PublicKey().Type() != gossh.KeyAlgoED25519 {
		t.Fatal("host key changed or is not ed25519")
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateHostKey(path); err == nil {
		t.Fatal("garbage key accepted")
	}
}

func TestRunShutsDown(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ShutdownGrace = 200 * time.Millisecond })
	// An open interactive session must not keep Run from returning.
	c := h.dial("web", h.alice)
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start("sleep 30"); err != nil {
		t.Fatal(err)
	}
	// The harness cleanup cancels Run and fails if it does not return.
}

// TestRelayManyShortSessions is the regression test for a race: a command
// that exits at once made the agent's exec reply arrive after its close, and
// the relay closed the user's channel before passing the reply on (the
// client saw EOF instead of a started session).
func TestRelayManyShortSessions(t *testing.T) { forEachAgent(t, testRelayManyShortSessions) }

func testRelayManyShortSessions(t *testing.T, kind string) {
	h := newHarnessWith(t, kind, nil)
	c := h.dial("web", h.alice)
	for i := 0; i < 400; i++ {
		s, err := c.NewSession()
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		if err := s.Start("true"); err != nil {
			t.Fatalf("session %d: start: %v", i, err)
		}
		if err := s.Wait(); err != nil {
			t.Fatalf("session %d: wait: %v", i, err)
		}
		s.Close()
	}
}
