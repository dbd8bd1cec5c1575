package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// The SSH e2e tests' harness: users' keys, a `minions serve` with its
// SSH front door, and clients (x/crypto/ssh and OpenSSH) run against it.

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
	args := append([]string{"serve", "--config", noWarmConfig, "--ssh-bind", sshAddr, "--bind", freePort(tb), "--admin-bind", freePort(tb)}, extra...)
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
