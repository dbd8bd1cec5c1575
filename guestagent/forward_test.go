package guestagent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// pipeClient serves one SSH connection of a fresh agent over a socketpair.
func pipeClient(t *testing.T) *ssh.Client {
	t.Helper()
	key := signer(t)
	srv, err := NewServer(Config{
		AuthorizedKey: key.PublicKey(),
		HostKeyPath:   filepath.Join(t.TempDir(), "key"),
		Root:          t.TempDir(),
		Power:         func(bool) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	root := srv.cfg.Root
	if err := writeFileAtomic(root+"/etc/passwd", []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, b := socketpair(t)
	done := make(chan struct{})
	go func() { srv.ServeConn(ctx, b); close(done) }()
	conn, chans, reqs, err := ssh.NewClientConn(a, "agent", &ssh.ClientConfig{
		User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(key)},
		HostKeyCallback: ssh.FixedHostKey(srv.HostKey()),
	})
	if err != nil {
		t.Fatal(err)
	}
	c := ssh.NewClient(conn, chans, reqs)
	t.Cleanup(func() { c.Close(); cancel(); <-done })
	return c
}

// TestRemoteForwardRequests: tcpip-forward listens in the guest and hands
// connections back as forwarded-tcpip channels naming the requested
// address and bound port; bad requests are refused; cancel closes.
func TestRemoteForwardRequests(t *testing.T) {
	c := pipeClient(t)
	for _, bad := range []struct {
		addr string
		port uint32
	}{{"example.org", 0}, {"127.0.0.1", 70000}, {"not an ip", 80}} {
		if ok, _, _ := c.SendRequest("tcpip-forward", true, ssh.Marshal(struct {
			Addr string
			Port uint32
		}{bad.addr, bad.port})); ok {
			t.Errorf("tcpip-forward %s:%d accepted", bad.addr, bad.port)
		}
	}
	fwd := c.HandleChannelOpen("forwarded-tcpip")
	ok, reply, err := c.SendRequest("tcpip-forward", true, ssh.Marshal(struct {
		Addr string
		Port uint32
	}{"localhost", 0}))
	var r struct{ Port uint32 }
	if err != nil || !ok || ssh.Unmarshal(reply, &r) != nil || r.Port == 0 {
		t.Fatalf("tcpip-forward localhost:0: ok=%v reply=%x err=%v", ok, reply, err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(r.Port)))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var nc ssh.NewChannel
	select {
	case nc = <-fwd:
	case <-time.After(10 * time.Second):
		t.Fatal("no forwarded-tcpip channel")
	}
	var p forwardedTCPIP
	if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil || p.Addr != "localhost" || p.Port != r.Port || p.OriginAddr != "127.0.0.1" {
		t.Fatalf("forwarded-tcpip payload %+v (%v)", p, err)
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	io.WriteString(ch, "pong\n")
	ch.CloseWrite()
	b, _ := io.ReadAll(conn)
	if string(b) != "pong\n" {
		t.Fatalf("guest-side connection read %q", b)
	}
	ch.Close()

	cancelReq := ssh.Marshal(struct {
		Addr string
		Port uint32
	}{"localhost", r.Port})
	if ok, _, err := c.SendRequest("cancel-tcpip-forward", true, cancelReq); !ok || err != nil {
		t.Fatalf("cancel: %v %v", ok, err)
	}
	if ok, _, _ := c.SendRequest("cancel-tcpip-forward", true, cancelReq); ok {
		t.Fatal("second cancel accepted")
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("%s still listening after cancel", addr)
	}
}

// TestAgentForwardingToken: auth-agent-req with a route token gives the
// command an SSH_AUTH_SOCK whose connections come back as
// auth-agent@openssh.com channels carrying the token.
func TestAgentForwardingToken(t *testing.T) {
	if _, err := exec.LookPath("ssh-add"); err != nil {
		t.Skip("ssh-add not installed")
	}
	c := pipeClient(t)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	ring := agent.NewKeyring()
	if err := ring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	tokens := make(chan string, 4)
	go func() {
		for nc := range c.HandleChannelOpen("auth-agent@openssh.com") {
			var p struct{ Token string }
			_ = ssh.Unmarshal(nc.ExtraData(), &p)
			tokens <- p.Token
			ch, reqs, err := nc.Accept()
			if err != nil {
				continue
			}
			go ssh.DiscardRequests(reqs)
			go func() { agent.ServeAgent(ring, ch); ch.Close() }()
		}
	}()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tok := ssh.Marshal(struct{ Token string }{"route-42"})
	if ok, err := s.SendRequest("auth-agent-req@openssh.com", true, tok); !ok || err != nil {
		t.Fatalf("auth-agent-req: %v %v", ok, err)
	}
	if ok, _ := s.SendRequest("auth-agent-req@openssh.com", true, tok); ok {
		t.Fatal("second auth-agent-req accepted")
	}
	var out, errb bytes.Buffer
	s.Stdout, s.Stderr = &out, &errb
	if err := s.Run(`ls -ld "$(dirname "$SSH_AUTH_SOCK")" "$SSH_AUTH_SOCK" && ssh-add -l`); err != nil {
		t.Fatalf("run: %v: %s %s", err, out.String(), errb.String())
	}
	fp := ssh.FingerprintSHA256(key.PublicKey())
	lines := strings.Split(out.String(), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "drwx------") || !strings.HasPrefix(lines[1], "srw-------") || !strings.Contains(lines[2], fp) {
		t.Fatalf("output %q", out.String())
	}
	select {
	case got := <-tokens:
		if got != "route-42" {
			t.Fatalf("channel token %q", got)
		}
	default:
		t.Fatal("no agent channel seen")
	}
}
