package daemon

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/gateway"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

type noImages struct{}

func (noImages) Resolve(context.Context, string) (service.Image, error) {
	return service.Image{}, errs.New(errs.NotFound, "no images in this test")
}

type noDisks struct{}

func (noDisks) CreateOverlay(context.Context, string, string, string, int64) error { return nil }
func (noDisks) Clone(context.Context, string, string) error                        { return nil }
func (noDisks) Grow(context.Context, string, int64) error                          { return nil }

func newSigner(t *testing.T) gossh.Signer {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSSHKeyAddOverTheGateway is issue 11 item 1 at the SSH front door,
// with the real service, gateway and command grammar and a real SSH
// client: `ssh host ssh-key add` registers the key the session logged in
// with; a key passed as an argument (a public key anyone can copy) is
// refused with the two ways to prove it.
func TestSSHKeyAddOverTheGateway(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "gwkey")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := slog.New(slog.DiscardHandler)
	svc, err := service.New(service.Config{StateDir: dir, Log: log},
		service.Deps{DB: db, Driver: fake.New(fake.Config{}), Network: nopNet{}, Images: noImages{}, Disks: noDisks{}, HostKey: newSigner(t)})
	if err != nil {
		t.Fatal(err)
	}
	fe := &frontend{svc: svc, urls: func(string) string { return "" }}
	srv, err := gateway.New(gateway.Config{Bind: "127.0.0.1:0", HostKeyPath: filepath.Join(dir, "host_key"), Policy: gateway.PolicyClosed, Log: log},
		fe, fe, fe, fe.dashboard)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("gateway did not stop")
		}
	})

	aliceKey, rootKey, victim := newSigner(t), newSigner(t), newSigner(t)
	if _, err := svc.RegisterUser(ctx, "alice", aliceKey.PublicKey()); err != nil {
		t.Fatal(err)
	}
	if err := svc.EnsureAdminKeys(ctx, []string{string(gossh.MarshalAuthorizedKey(rootKey.PublicKey()))}); err != nil {
		t.Fatal(err)
	}
	dial := func(key gossh.Signer) *gossh.Client {
		c, err := gossh.Dial("tcp", srv.Addr().String(), &gossh.ClientConfig{User: "x", Auth: []gossh.AuthMethod{gossh.PublicKeys(key)},
			HostKeyCallback: gossh.FixedHostKey(srv.HostKey()), Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	run := func(c *gossh.Client, stdin, cmd string) (string, string, int) {
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var out, errb bytes.Buffer
		s.Stdin, s.Stdout, s.Stderr = strings.NewReader(stdin), &out, &errb
		err = s.Run(cmd)
		var ee *gossh.ExitError
		switch {
		case err == nil:
			return out.String(), errb.String(), 0
		case errors.As(err, &ee):
			return out.String(), errb.String(), ee.ExitStatus()
		}
		t.Fatalf("%s: %v", cmd, err)
		return "", "", 0
	}
	registered := func(k gossh.PublicKey) string {
		c, err := svc.UserByKey(ctx, k)
		if err != nil {
			return ""
		}
		return c.Name
	}
	alice, root := dial(aliceKey), dial(rootKey)
	victimLine := string(gossh.MarshalAuthorizedKey(victim.PublicKey()))

	// The victim's public key, piped in or named, by a user or an admin:
	// refused, with both ways to prove a key, and nothing registered.
	for _, tc := range []struct {
		c   *gossh.Client
		cmd string
	}{{alice, "ssh-key add -"}, {root, "ssh-key add -"}, {alice, "ssh-key add victim.pub"}, {root, "user add carol --ssh-key -"}} {
		_, stderr, code := run(tc.c, victimLine, tc.cmd)
		if code != 2 || registered(victim.PublicKey()) != "" {
			t.Fatalf("%s: exit %d, %q; victim's key is %q's", tc.cmd, code, stderr, registered(victim.PublicKey()))
		}
		if strings.HasPrefix(tc.cmd, "ssh-key") && (!strings.Contains(stderr, "with no argument registers the key this session logged in with") || !strings.Contains(stderr, "minions ssh-key add KEY.pub")) {
			t.Fatalf("%s: the message does not name the two ways: %q", tc.cmd, stderr)
		}
	}
	// No argument: the session's own key, already alice's (idempotent).
	out, stderr, code := run(alice, "", "ssh-key add --json")
	if code != 0 || !strings.Contains(out, gossh.FingerprintSHA256(aliceKey.PublicKey())) || registered(aliceKey.PublicKey()) != "alice" {
		t.Fatalf("ssh-key add (session key): exit %d %q %q", code, out, stderr)
	}
	keys, _ := svc.ListSSHKeys(ctx, service.Caller{UserID: mustCaller(t, svc, "alice").UserID})
	if len(keys) != 1 {
		t.Fatalf("alice has %d keys: %+v", len(keys), keys)
	}
}

func mustCaller(t *testing.T, svc *service.Service, name string) service.Caller {
	t.Helper()
	c, err := svc.CallerByName(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
