package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

func TestSourceKey(t *testing.T) {
	tests := []struct{ ip, want string }{
		{"192.0.2.7", "192.0.2.7"},
		{"::ffff:192.0.2.7", "192.0.2.7"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"},
		{"2001:db8:1:3::1", "2001:db8:1:3::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"::1", "::/64"},
		{"not-an-ip", "not-an-ip"},
	}
	for _, tt := range tests {
		if got := sourceKey(tt.ip); got != tt.want {
			t.Errorf("sourceKey(%q) = %q, want %q", tt.ip, got, tt.want)
		}
	}
	// The failure limiter counts an IPv6 /64 as one source.
	l := newFailureLimiter(2, time.Minute, nil)
	l.Fail("2001:db8::1")
	l.Fail("2001:db8::2")
	if l.Blocked("2001:db8::ffff") == 0 {
		t.Fatal("two failures in one /64 do not block a third address of it")
	}
	if l.Blocked("2001:db8:0:1::1") != 0 {
		t.Fatal("another /64 is blocked")
	}
}

// dialFrom connects a Go SSH client to the gateway from a local address
// (any 127/8 address is a different source on loopback).
func (h *harness) dialFrom(local string, key testKey) (*gossh.Client, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 10 * time.Second}
	nc, err := d.Dial("tcp", h.srv.Addr().String())
	if err != nil {
		return nil, err
	}
	cc, chans, reqs, err := gossh.NewClientConn(nc, h.srv.Addr().String(), &gossh.ClientConfig{
		User: "alice", Auth: []gossh.AuthMethod{gossh.PublicKeys(key.signer)},
		HostKeyCallback: gossh.FixedHostKey(h.srv.HostKey()), Timeout: 10 * time.Second,
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	c := gossh.NewClient(cc, chans, reqs)
	h.t.Cleanup(func() { c.Close() })
	return c, nil
}

// refusal reads what the gateway says to a raw TCP connection from local
// before closing it: the one-line reason, or "" when it starts SSH.
func (h *harness) refusal(t *testing.T, local string) string {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", h.srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	if strings.HasPrefix(line, "SSH-") {
		return ""
	}
	return strings.TrimSpace(line)
}

func waitCounts(t *testing.T, h *harness, conns, unauth, sessions int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, u, s := h.srv.conns.counts()
		if c == conns && u == unauth && s == sessions {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("counts: %d connections, %d unauthenticated, %d sessions; want %d, %d, %d", c, u, s, conns, unauth, sessions)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConnectionLimits drives real SSH clients (and raw TCP connections
// that never log in) from several loopback sources against the caps.
func TestConnectionLimits(t *testing.T) {
	t.Run("per source", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.MaxConnectionsPerSource = 2 })
		a, err := h.dialFrom("127.0.0.1", h.alice)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.dialFrom("127.0.0.1", h.alice); err != nil {
			t.Fatal(err)
		}
		// A third logs in only to be told why it cannot go on, and is
		// closed soon after.
		c3, err := h.dialFrom("127.0.0.1", h.alice)
		if err != nil {
			t.Fatal(err)
		}
		if _, errOut, code := run(t, c3, "whoami", nil); code != 8 || !strings.Contains(errOut, "too many connections from 127.0.0.1 (limit 2)") {
			t.Fatalf("third connection: exit %d, stderr %q", code, errOut)
		}
		if _, err := c3.Dial("tcp", "127.0.0.1:80"); err == nil || !strings.Contains(err.Error(), "too many connections") {
			t.Fatalf("forward on the third connection: %v", err)
		}
		closed := make(chan error, 1)
		go func() { closed <- c3.Wait() }()
		select {
		case <-closed:
		case <-time.After(overGrace + 5*time.Second):
			t.Fatal("the connection over the limit is still open")
		}
		// Another source is not affected.
		if _, err := h.dialFrom("127.0.0.2", h.bob); err != nil {
			t.Fatalf("another source: %v", err)
		}
		// A slot frees when a connection closes.
		a.Close()
		waitCounts(t, h, 2, 0, 0)
		if _, err := h.dialFrom("127.0.0.1", h.alice); err != nil {
			t.Fatalf("after a close: %v", err)
		}
	})

	t.Run("global", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.MaxConnections = 2; c.MaxConnectionsPerSource = 2 })
		if _, err := h.dialFrom("127.0.0.1", h.alice); err != nil {
			t.Fatal(err)
		}
		if _, err := h.dialFrom("127.0.0.2", h.bob); err != nil {
			t.Fatal(err)
		}
		c3, err := h.dialFrom("127.0.0.3", h.admin)
		if err != nil {
			t.Fatal(err)
		}
		if _, errOut, code := run(t, c3, "whoami", nil); code != 8 || !strings.Contains(errOut, "the server has too many connections (2)") {
			t.Fatalf("a third source: exit %d, stderr %q", code, errOut)
		}
		waitCounts(t, h, 2, 0, 0)
	})

	t.Run("before authentication", func(t *testing.T) {
		h := newHarness(t, func(c *Config) {
			c.MaxUnauthenticatedPerSource = 2
			c.MaxUnauthenticated = 3
			c.LoginGrace = time.Second
		})
		// Two connections that never log in fill the source's quota...
		var idle []net.Conn
		for range 2 {
			c, err := net.Dial("tcp", h.srv.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			idle = append(idle, c)
		}
		waitCounts(t, h, 2, 2, 0)
		if msg := h.refusal(t, "127.0.0.1"); !strings.Contains(msg, "too many connections logging in from 127.0.0.1 (limit 2)") {
			t.Fatalf("refusal: %q", msg)
		}
		// ...one more from elsewhere fills the global one...
		c3, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", h.srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c3.Close()
		waitCounts(t, h, 3, 3, 0)
		if msg := h.refusal(t, "127.0.0.4"); !strings.Contains(msg, "too many connections logging in (3)") {
			t.Fatalf("global refusal: %q", msg)
		}
		// ...and the login grace closes all of them.
		for _, c := range append(idle, c3) {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			var buf bytes.Buffer
			_, err := buf.ReadFrom(c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("a connection that never logged in is still open after the login grace")
			}
		}
		waitCounts(t, h, 0, 0, 0)
		// An authenticated connection is past the grace and the pre-auth caps.
		a, err := h.dialFrom("127.0.0.1", h.alice)
		if err != nil {
			t.Fatal(err)
		}
		waitCounts(t, h, 1, 0, 0)
		time.Sleep(1500 * time.Millisecond) // past the grace: still usable
		if out, _, code := run(t, a, "whoami", nil); code != 0 || out != "alice\n" {
			t.Fatalf("after the grace: %q %d", out, code)
		}
	})

	t.Run("sessions per user", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.MaxSessionsPerUser = 2 })
		c1 := h.dial("web", h.alice)
		c2 := h.dial("alice", h.alice)
		var open []*gossh.Session
		for _, c := range []*gossh.Client{c1, c2} {
			s, err := c.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			open = append(open, s)
		}
		waitCounts(t, h, 2, 0, 2)
		_, err := c1.NewSession()
		var oce *gossh.OpenChannelError
		if !errors.As(err, &oce) || oce.Reason != gossh.ResourceShortage || !strings.Contains(oce.Message, "alice has too many open sessions (limit 2)") {
			t.Fatalf("third session of alice: %v", err)
		}
		// Forwards count too.
		if _, err := c1.Dial("tcp", "127.0.0.1:80"); err == nil || !strings.Contains(err.Error(), "too many open sessions") {
			t.Fatalf("forward over the limit: %v", err)
		}
		// Other users are not affected.
		b := h.dial("bob", h.bob)
		if out, _, code := run(t, b, "whoami", nil); code != 0 || out != "bob\n" {
			t.Fatalf("bob: %q %d", out, code)
		}
		// Closing a session frees its slot.
		open[0].Close()
		waitCounts(t, h, 3, 0, 1)
		if out, _, code := run(t, c2, "whoami", nil); code != 0 || out != "alice\n" {
			t.Fatalf("after a close: %q %d", out, code)
		}
	})
}
