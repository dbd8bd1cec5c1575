package guestagent

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
)

// TestTrustKeys: configure's trust_keys replace the host keys the agent
// accepts logins from (a live move adds the target's, then drops the
// source's); a bad key is refused and changes nothing.
func TestTrustKeys(t *testing.T) {
	boot, target := signer(t), signer(t)
	srv, err := NewServer(Config{
		AuthorizedKey: boot.PublicKey(),
		HostKeyPath:   filepath.Join(t.TempDir(), "key"),
		Power:         func(bool) error { return nil },
		SetHostname:   func(string) error { return nil },
		SetTime:       func(time.Time) error { return nil },
		ReseedRNG:     func([]byte) error { return nil },
		SetNetwork:    func(net.HardwareAddr, netip.Prefix, netip.Addr) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(s ssh.Signer) (*ssh.Client, error) {
		a, b := socketpair(t)
		go srv.ServeConn(ctx, b)
		conn, chans, reqs, err := ssh.NewClientConn(a, "agent", &ssh.ClientConfig{
			User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(s)},
			HostKeyCallback: ssh.FixedHostKey(srv.HostKey()),
		})
		if err != nil {
			return nil, err
		}
		return ssh.NewClient(conn, chans, reqs), nil
	}
	line := func(s ssh.Signer) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))) }
	configure := func(c *ssh.Client, keys ...string) bool {
		b, _ := json.Marshal(proto.Configure{HostKeys: keys})
		ok, _, err := c.SendRequest(proto.ReqConfigure, true, b)
		return err == nil && ok
	}
	if _, err := dial(target); err == nil {
		t.Fatal("the target's key is accepted before it is trusted")
	}
	c, err := dial(boot)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if configure(c, "ssh-ed25519 garbage") {
		t.Fatal("a bad trust key accepted")
	}
	if _, err := dial(target); err == nil {
		t.Fatal("a refused configure changed the trusted keys")
	}
	if !configure(c, line(boot), line(target)) {
		t.Fatal("configure trust_keys refused")
	}
	for _, s := range []ssh.Signer{boot, target} {
		c, err := dial(s)
		if err != nil {
			t.Fatalf("both keys trusted: %v", err)
		}
		c.Close()
	}
	ct, _ := dial(target)
	defer ct.Close()
	if !configure(ct, line(target)) {
		t.Fatal("configure trust_keys (target only) refused")
	}
	if _, err := dial(boot); err == nil {
		t.Fatal("the source's key is still accepted after it was dropped")
	}
}
