package gateway

import (
	"net"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// TestRemovedKeyEndsItsConnections: removing a key ends the open `ssh
// vm@host` relay and the front-door command running on connections that
// key opened, within seconds, while another key of the same user keeps its
// session; the removed key's connection cannot open new channels.
func TestRemovedKeyEndsItsConnections(t *testing.T) {
	h := newHarnessWith(t, guestAgent, nil)
	alice2 := newTestKey(t, h.dir, "alice2")
	h.users.add(alice2.signer.PublicKey(), User{Name: "alice"})

	type open struct {
		sess *gossh.Session
		out  *waitBuffer
		done chan error
	}
	start := func(c *gossh.Client, cmd string, ready string) open {
		t.Helper()
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		o := open{sess: s, out: newWaitBuffer(), done: make(chan error, 1)}
		s.Stdout = o.out
		if _, err := s.StdinPipe(); err != nil { // never closed: "upper" waits on it
			t.Fatal(err)
		}
		if err := s.Start(cmd); err != nil {
			t.Fatal(err)
		}
		go func() { o.done <- s.Wait() }()
		if ready != "" {
			o.out.waitFor(t, ready)
		}
		return o
	}
	vmConn := h.dial("web", h.alice)
	relay := start(vmConn, "echo ready; sleep 600", "ready")
	doorConn := h.dial("alice", h.alice)
	door := start(doorConn, "upper", "")
	otherConn := h.dial("web", alice2)
	other := start(otherConn, "echo ready; sleep 600", "ready")

	removed := time.Now()
	h.users.remove(h.alice.signer.PublicKey())
	for name, o := range map[string]open{"vm relay": relay, "front-door command": door} {
		select {
		case err := <-o.done:
			t.Logf("%s ended %s after the key was removed: %v", name, time.Since(removed).Round(time.Millisecond), err)
		case <-time.After(5 * time.Second):
			t.Fatalf("%s of the removed key still open after 5s", name)
		}
	}
	if _, err := vmConn.NewSession(); err == nil {
		t.Fatal("the removed key's connection opened a new session")
	}
	select {
	case err := <-other.done:
		t.Fatalf("the other key's session ended: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if out, _, code := run(t, otherConn, "echo still here", nil); code != 0 || out != "still here\n" {
		t.Fatalf("other key: %q exit %d", out, code)
	}
	other.sess.Close()
	otherConn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for h.users.bound() != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := h.users.bound(); n != 0 {
		t.Fatalf("%d bindings left after every connection closed", n)
	}
}

// TestRemovedKeyEndsRemoteForward: a connection that only holds a remote
// forward (ssh -N -R) ends when its key is removed, and the guest's port
// closes.
func TestRemovedKeyEndsRemoteForward(t *testing.T) {
	h := newHarnessWith(t, guestAgent, nil)
	c := h.dial("web", h.alice)
	ln, err := c.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen in the guest: %v", err)
	}
	addr := ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	h.users.remove(h.alice.signer.PublicKey())
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the removed key's forwarding connection is still open after 5s")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatalf("guest port %s still open after the key was removed", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
