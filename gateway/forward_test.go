package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// sshVerbose is cmd with LogLevel=INFO instead of ERROR, so that ssh
// prints "Allocated port N" for -R 0:... forwards.
func (o openSSH) sshVerbose(ctx context.Context, args ...string) *exec.Cmd {
	c := o.cmd(ctx, "ssh", args...)
	for i, a := range c.Args {
		if a == "LogLevel=ERROR" {
			c.Args[i] = "LogLevel=INFO"
		}
	}
	return c
}

// startSSHAgent runs OpenSSH's ssh-agent on a socket in dir with key
// loaded and returns the socket path.
func startSSHAgent(t *testing.T, dir string, key testKey) string {
	t.Helper()
	for _, bin := range []string{"ssh-agent", "ssh-add"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (apt-get install openssh-client)", bin)
		}
	}
	sock := filepath.Join(dir, "client-agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	agent.Stdout, agent.Stderr = io.Discard, io.Discard
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Process.Kill(); _ = agent.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ssh-agent socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	add := exec.Command("ssh-add", key.file)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v: %s", err, out)
	}
	return sock
}

// withAgent sets the client's SSH_AUTH_SOCK.
func withAgent(c *exec.Cmd, sock string) *exec.Cmd {
	c.Env = append(c.Env, "SSH_AUTH_SOCK="+sock)
	return c
}

// TestOpenSSHAgentForwarding: `ssh -A vm@host ssh-add -l` lists the key of
// the client's agent, through the gateway and the real guest agent; without
// -A, and for the dashboard, there is no agent.
func TestOpenSSHAgentForwarding(t *testing.T) {
	needOpenSSH(t)
	h := newHarnessWith(t, guestAgent, nil)
	sock := startSSHAgent(t, h.dir, h.alice)
	alice := openSSH{h: h, key: h.alice}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fp := gossh.FingerprintSHA256(h.alice.signer.PublicKey())

	t.Run("ssh -A lists the client's key", func(t *testing.T) {
		out, errOut, code := runCmd(t, withAgent(alice.cmd(ctx, "ssh", "-A", "web@127.0.0.1",
			`test -S "$SSH_AUTH_SOCK" && ls -ld "$SSH_AUTH_SOCK" && ssh-add -l`), sock), "")
		if code != 0 || !strings.Contains(out, fp) {
			t.Fatalf("out=%q err=%q exit=%d (want key %s)", out, errOut, code, fp)
		}
		if !strings.HasPrefix(out, "srw-------") {
			t.Errorf("agent socket mode: %q", out)
		}
	})

	t.Run("the socket is gone after the session", func(t *testing.T) {
		out, errOut, code := runCmd(t, withAgent(alice.cmd(ctx, "ssh", "-A", "web@127.0.0.1", `echo "$SSH_AUTH_SOCK"`), sock), "")
		path := strings.TrimSpace(out)
		if code != 0 || path == "" {
			t.Fatalf("out=%q err=%q exit=%d", out, errOut, code)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := os.Stat(filepath.Dir(path)); os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still exists after the session ended", path)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("without -A there is no agent", func(t *testing.T) {
		out, _, code := runCmd(t, withAgent(alice.cmd(ctx, "ssh", "-a", "web@127.0.0.1", `echo "sock=$SSH_AUTH_SOCK"; ssh-add -l`), sock), "")
		if code == 0 || !strings.Contains(out, "sock=\n") || strings.Contains(out, fp) {
			t.Fatalf("out=%q exit=%d", out, code)
		}
	})

	t.Run("two users at once each reach their own agent", func(t *testing.T) {
		// Both sessions share one agent connection: each agent channel
		// must reach the session that asked for it.
		adminSock := startSSHAgent(t, t.TempDir(), h.admin)
		admin := openSSH{h: h, key: h.admin}
		adminFP := gossh.FingerprintSHA256(h.admin.signer.PublicKey())
		const script = `for i in 1 2 3 4 5; do ssh-add -l || exit 1; sleep 0.1; done`
		type result struct {
			out  string
			code int
		}
		res := make(chan result, 1)
		go func() {
			c := withAgent(admin.cmd(ctx, "ssh", "-A", "web@127.0.0.1", script), adminSock)
			out, err := c.Output()
			code := 0
			if err != nil {
				code = -1
			}
			res <- result{string(out), code}
		}()
		out, errOut, code := runCmd(t, withAgent(alice.cmd(ctx, "ssh", "-A", "web@127.0.0.1", script), sock), "")
		if code != 0 || strings.Count(out, fp) != 5 || strings.Contains(out, adminFP) {
			t.Errorf("alice: out=%q err=%q exit=%d", out, errOut, code)
		}
		r := <-res
		if r.code != 0 || strings.Count(r.out, adminFP) != 5 || strings.Contains(r.out, fp) {
			t.Errorf("admin: out=%q exit=%d", r.out, r.code)
		}
	})

	t.Run("a dashboard connection forwards no agent", func(t *testing.T) {
		// The front door runs commands on the host: it must never hand
		// them the caller's agent. The command succeeds; no agent
		// channel is ever opened (the harness' Commands have none to use).
		out, _, code := runCmd(t, withAgent(alice.cmd(ctx, "ssh", "-A", "127.0.0.1", "whoami"), sock), "")
		if out != "alice\n" || code != 0 {
			t.Fatalf("out=%q exit=%d", out, code)
		}
	})
}

// listenEcho starts a TCP listener on the client side that answers every
// connection with msg and returns its port.
func listenEcho(t *testing.T, msg string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.WriteString(c, msg)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// freePort returns a TCP port that was free on loopback a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startRemoteForward runs `ssh -N -R spec web@host` for o and waits until
// the forward is up. For a port-0 spec it returns the allocated port.
func startRemoteForward(t *testing.T, ctx context.Context, o openSSH, login, spec string) (int, *exec.Cmd) {
	t.Helper()
	c := o.sshVerbose(ctx, "-N", "-o", "ExitOnForwardFailure=yes", "-R", spec, login)
	stderr, err := c.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	allocated := regexp.MustCompile(`Allocated port (\d+) for remote forward`)
	if strings.HasPrefix(spec, "0:") {
		timeout := time.After(20 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					return -1, c
				}
				if m := allocated.FindStringSubmatch(l); m != nil {
					p, _ := strconv.Atoi(m[1])
					go func() {
						for range lines {
						}
					}()
					return p, c
				}
				t.Logf("ssh: %s", l)
			case <-timeout:
				t.Fatal("ssh printed no allocated port")
			}
		}
	}
	go func() {
		for l := range lines {
			t.Logf("ssh: %s", l)
		}
	}()
	p, _ := strconv.Atoi(strings.Split(spec, ":")[0])
	return p, c
}

// readVia reads what the forwarded port says, connecting from inside the
// guest: a second session runs busybox nc there.
func readVia(t *testing.T, ctx context.Context, o openSSH, port int) (string, string, int) {
	t.Helper()
	return runCmd(t, o.cmd(ctx, "ssh", "web@127.0.0.1", fmt.Sprintf("busybox nc 127.0.0.1 %d </dev/null", port)), "")
}

// TestOpenSSHRemoteForward: `ssh -R` opens a port in the guest whose
// connections reach a listener on the client side.
func TestOpenSSHRemoteForward(t *testing.T) {
	needOpenSSH(t)
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("busybox not installed")
	}
	h := newHarnessWith(t, guestAgent, nil)
	alice := openSSH{h: h, key: h.alice}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	target := listenEcho(t, "hello from the client side\n")

	read := func(t *testing.T, port int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			out, errOut, code := readVia(t, ctx, alice, port)
			if out == "hello from the client side\n" && code == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("read port %d in the guest: out=%q err=%q exit=%d", port, out, errOut, code)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	t.Run("allocated port", func(t *testing.T) {
		port, c := startRemoteForward(t, ctx, alice, "web@127.0.0.1", fmt.Sprintf("0:127.0.0.1:%d", target))
		if port <= 0 {
			_ = c.Wait()
			t.Fatalf("no port allocated (ssh exit %d)", c.ProcessState.ExitCode())
		}
		read(t, port)
		read(t, port) // a second connection on the same forward
		// The forward ends with the client's connection: the guest port
		// closes.
		_ = c.Process.Kill()
		_ = c.Wait()
		deadline := time.Now().Add(10 * time.Second)
		for {
			conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				break
			}
			conn.Close()
			if time.Now().After(deadline) {
				t.Fatalf("guest port %d still open after ssh exited", port)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("fixed port", func(t *testing.T) {
		port := freePort(t)
		_, _ = startRemoteForward(t, ctx, alice, "web@127.0.0.1", fmt.Sprintf("%d:127.0.0.1:%d", port, target))
		read(t, port)
	})

	refused := func(t *testing.T, o openSSH, login string) {
		t.Helper()
		c := o.cmd(ctx, "ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-R", fmt.Sprintf("0:127.0.0.1:%d", target), login)
		_, errOut, code := runCmd(t, c, "")
		if code == 0 || !strings.Contains(errOut, "remote port forwarding failed") {
			t.Fatalf("err=%q exit=%d", errOut, code)
		}
	}
	t.Run("another user's vm is refused", func(t *testing.T) {
		refused(t, openSSH{h: h, key: h.bob}, "web@127.0.0.1")
	})
	t.Run("the dashboard is refused", func(t *testing.T) {
		refused(t, alice, "127.0.0.1")
	})
	t.Run("an unregistered key is refused", func(t *testing.T) {
		refused(t, openSSH{h: h, key: h.stranger}, "web@127.0.0.1")
	})
}

// TestRemoteForwardCancel: cancel-tcpip-forward closes the guest's
// listener and an admin may forward on any VM (Go client).
func TestRemoteForwardCancel(t *testing.T) {
	h := newHarnessWith(t, guestAgent, nil)
	c := h.dial("web", h.admin)
	ln, err := c.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen in the guest: %v", err)
	}
	addr := ln.Addr().String()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(conn, "admin here\n")
			conn.Close()
		}
	}()
	// Dial the guest's port from "inside the guest" (the harness' guest is
	// this host).
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(conn)
	conn.Close()
	if string(b) != "admin here\n" {
		t.Fatalf("read %q", b)
	}
	if err := ln.Close(); err != nil { // sends cancel-tcpip-forward
		t.Fatalf("cancel: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatalf("guest port %s still open after cancel", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rejectRecorder is a gossh.NewChannel that records its rejection.
type rejectRecorder struct {
	typ, extra string
	reason     gossh.RejectionReason
	rejected   bool
}

func (r *rejectRecorder) Accept() (gossh.Channel, <-chan *gossh.Request, error) {
	return nil, nil, fmt.Errorf("accept called")
}
func (r *rejectRecorder) Reject(reason gossh.RejectionReason, _ string) error {
	r.reason, r.rejected = reason, true
	return nil
}
func (r *rejectRecorder) ChannelType() string { return r.typ }
func (r *rejectRecorder) ExtraData() []byte   { return []byte(r.extra) }

// TestForwardMuxRefusesUnrouted: channels the guest opens that match no
// session's token or forward are refused, never given to anyone.
func TestForwardMuxRefusesUnrouted(t *testing.T) {
	m := &fwdMux{tcp: map[fwdKey]*gossh.ServerConn{}, agents: map[string]*gossh.ServerConn{"good": nil}}
	for name, extra := range map[string]string{
		"no token":      "",
		"unknown token": string(gossh.Marshal(struct{ Token string }{"bogus"})),
	} {
		nc := &rejectRecorder{typ: chanAuthAgent, extra: extra}
		m.authAgent(nc)
		if !nc.rejected || nc.reason != gossh.Prohibited {
			t.Errorf("%s: rejected=%v reason=%v", name, nc.rejected, nc.reason)
		}
	}
	nc := &rejectRecorder{typ: chanForwardedTCPIP, extra: string(gossh.Marshal(struct {
		Addr       string
		Port       uint32
		OriginAddr string
		OriginPort uint32
	}{"localhost", 8080, "127.0.0.1", 5555}))}
	m.forwardedTCPIP(nc)
	if !nc.rejected || nc.reason != gossh.Prohibited {
		t.Errorf("forwarded-tcpip: rejected=%v reason=%v", nc.rejected, nc.reason)
	}
}
