package e2e

// Issue 5's proof: the SSH front door of a real `minions serve`, driven by
// real clients (golang.org/x/crypto/ssh, and Debian's OpenSSH ssh, scp and
// sftp, the dashboard in a real terminal under tmux) against a real VM.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
)

// sshKey is a user's key pair, on disk for OpenSSH and in memory for
// x/crypto/ssh.
type sshKey struct {
	name    string
	signer  ssh.Signer
	file    string // private key, OpenSSH format, mode 0600
	pubFile string // authorized_keys line
}

func newSSHKey(tb testing.TB, dir, name string) sshKey {
	tb.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		tb.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, name)
	if err != nil {
		tb.Fatal(err)
	}
	k := sshKey{name: name, signer: signer, file: filepath.Join(dir, name), pubFile: filepath.Join(dir, name+".pub")}
	if err := os.WriteFile(k.file, pem.EncodeToMemory(block), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(k.pubFile, ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
		tb.Fatal(err)
	}
	return k
}

// sshDaemon is a `minions serve` process started by a test.
type sshDaemon struct {
	cmd     *exec.Cmd
	sshAddr string
	port    string
	hostKey ssh.PublicKey
	known   string // known_hosts file pinning hostKey
	done    chan struct{}
	logMu   sync.Mutex
	log     bytes.Buffer
}

func freePort(tb testing.TB) string {
	tb.Helper()
	givenPorts.Lock()
	defer givenPorts.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		addr := l.Addr().(*net.TCPAddr).AddrPort().String()
		l.Close()
		// The kernel may hand a port just closed out again: a test that
		// asks for several (serve's api, ssh, http and admin ports) must
		// not get one twice (TestServeBanner once did).
		if !givenPorts.m[addr] {
			givenPorts.m[addr] = true
			return addr
		}
	}
}

// givenPorts are the addresses freePort has returned in this process.
var givenPorts = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

// startDaemon runs `minions serve` on loopback ports and waits until its
// SSH front door answers. sshAddr "" picks a free port.
func startDaemon(tb testing.TB, dir, sshAddr string, extra ...string) *sshDaemon {
	tb.Helper()
	if sshAddr == "" {
		sshAddr = freePort(tb)
	}
	d := &sshDaemon{sshAddr: sshAddr, done: make(chan struct{})}
	_, d.port, _ = net.SplitHostPort(sshAddr)
	args := append([]string{"serve", "--config", "/dev/null", "--ssh-bind", sshAddr, "--bind", freePort(tb), "--admin-bind", freePort(tb)}, extra...)
	d.cmd = exec.Command(filepath.Join(binDir, "minions"), args...)
	d.cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
	d.cmd.Stdout, d.cmd.Stderr = (*lockedBuf)(d), (*lockedBuf)(d)
	if err := d.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-d.done:
			tb.Fatalf("minions serve exited at start: %v\n%s", d.cmd.ProcessState, d.logs())
		default:
		}
		c, err := net.DialTimeout("tcp", sshAddr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("ssh front door %s not listening after 60s:\n%s", sshAddr, d.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The host key is persistent: read it where the daemon keeps it.
	b, err := os.ReadFile(filepath.Join(stateDir, "keys", "ssh_host_ed25519"))
	if err != nil {
		tb.Fatalf("gateway host key: %v", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		tb.Fatalf("gateway host key: %v", err)
	}
	d.hostKey = s.PublicKey()
	d.known = filepath.Join(dir, "known_hosts-"+d.port)
	line := fmt.Sprintf("[127.0.0.1]:%s %s", d.port, ssh.MarshalAuthorizedKey(d.hostKey))
	if err := os.WriteFile(d.known, []byte(line), 0o644); err != nil {
		tb.Fatal(err)
	}
	return d
}

type lockedBuf sshDaemon

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	return l.log.Write(p)
}

func (d *sshDaemon) logs() string {
	d.logMu.Lock()
	defer d.logMu.Unlock()
	return lastLines(d.log.String(), 40)
}

// stop sends SIGTERM and waits for a graceful exit (VMs keep running).
func (d *sshDaemon) stop(tb testing.TB) {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		if !d.cmd.ProcessState.Success() {
			tb.Errorf("minions serve exited with %v after SIGTERM:\n%s", d.cmd.ProcessState, d.logs())
		}
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		tb.Errorf("minions serve ignored SIGTERM for 30s:\n%s", d.logs())
	}
}

// dial connects to the front door as user with k, pinning the host key.
func (d *sshDaemon) dial(tb testing.TB, user string, k sshKey) *ssh.Client {
	tb.Helper()
	c, err := ssh.Dial("tcp", d.sshAddr, &ssh.ClientConfig{
		User: user, Auth: []ssh.AuthMethod{ssh.PublicKeys(k.signer)},
		HostKeyCallback: ssh.FixedHostKey(d.hostKey), Timeout: 10 * time.Second,
	})
	if err != nil {
		tb.Fatalf("ssh %s@%s as %s: %v", user, d.sshAddr, k.name, err)
	}
	return c
}

// run is one finished client process or session.
type sshRun struct {
	stdout, stderr string
	code           int
}

func (r sshRun) String() string {
	return fmt.Sprintf("exit %d\nstdout: %q\nstderr: %q", r.code, lastLines(r.stdout, 20), lastLines(r.stderr, 20))
}

// openssh runs one of Debian's OpenSSH tools (ssh, scp, sftp) with k
// against d, pinning d's host key.
func (d *sshDaemon) openssh(tb testing.TB, k sshKey, stdin string, tool string, args ...string) sshRun {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := runClient(d.opensshCmd(ctx, k, tool, args...), stdin)
	if err != nil {
		tb.Fatalf("%s %v: %v", tool, args, err)
	}
	return r
}

func (d *sshDaemon) opensshCmd(ctx context.Context, k sshKey, tool string, args ...string) *exec.Cmd {
	portFlag := "-P"
	if tool == "ssh" {
		portFlag = "-p"
	}
	all := []string{
		"-F", "/dev/null", "-i", k.file, portFlag, d.port,
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + d.known,
		"-o", "ConnectTimeout=10",
	}
	cmd := exec.CommandContext(ctx, tool, append(all, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+filepath.Dir(k.file))
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func runClient(cmd *exec.Cmd, stdin string) (sshRun, error) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = strings.NewReader(stdin)
	err := cmd.Run()
	r := sshRun{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
		err = nil
	}
	return r, err
}

// session runs cmd in a new session on c and returns its outcome. A
// session that ends without an exit status is a failure.
func sshSession(tb testing.TB, c *ssh.Client, cmd, stdin string) sshRun {
	tb.Helper()
	s, err := c.NewSession()
	if err != nil {
		tb.Fatalf("new session: %v", err)
	}
	defer s.Close()
	var out, errb bytes.Buffer
	s.Stdout, s.Stderr, s.Stdin = &out, &errb, strings.NewReader(stdin)
	err = s.Run(cmd)
	r := sshRun{stdout: out.String(), stderr: errb.String()}
	var ee *ssh.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitStatus()
	case err != nil:
		tb.Fatalf("session %q: %v (%s)", cmd, err, r)
	}
	return r
}

// terminal is a real terminal (a tmux pane) running a client.
type terminal struct {
	tb   testing.TB
	sock string
}

// openTerminal runs argv in a detached tmux session of cols x rows.
func openTerminal(tb testing.TB, dir string, cols, rows int, argv ...string) *terminal {
	tb.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		tb.Skip("tmux is not installed (scripts/packages.txt lists it)")
	}
	t := &terminal{tb: tb, sock: filepath.Join(dir, fmt.Sprintf("tmux-%d", time.Now().UnixNano()))}
	args := []string{"new-session", "-d", "-s", "t", "-x", fmt.Sprint(cols), "-y", fmt.Sprint(rows)}
	t.tmux(append(args, shellJoin(argv))...)
	t.tmux("set-option", "-t", "t", "remain-on-exit", "on")
	tb.Cleanup(func() { exec.Command("tmux", "-S", t.sock, "kill-server").Run() })
	return t
}

func (t *terminal) tmux(args ...string) string {
	t.tb.Helper()
	cmd := exec.Command("tmux", append([]string{"-S", t.sock}, args...)...)
	cmd.Env = append(os.Environ(), "TERM=xterm-256color")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.tb.Fatalf("tmux %v: %v: %s", args, err, out)
	}
	return string(out)
}

// screen is what the terminal shows now.
func (t *terminal) screen() string { return t.tmux("capture-pane", "-p", "-t", "t") }

// keys sends tmux key names (Enter, Tab, C-u, Escape, C-]).
func (t *terminal) keys(keys ...string) { t.tmux(append([]string{"send-keys", "-t", "t"}, keys...)...) }

// typ types text literally.
func (t *terminal) typ(s string) { t.tmux("send-keys", "-t", "t", "-l", s) }

// waitFor waits until the screen satisfies ok and returns it.
func (t *terminal) waitFor(what string, timeout time.Duration, ok func(string) bool) string {
	t.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := t.screen()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.tb.Fatalf("terminal: no %s after %s; screen:\n%s", what, timeout, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (t *terminal) waitText(timeout time.Duration, texts ...string) string {
	t.tb.Helper()
	return t.waitFor(fmt.Sprintf("%q", texts), timeout, func(s string) bool {
		for _, x := range texts {
			if !strings.Contains(s, x) {
				return false
			}
		}
		return true
	})
}

// dead reports whether the client in the pane has exited.
func (t *terminal) dead() bool {
	return strings.TrimSpace(t.tmux("display-message", "-p", "-t", "t", "#{pane_dead}")) == "1"
}

func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// dashboard opens `ssh -t host` for k in a 120x36 terminal.
func (d *sshDaemon) dashboard(tb testing.TB, dir string, k sshKey) *terminal {
	tb.Helper()
	cmd := d.opensshCmd(context.Background(), k, "ssh", "-t", "127.0.0.1")
	return openTerminal(tb, dir, 120, 36, cmd.Args...)
}

func vmByName(t *testing.T, name string) (vmJSON, bool) {
	var list []vmJSON
	mustJSON(t, &list, "list")
	for _, v := range list {
		if v.Name == name {
			return v, true
		}
	}
	return vmJSON{}, false
}

func hasEscape(s string) bool { return strings.ContainsRune(s, '\x1b') }

// TestSSHFrontDoor is issue 5's end-to-end proof.
func TestSSHFrontDoor(t *testing.T) {
	setup(t)
	for _, bin := range []string{"ssh", "scp", "sftp", "curl"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed", bin)
		}
	}
	const vmName = "gatevm"
	dir := t.TempDir()
	root := newSSHKey(t, dir, "root")
	bob := newSSHKey(t, dir, "bob")
	stranger := newSSHKey(t, dir, "stranger")

	d := startDaemon(t, dir, "")
	t.Cleanup(func() { d.stop(t) }) // d changes when the daemon restarts
	t.Cleanup(func() {
		if v, ok := vmByName(t, vmName); ok {
			dumpOnFailure(t, d, v.ID)
		} else {
			dumpOnFailure(t, d, "")
		}
	})
	must(t, "ssh-key", "add", root.pubFile)
	must(t, "user", "add", "bob", "--ssh-key", bob.pubFile)
	t.Cleanup(func() {
		minions(t, "", "destroy", vmName, "--yes")
		minions(t, "", "user", "rm", "bob", "--yes")
		minions(t, "", "ssh-key", "rm", ssh.FingerprintSHA256(root.signer.PublicKey()))
	})

	t.Run("commands", func(t *testing.T) {
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "whoami"); r.code != 0 || !strings.Contains(r.stdout, "root") {
			t.Fatalf("whoami as root: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "whoami", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"bob"`) {
			t.Fatalf("whoami --json as bob: %s", r)
		}
		// No PTY and no command: help, plain text.
		r := d.openssh(t, bob, "", "ssh", "127.0.0.1")
		if r.code != 0 || !strings.Contains(r.stdout, "create") || !strings.Contains(r.stdout, "list") || hasEscape(r.stdout+r.stderr) {
			t.Fatalf("help: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "frobnicate"); r.code != 2 || !strings.Contains(r.stderr, "unknown command") {
			t.Fatalf("unknown command: %s", r)
		}
		// Host-only commands are not offered over SSH.
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "serve"); r.code == 0 {
			t.Fatalf("serve over ssh: %s", r)
		}
		// An unknown key without a terminal gets instructions and 10.
		if r := d.openssh(t, stranger, "", "ssh", "127.0.0.1", "list"); r.code != 10 || r.stdout != "" {
			t.Fatalf("unregistered key: %s", r)
		}
		if r := d.openssh(t, stranger, "", "ssh", vmName+"@127.0.0.1", "true"); r.code != 10 {
			t.Fatalf("unregistered key to a vm name: %s", r)
		}
		// Public keys only: passwords and keyboard-interactive get nowhere.
		for _, auth := range []ssh.AuthMethod{
			ssh.Password("root"),
			ssh.KeyboardInteractive(func(string, string, []string, []bool) ([]string, error) { return []string{"root"}, nil }),
		} {
			c, err := ssh.Dial("tcp", d.sshAddr, &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{auth},
				HostKeyCallback: ssh.FixedHostKey(d.hostKey), Timeout: 10 * time.Second})
			if err == nil {
				c.Close()
				t.Fatalf("logged in with %T", auth)
			}
		}
		// With a terminal, an unknown key sees the sign-up policy.
		term := d.dashboard(t, dir, stranger)
		term.waitText(20*time.Second, "Sign-up is closed", ssh.FingerprintSHA256(stranger.signer.PublicKey()))
		term.keys("q")
		term.waitFor("client exit", 10*time.Second, func(string) bool { return term.dead() })
		// Keys over the command grammar. A public key piped in proves
		// nothing (anyone can copy one): refused, naming the two ways.
		second := newSSHKey(t, dir, "bob2")
		pub, _ := os.ReadFile(second.pubFile)
		if r := d.openssh(t, bob, string(pub), "ssh", "127.0.0.1", "ssh-key", "add", "-"); r.code != 2 ||
			!strings.Contains(r.stderr, "with no argument registers the key this session logged in with") || !strings.Contains(r.stderr, "minions ssh-key add KEY.pub") {
			t.Fatalf("ssh-key add - as bob: %s", r)
		}
		if r := d.openssh(t, second, "", "ssh", "127.0.0.1", "whoami"); r.code != 10 {
			t.Fatalf("an unproven key logs in: %s", r)
		}
		// With no argument: the key the session logged in with.
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "ssh-key", "add"); r.code != 0 || !strings.Contains(r.stdout, ssh.FingerprintSHA256(bob.signer.PublicKey())) {
			t.Fatalf("ssh-key add as bob over ssh: %s", r)
		}
		// Bob adds his second key with the minions CLI and his token: it
		// signs the daemon's challenge with the private key next to the .pub.
		tok := strings.TrimSpace(must(t, "token", "create", "--user", "bob", "--name", "e2e-keys"))
		add := exec.Command(filepath.Join(binDir, "minions"), "ssh-key", "add", second.pubFile)
		add.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_API_KEY="+tok, "SSH_AUTH_SOCK=", "HOME="+t.TempDir())
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("minions ssh-key add as bob: %v\n%s", err, out)
		}
		if r := d.openssh(t, second, "", "ssh", "127.0.0.1", "whoami"); r.code != 0 || !strings.Contains(r.stdout, "bob") {
			t.Fatalf("bob's second key: %s", r)
		}
		fp := ssh.FingerprintSHA256(second.signer.PublicKey())
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "ssh-key", "list"); r.code != 0 || !strings.Contains(r.stdout, fp) || hasEscape(r.stdout) {
			t.Fatalf("ssh-key list as bob: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "ssh-key", "rm", fp); r.code != 0 {
			t.Fatalf("ssh-key rm as bob: %s", r)
		}
		if r := d.openssh(t, second, "", "ssh", "127.0.0.1", "whoami"); r.code != 10 {
			t.Fatalf("a removed key still logs in: %s", r)
		}
	})

	t.Run("dashboard-creates-vm", func(t *testing.T) {
		term := d.dashboard(t, dir, root)
		// Other tests may have left VMs of root's: wait for the list, not
		// for an empty one.
		term.waitFor("root's vm list", 20*time.Second, func(s string) bool {
			return strings.Contains(s, "root") && (strings.Contains(s, "No VMs yet") || strings.Contains(s, "STATUS"))
		})
		term.keys("n")
		term.waitText(10*time.Second, "Create a VM", "minimal")
		term.typ(vmName)
		term.keys("Tab", "Tab", "C-u")
		term.typ("256")
		term.keys("Enter", "Enter") // memory -> OS -> submit
		deadline := time.Now().Add(2 * time.Minute)
		for {
			if v, ok := vmByName(t, vmName); ok && v.Status == "running" {
				if v.Memory != 256 {
					t.Fatalf("created from the dashboard: %+v", v)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("vm %s not running 2 min after the dashboard's create; screen:\n%s", vmName, term.screen())
			}
			time.Sleep(250 * time.Millisecond)
		}
		// The dashboard shows it, running, in the list.
		term.keys("Escape")
		s := term.waitFor("running vm row", 20*time.Second, func(s string) bool { return hasRow(s, vmName, "running") })
		v, _ := vmByName(t, vmName)
		if !strings.Contains(s, v.IP) {
			t.Errorf("vm row without its address %s:\n%s", v.IP, s)
		}
		// Filter, open the detail page.
		term.keys("/")
		term.typ("gate")
		term.keys("Enter", "Enter")
		term.waitText(20*time.Second, v.ID, "Agent", "connected")
		// Console: a shell in the VM inside the same session; ctrl+]
		// comes back to the dashboard.
		term.keys("t")
		term.waitFor("console prompt", 30*time.Second, func(s string) bool { return strings.Contains(s, "#") })
		term.typ("echo con$((6*7))sole $(hostname)")
		term.keys("Enter")
		term.waitText(20*time.Second, "con42sole "+vmName)
		term.keys("C-]")
		term.waitText(20*time.Second, v.ID, "Agent")
		term.keys("q")
		term.waitFor("client exit", 10*time.Second, func(string) bool { return term.dead() })
	})
	v, ok := vmByName(t, vmName)
	if !ok || v.Status != "running" {
		t.Fatalf("no running vm %s to go on with: %+v", vmName, v)
	}

	t.Run("vm-exec", func(t *testing.T) {
		r := d.openssh(t, root, "", "ssh", vmName+"@127.0.0.1", "echo $((6*7)); exit 3")
		if r.stdout != "42\n" || r.code != 3 {
			t.Fatalf("openssh exec: %s", r)
		}
		c := d.dial(t, vmName, root)
		defer c.Close()
		if r := sshSession(t, c, "echo $((6*7)); echo oops >&2; exit 3", ""); r.stdout != "42\n" || r.stderr != "oops\n" || r.code != 3 {
			t.Fatalf("x/crypto exec: %s", r)
		}
		if r := sshSession(t, c, "cat; hostname", "through stdin\n"); r.stdout != "through stdin\n"+vmName+"\n" || r.code != 0 {
			t.Fatalf("stdin: %s", r)
		}
		// Commands that exit at once still report their status.
		for i := 0; i < 5; i++ {
			if r := sshSession(t, c, "exit 7", ""); r.code != 7 {
				t.Fatalf("fast exit %d: %s", i, r)
			}
		}
	})

	t.Run("vm-pty", func(t *testing.T) {
		c := d.dial(t, vmName, root)
		defer c.Close()
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.RequestPty("xterm-e2e", 30, 100, ssh.TerminalModes{ssh.ECHO: 0}); err != nil {
			t.Fatal(err)
		}
		in, _ := s.StdinPipe()
		var out outBuffer
		s.Stdout = &out
		if err := s.Shell(); err != nil {
			t.Fatal(err)
		}
		wait := func(want string) {
			t.Helper()
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(out.String(), want) {
				if time.Now().After(deadline) {
					t.Fatalf("pty: no %q in %q", want, out.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		io.WriteString(in, "echo T=$TERM S=$(stty size) tty=$(tty)\n")
		wait("T=xterm-e2e S=30 100 tty=/dev/pts/")
		if err := s.WindowChange(40, 132); err != nil {
			t.Fatal(err)
		}
		io.WriteString(in, "echo R=$(stty size)\n")
		wait("R=40 132")
		io.WriteString(in, "exit 4\n")
		var ee *ssh.ExitError
		if err := s.Wait(); !errors.As(err, &ee) || ee.ExitStatus() != 4 {
			t.Fatalf("shell exit: %v", err)
		}
		// OpenSSH with a forced PTY.
		r := d.openssh(t, root, "", "ssh", "-tt", vmName+"@127.0.0.1", "echo term=$TERM; tty; exit 6")
		if r.code != 6 || !strings.Contains(r.stdout, "/dev/pts/") {
			t.Fatalf("ssh -tt: %s", r)
		}
	})

	data := make([]byte, 10<<20)
	rand.Read(data)
	src := filepath.Join(dir, "ten.bin")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])

	t.Run("scp", func(t *testing.T) {
		start := time.Now()
		if r := d.openssh(t, root, "", "scp", "-q", src, vmName+"@127.0.0.1:/root/ten.bin"); r.code != 0 {
			t.Fatalf("scp up: %s", r)
		}
		up := time.Since(start)
		if out := must(t, "exec", vmName, "sha256sum", "/root/ten.bin"); !strings.HasPrefix(out, want) {
			t.Fatalf("sha256 in the guest %q, want %s", out, want)
		}
		back := filepath.Join(dir, "back.bin")
		start = time.Now()
		if r := d.openssh(t, root, "", "scp", "-q", vmName+"@127.0.0.1:/root/ten.bin", back); r.code != 0 {
			t.Fatalf("scp down: %s", r)
		}
		down := time.Since(start)
		got, _ := os.ReadFile(back)
		if s := sha256.Sum256(got); s != sum {
			t.Fatalf("scp down: %d bytes, different sha256", len(got))
		}
		t.Logf("scp 10 MiB through the gateway: up %s (%.0f MiB/s), down %s (%.0f MiB/s)",
			up.Round(time.Millisecond), 10/up.Seconds(), down.Round(time.Millisecond), 10/down.Seconds())
	})

	t.Run("sftp", func(t *testing.T) {
		must(t, "exec", vmName, "--", "sh", "-c", "mkdir -p /root/shared && echo hi > /root/shared/from-guest.txt")
		r := d.openssh(t, root, "ls -1 /root/shared\nput "+src+" /root/shared/put.bin\nls -l /etc/passwd\n", "sftp", "-b", "-", vmName+"@127.0.0.1")
		if r.code != 0 || !strings.Contains(r.stdout, "from-guest.txt") || !strings.Contains(r.stdout, "/etc/passwd") {
			t.Fatalf("sftp: %s", r)
		}
		if out := must(t, "exec", vmName, "sha256sum", "/root/shared/put.bin"); !strings.HasPrefix(out, want) {
			t.Fatalf("sftp put arrived as %q", out)
		}
	})

	t.Run("forward", func(t *testing.T) {
		must(t, "exec", vmName, "--", "sh", "-c", "mkdir -p /srv && echo gateway-page > /srv/index.html && httpd -p 8080 -h /srv")
		// x/crypto/ssh: a direct-tcpip channel to the VM's own port.
		c := d.dial(t, vmName, root)
		defer c.Close()
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return c.Dial("tcp", "127.0.0.1:8080") },
		}}
		resp, err := hc.Get("http://" + vmName + "/")
		if err != nil {
			t.Fatalf("direct-tcpip: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "gateway-page\n" {
			t.Fatalf("direct-tcpip got %q", body)
		}
		// OpenSSH -L.
		local := freePort(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := d.opensshCmd(ctx, root, "ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-L", local+":127.0.0.1:8080", vmName+"@127.0.0.1")
		var errb outBuffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		if got := curlUntil(t, "http://"+local+"/", 20*time.Second); got != "gateway-page\n" {
			t.Fatalf("ssh -L: got %q; ssh: %s", got, errb.String())
		}
	})

	t.Run("isolation", func(t *testing.T) {
		// bob sees none of root's VMs...
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "list", "--json"); r.code != 0 || strings.Contains(r.stdout, vmName) {
			t.Fatalf("bob's list: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "list"); r.code != 0 || strings.Contains(r.stdout, vmName) || hasEscape(r.stdout) {
			t.Fatalf("bob's list table: %s", r)
		}
		// ...nor reaches it: exec, PTY, scp, sftp, -L, commands.
		for _, args := range [][]string{
			{vmName + "@127.0.0.1", "cat /proc/sys/kernel/hostname"},
			{"-tt", vmName + "@127.0.0.1", "cat /proc/sys/kernel/hostname"},
			{"127.0.0.1", "exec", vmName, "hostname"},
			{"127.0.0.1", "status", vmName},
		} {
			r := d.openssh(t, bob, "", "ssh", args...)
			if r.code == 0 || strings.Contains(r.stdout+r.stderr, vmName+"\n") || strings.Contains(r.stdout, "gateway-page") {
				t.Errorf("bob: ssh %v: %s", args, r)
			}
		}
		if r := d.openssh(t, bob, "", "scp", "-q", src, vmName+"@127.0.0.1:/root/bob.bin"); r.code == 0 {
			t.Errorf("bob's scp up: %s", r)
		}
		if r := d.openssh(t, bob, "", "scp", "-q", vmName+"@127.0.0.1:/root/ten.bin", filepath.Join(dir, "stolen.bin")); r.code == 0 {
			t.Errorf("bob's scp down: %s", r)
		}
		if _, err := os.Stat(filepath.Join(dir, "stolen.bin")); err == nil {
			if b, _ := os.ReadFile(filepath.Join(dir, "stolen.bin")); len(b) > 0 {
				t.Errorf("bob's scp down wrote %d bytes", len(b))
			}
		}
		if r := d.openssh(t, bob, "ls /root\n", "sftp", "-b", "-", vmName+"@127.0.0.1"); r.code == 0 || strings.Contains(r.stdout, "ten.bin") {
			t.Errorf("bob's sftp: %s", r)
		}
		if r := minions(t, "", "exec", vmName, "--", "test", "-e", "/root/bob.bin"); r.code == 0 {
			t.Errorf("bob's scp created a file in root's vm")
		}
		c := d.dial(t, vmName, bob)
		defer c.Close()
		if conn, err := c.Dial("tcp", "127.0.0.1:8080"); err == nil {
			conn.Close()
			t.Errorf("bob opened a direct-tcpip channel into %s", vmName)
		}
		s, err := c.NewSession()
		if err == nil {
			if err := s.RequestSubsystem("sftp"); err == nil {
				t.Errorf("bob got an sftp subsystem as %s@", vmName)
			}
			s.Close()
		}
		local := freePort(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		fwd := d.opensshCmd(ctx, bob, "ssh", "-N", "-L", local+":127.0.0.1:8080", vmName+"@127.0.0.1")
		if err := fwd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { fwd.Process.Kill(); fwd.Wait() }()
		// ssh listens locally; the refusal comes per connection.
		waitListening(t, local, 20*time.Second)
		if out, err := exec.Command("curl", "-sS", "-m", "3", "http://"+local+"/").CombinedOutput(); err == nil || strings.Contains(string(out), "gateway-page") {
			t.Errorf("bob's ssh -L reached the vm: %v %q", err, out)
		}
		// Destructive commands on another's VM: not found, and nothing
		// happens.
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "destroy", vmName, "--yes"); r.code != 3 {
			t.Errorf("bob's destroy: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "stop", vmName); r.code != 3 {
			t.Errorf("bob's stop: %s", r)
		}
		if v, ok := vmByName(t, vmName); !ok || v.Status != "running" {
			t.Fatalf("after bob's attempts: %+v", v)
		}
		// bob's dashboard shows no VM of root's.
		term := d.dashboard(t, dir, bob)
		s2 := term.waitText(20*time.Second, "bob", "No VMs yet")
		if strings.Contains(s2, vmName) {
			t.Errorf("bob's dashboard shows %s:\n%s", vmName, s2)
		}
		term.keys("q")
	})

	t.Run("admin-sees-all", func(t *testing.T) {
		const bobVM = "bobvm"
		r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "create", bobVM, "--memory", "256", "--json")
		if r.code != 0 || !strings.Contains(r.stdout, `"running"`) {
			t.Fatalf("create over ssh as bob: %s", r)
		}
		defer minions(t, "", "destroy", bobVM, "--yes")
		if r := d.openssh(t, bob, "", "ssh", bobVM+"@127.0.0.1", "hostname"); r.code != 0 || r.stdout != bobVM+"\n" {
			t.Fatalf("bob in his vm: %s", r)
		}
		// bob's list: his VM only; root's: both.
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "list"); !strings.Contains(r.stdout, bobVM) || strings.Contains(r.stdout, vmName) {
			t.Fatalf("bob's list: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "list"); !strings.Contains(r.stdout, bobVM) || !strings.Contains(r.stdout, vmName) {
			t.Fatalf("admin's list: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", bobVM+"@127.0.0.1", "hostname"); r.code != 0 || r.stdout != bobVM+"\n" {
			t.Fatalf("admin in bob's vm: %s", r)
		}
		// The destructive command wants --yes without a terminal.
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "destroy", bobVM); r.code == 0 || !strings.Contains(r.stderr, "--yes") {
			t.Fatalf("bob's destroy without --yes: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "destroy", bobVM, "--yes"); r.code != 0 {
			t.Fatalf("bob's destroy: %s", r)
		}
		if _, ok := vmByName(t, bobVM); ok {
			t.Fatal("bob's vm still listed")
		}
	})

	t.Run("commands-on-vm", func(t *testing.T) {
		r := d.openssh(t, root, "", "ssh", "127.0.0.1", "list", "--json")
		var list []vmJSON
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil || len(list) == 0 {
			t.Fatalf("root's list --json: %s", r)
		}
		found := false
		for _, x := range list {
			found = found || (x.Name == vmName && x.Status == "running")
		}
		if !found {
			t.Fatalf("root's list lacks %s: %s", vmName, r)
		}
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "list"); r.code != 0 || !strings.Contains(r.stdout, vmName) || hasEscape(r.stdout) {
			t.Fatalf("root's list: %s", r)
		}
		// Destructive without a terminal needs --yes.
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "destroy", vmName); r.code == 0 || !strings.Contains(r.stderr, "--yes") {
			t.Fatalf("destroy without --yes: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "exec", vmName, "--", "sh", "-c", "'exit 9'"); r.code != 9 {
			t.Fatalf("exec over the command grammar: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "snapshot", "create", vmName, "--name", "viassh"); r.code != 0 {
			t.Fatalf("snapshot create over ssh: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "snapshot", "list", vmName, "--json"); r.code != 0 || !strings.Contains(r.stdout, `"viassh"`) {
			t.Fatalf("snapshot list over ssh: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "snapshot", "list", vmName); r.code != 3 {
			t.Fatalf("bob lists root's snapshots: %s", r)
		}
		// `minions tui` on the host is the same dashboard.
		term := openTerminal(t, dir, 120, 36, "env", "MINIONS_STATE_DIR="+stateDir, filepath.Join(binDir, "minions"), "tui")
		term.waitFor("running vm row in minions tui", 20*time.Second, func(s string) bool { return hasRow(s, vmName, "running") })
		term.keys("q")
		term.waitFor("minions tui exit", 10*time.Second, func(string) bool { return term.dead() })
	})

	t.Run("stopped-vm", func(t *testing.T) {
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "stop", vmName); r.code != 0 {
			t.Fatalf("stop: %s", r)
		}
		r := d.openssh(t, root, "", "ssh", vmName+"@127.0.0.1", "true")
		if r.code != 5 || !strings.Contains(r.stderr, "stopped") || !strings.Contains(r.stderr, "start "+vmName) {
			t.Fatalf("ssh to a stopped vm: %s", r)
		}
		// With a terminal the gateway offers to start it, then the
		// session goes on as a shell in the VM.
		term := openTerminal(t, dir, 100, 30, d.opensshCmd(context.Background(), root, "ssh", "-t", vmName+"@127.0.0.1").Args...)
		term.waitText(20*time.Second, "stopped", "Start "+vmName+" now?")
		term.typ("y")
		term.waitFor("shell prompt after start", 2*time.Minute, func(s string) bool {
			_, after, ok := strings.Cut(s, "now?")
			return ok && strings.Contains(after, "#")
		})
		term.typ("echo up$((1+1))")
		term.keys("Enter")
		term.waitText(20*time.Second, "up2")
		term.typ("exit")
		term.keys("Enter")
		term.waitFor("client exit", 20*time.Second, func(string) bool { return term.dead() })
		if v, ok := vmByName(t, vmName); !ok || v.Status != "running" {
			t.Fatalf("after starting from the prompt: %+v", v)
		}
		// The command grammar drives the lifecycle too.
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "restart", vmName); r.code != 0 || hasEscape(r.stdout+r.stderr) {
			t.Fatalf("restart over ssh: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", vmName+"@127.0.0.1", "hostname"); r.code != 0 || r.stdout != vmName+"\n" {
			t.Fatalf("after restart: %s", r)
		}
	})

	t.Run("host-key-persists", func(t *testing.T) {
		old := d.hostKey
		d.stop(t)
		if v, ok := vmByName(t, vmName); !ok || v.Status != "running" {
			t.Fatalf("vm after the daemon stopped: %+v", v)
		}
		d = startDaemon(t, dir, d.sshAddr)
		if !bytes.Equal(old.Marshal(), d.hostKey.Marshal()) {
			t.Fatal("host key changed across restarts")
		}
		// Pinned to the first daemon's key.
		c, err := ssh.Dial("tcp", d.sshAddr, &ssh.ClientConfig{User: vmName, Auth: []ssh.AuthMethod{ssh.PublicKeys(root.signer)},
			HostKeyCallback: ssh.FixedHostKey(old), Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if r := sshSession(t, c, "cat /root/shared/from-guest.txt", ""); r.stdout != "hi\n" {
			t.Fatalf("after restart: %s", r)
		}
	})

	t.Run("destroy-over-ssh", func(t *testing.T) {
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "destroy", vmName, "--yes"); r.code != 0 {
			t.Fatalf("destroy: %s", r)
		}
		if _, ok := vmByName(t, vmName); ok {
			t.Fatal("vm still listed")
		}
		assertGone(t, v)
	})
}

// curlUntil fetches url until it answers (or timeout) and returns the body.
func curlUntil(t *testing.T, url string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := exec.Command("curl", "-sS", "-m", "3", url).Output()
		if err == nil {
			return string(out)
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("(curl: %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// outBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type outBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *outBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *outBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Benchmark sizes: round trips per way, and the sftp write.
const (
	gwExecRounds  = 20
	gwSFTPBytes   = 32 << 20
	gwSFTPRepeats = 4
)

// BenchmarkGateway compares the SSH front door with the agent channel it
// relays to, on a real VM: `true` in the guest through `ssh vm@host`
// (x/crypto/ssh, a new connection each time and on an open connection)
// against an exec on the VM's agent socket (vsockcli, likewise), and a
// 32 MiB sftp write (and 32 MiB of stdin to cat, the bare channel) through
// the gateway against the same over the agent connection. It prints medians and the ratios (gateway/direct for
// time, gateway/direct for throughput; the throughput target is >= 0.8).
// Run with -bench Gateway -benchtime 1x.
func BenchmarkGateway(b *testing.B) {
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	if !setupDone {
		mustTB(b, "init")
		setupDone = true
	}
	const vmName = "gwbench"
	dir := b.TempDir()
	key := newSSHKey(b, dir, "bench")
	d := startDaemon(b, dir, "")
	b.Cleanup(func() { d.stop(b) })
	mustTB(b, "ssh-key", "add", key.pubFile)
	b.Cleanup(func() { mustTB(b, "ssh-key", "rm", ssh.FingerprintSHA256(key.signer.PublicKey())) })
	var v vmJSON
	if err := json.Unmarshal([]byte(mustTB(b, "create", vmName, "--memory", "256", "--json")), &v); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { mustTB(b, "destroy", vmName, "--yes") })
	b.Cleanup(func() { dumpOnFailure(b, d, v.ID) })

	agentKey, err := os.ReadFile(filepath.Join(stateDir, "keys", "agent_ed25519"))
	if err != nil {
		b.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(agentKey)
	if err != nil {
		b.Fatal(err)
	}
	ep := hypervisor.AgentEndpoint{Kind: vsockcli.KindHybrid, Path: filepath.Join(stateDir, "run", v.ID, "vsock.sock"), Port: 1024}
	acfg := vsockcli.Config{Signer: signer, HostKey: ssh.InsecureIgnoreHostKey()}
	ctx := context.Background()
	direct := func() *vsockcli.Client {
		cl, err := vsockcli.Dial(ctx, ep, acfg)
		if err != nil {
			b.Fatalf("dial agent: %v", err)
		}
		return cl
	}
	directTrue := func(cl *vsockcli.Client) {
		if code, err := cl.Exec(ctx, vsockcli.ExecRequest{Command: "true", Stdout: io.Discard, Stderr: io.Discard}); err != nil || code != 0 {
			b.Fatalf("agent exec true: %d %v", code, err)
		}
	}
	gwTrue := func(c *ssh.Client) {
		if r := sshSession(b, c, "true", ""); r.code != 0 {
			b.Fatalf("gateway true: %s", r)
		}
	}
	timed := func(n int, f func()) []time.Duration {
		f() // warm
		out := make([]time.Duration, n)
		for i := range out {
			start := time.Now()
			f()
			out[i] = time.Since(start)
		}
		return out
	}
	sftpWrite := func(c *ssh.Client, data []byte) time.Duration {
		start := time.Now()
		s, err := sftp.NewClient(c, sftp.UseConcurrentWrites(true))
		if err != nil {
			b.Fatalf("sftp: %v", err)
		}
		defer s.Close()
		f, err := s.Create("/root/bench.bin")
		if err != nil {
			b.Fatalf("sftp create: %v", err)
		}
		if _, err := f.ReadFrom(bytes.NewReader(data)); err != nil {
			b.Fatalf("sftp write: %v", err)
		}
		if err := f.Close(); err != nil {
			b.Fatalf("sftp close: %v", err)
		}
		return time.Since(start)
	}
	data := make([]byte, gwSFTPBytes)
	rand.Read(data)

	var gwDial, dirDial, gwOpen, dirOpen, sshProc, gwSFTP, dirSFTP, gwCat, dirCat []time.Duration
	var qemuBusy, daemonBusy []float64
	for b.Loop() {
		gwDial = append(gwDial, timed(gwExecRounds, func() {
			c := d.dial(b, vmName, key)
			gwTrue(c)
			c.Close()
		})...)
		dirDial = append(dirDial, timed(gwExecRounds, func() {
			cl := direct()
			directTrue(cl)
			cl.Close()
		})...)
		c := d.dial(b, vmName, key)
		gwOpen = append(gwOpen, timed(gwExecRounds, func() { gwTrue(c) })...)
		cl := direct()
		dirOpen = append(dirOpen, timed(gwExecRounds, func() { directTrue(cl) })...)
		sshProc = append(sshProc, timed(gwExecRounds/2, func() {
			if r := d.openssh(b, key, "", "ssh", vmName+"@127.0.0.1", "true"); r.code != 0 {
				b.Fatalf("ssh vm@host true: %s", r)
			}
		})...)
		gwCatOnce := func() {
			start, q0, d0 := time.Now(), cpuTicks(v.PID), cpuTicks(d.cmd.Process.Pid)
			if r := sshSession(b, c, "cat >/dev/null", string(data)); r.code != 0 {
				b.Fatalf("gateway cat: %s", r)
			}
			took := time.Since(start)
			gwCat = append(gwCat, took)
			qemuBusy = append(qemuBusy, busy(cpuTicks(v.PID)-q0, took))
			daemonBusy = append(daemonBusy, busy(cpuTicks(d.cmd.Process.Pid)-d0, took))
		}
		dirCatOnce := func() {
			start := time.Now()
			if code, err := cl.Exec(ctx, vsockcli.ExecRequest{Command: "cat >/dev/null", Stdin: bytes.NewReader(data)}); err != nil || code != 0 {
				b.Fatalf("agent cat: %d %v", code, err)
			}
			dirCat = append(dirCat, time.Since(start))
		}
		for i := range gwSFTPRepeats {
			// Alternate which way goes first: the host is shared.
			if i%2 == 0 {
				gwSFTP = append(gwSFTP, sftpWrite(c, data))
				dirSFTP = append(dirSFTP, sftpWrite(cl.SSH(), data))
				gwCatOnce()
				dirCatOnce()
			} else {
				dirSFTP = append(dirSFTP, sftpWrite(cl.SSH(), data))
				gwSFTP = append(gwSFTP, sftpWrite(c, data))
				dirCatOnce()
				gwCatOnce()
			}
		}
		c.Close()
		cl.Close()
	}
	if out := mustTB(b, "exec", vmName, "--", "wc", "-c", "/root/bench.bin"); !strings.HasPrefix(out, fmt.Sprint(gwSFTPBytes)+" ") {
		b.Fatalf("bench.bin in the guest has %q bytes", out)
	}
	med := func(s []time.Duration) time.Duration {
		s = slices.Clone(s)
		slices.Sort(s)
		return s[len(s)/2]
	}
	mibps := func(d time.Duration) float64 { return float64(gwSFTPBytes) / (1 << 20) / d.Seconds() }
	rows := []struct {
		what    string
		gw, dir time.Duration
		tput    bool
		gwName  string
		dirName string
	}{
		{"true, new connection", med(gwDial), med(dirDial), false, "gw_dial_ms", "agent_dial_ms"},
		{"true, open connection", med(gwOpen), med(dirOpen), false, "gw_open_ms", "agent_open_ms"},
		{"sftp write 32 MiB", med(gwSFTP), med(dirSFTP), true, "gw_sftp_MiB/s", "agent_sftp_MiB/s"},
		{"stdin 32 MiB to cat", med(gwCat), med(dirCat), true, "gw_stdin_MiB/s", "agent_stdin_MiB/s"},
	}
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "\nBenchmarkGateway (medians; %d round trips, %d sftp writes per way)\n", len(gwDial), len(gwSFTP))
	fmt.Fprintf(&tbl, "%-24s %14s %14s %8s\n", "", "gateway", "agent direct", "ratio")
	for _, r := range rows {
		if r.tput {
			g, a := mibps(r.gw), mibps(r.dir)
			fmt.Fprintf(&tbl, "%-24s %9.1f MiB/s %9.1f MiB/s %8.2f\n", r.what, g, a, g/a)
			b.ReportMetric(g, r.gwName)
			b.ReportMetric(a, r.dirName)
			b.ReportMetric(g/a, strings.TrimSuffix(r.gwName, "_MiB/s")+"_ratio")
			continue
		}
		fmt.Fprintf(&tbl, "%-24s %11.2f ms %11.2f ms %8.2f\n", r.what, millis(r.gw), millis(r.dir), float64(r.gw)/float64(r.dir))
		b.ReportMetric(millis(r.gw), r.gwName)
		b.ReportMetric(millis(r.dir), r.dirName)
	}
	fmt.Fprintf(&tbl, "%-24s %11.2f ms\n", "OpenSSH ssh vm@host true", millis(med(sshProc)))
	fq, fd := medF(qemuBusy), medF(daemonBusy)
	fmt.Fprintf(&tbl, "CPU while stdin streams through the gateway: QEMU (the guest) %.0f%% of a core, minions serve %.0f%%\n", fq*100, fd*100)
	b.ReportMetric(fq*100, "qemu_cpu_%")
	b.ReportMetric(fd*100, "daemon_cpu_%")
	b.ReportMetric(millis(med(sshProc)), "openssh_true_ms")
	fmt.Fprint(os.Stderr, tbl.String())
}

// mustTB runs the CLI for a test or benchmark and fails tb unless it exits 0.
func mustTB(tb testing.TB, args ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "minions"), args...)
	cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
	r, err := runClient(cmd, "")
	if err != nil || r.code != 0 {
		tb.Fatalf("minions %s: %v %s", strings.Join(args, " "), err, r)
	}
	return r.stdout
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// waitListening waits until addr accepts TCP connections.
func waitListening(t *testing.T, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s after %s: %v", addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hasRow reports whether one line of screen holds all of words.
func hasRow(screen string, words ...string) bool {
	for _, l := range strings.Split(screen, "\n") {
		all := true
		for _, w := range words {
			all = all && strings.Contains(l, w)
		}
		if all {
			return true
		}
	}
	return false
}

// cpuTicks is the user+system CPU time of process pid in clock ticks
// (1/100 s), or 0 when it cannot be read.
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces): state is
	// field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	var u, s int64
	fmt.Sscan(f[11], &u)
	fmt.Sscan(f[12], &s)
	return u + s
}

// busy is the share of one core that ticks of CPU time are over wall.
func busy(ticks int64, wall time.Duration) float64 { return float64(ticks) / 100 / wall.Seconds() }

func medF(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// dumpOnFailure logs the daemon's log and the agent relay's log of VM id
// when tb failed.
func dumpOnFailure(tb testing.TB, d *sshDaemon, id string) {
	if !tb.Failed() {
		return
	}
	tb.Logf("minions serve log (tail):\n%s", d.logs())
	if id == "" {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(stateDir, "*", id, "relay.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		tb.Logf("%s (tail):\n%s", l, lastLines(string(b), 30))
	}
}
