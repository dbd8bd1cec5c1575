package guestagent

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
)

// TestConfigureForMove is what a VM moved with its memory to another
// host gets: the agent accepts that host's key (and, once told, no
// other), and eth0 moves to a new MAC and address; hostname, machine-id
// and keys stay as they were. Bad input changes nothing.
func TestConfigureForMove(t *testing.T) {
	source, target := signer(t), signer(t)
	f := newReidFixture(t, source)
	before := f.snapshot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(as ssh.Signer) (*ssh.Client, error) {
		a, b := socketpair(t)
		go f.srv.ServeConn(ctx, b)
		conn, chans, reqs, err := ssh.NewClientConn(a, "agent", &ssh.ClientConfig{
			User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(as)},
			HostKeyCallback: ssh.FixedHostKey(f.srv.HostKey()),
		})
		if err != nil {
			return nil, err
		}
		return ssh.NewClient(conn, chans, reqs), nil
	}
	configure := func(c *ssh.Client, cfg proto.Configure) error {
		payload, _ := json.Marshal(cfg)
		ok, raw, err := c.SendRequest(proto.ReqConfigure, true, payload)
		if err != nil {
			return err
		}
		if !ok {
			return &configErr{string(raw)}
		}
		return nil
	}
	line := func(s ssh.Signer) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))) }

	if _, err := dial(target); err == nil {
		t.Fatal("the target's key logs in before it is trusted")
	}
	c, err := dial(source)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, bad := range []proto.Configure{
		{HostKeys: []string{"not a key"}},
		{Network: &proto.Network{IP: "10.0.0.300/24"}},
		{Network: &proto.Network{IP: "10.9.1.7/24", MAC: "01:00:00:00:00:01"}},
		{Network: &proto.Network{IP: "10.9.1.7/24", Gateway: "nope"}},
	} {
		if err := configure(c, bad); err == nil {
			t.Errorf("configure %+v accepted", bad)
		}
	}
	if _, err := dial(target); err == nil || len(f.net) != 0 {
		t.Fatalf("bad input changed something: target login %v, network %v", err, f.net)
	}
	// Before the move: both hosts' keys.
	if err := configure(c, proto.Configure{HostKeys: []string{line(source), line(target)}}); err != nil {
		t.Fatal(err)
	}
	ct, err := dial(target)
	if err != nil {
		t.Fatalf("the target's key after it is trusted: %v", err)
	}
	defer ct.Close()
	// On the target: only its key, and its network.
	if err := configure(ct, proto.Configure{HostKeys: []string{line(target)},
		Network: &proto.Network{MAC: "52:54:00:aa:bb:cc", IP: "10.9.1.7/24", Gateway: "10.9.1.1", DNS: "10.9.1.1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(source); err == nil {
		t.Error("the source's key still logs in")
	}
	if !slices.Equal(f.net, []string{"52:54:00:aa:bb:cc 10.9.1.7/24 10.9.1.1"}) {
		t.Errorf("network %v", f.net)
	}
	after := f.snapshot(t)
	if got := after["/etc/resolv.conf"]; got != "nameserver 10.9.1.1\n" {
		t.Errorf("resolv.conf %q", got)
	}
	delete(after, "/etc/resolv.conf")
	if !mapsEqual(before, after) {
		t.Error("configure for a move changed the guest's identity files")
	}
	if len(f.hostname) != 0 {
		t.Errorf("hostname set: %v", f.hostname)
	}
}

type configErr struct{ s string }

func (e *configErr) Error() string { return e.s }
