package cli_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

func TestParseExpiry(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, true}, {"0", 0, true}, {"30d", 30 * 24 * time.Hour, true}, {"12h", 12 * time.Hour, true}, {"90m", 90 * time.Minute, true},
		{"-1d", 0, false}, {"0d", 0, false}, {"d", 0, false}, {"1y", 0, false}, {"-5m", 0, false}, {"99999d", 0, false},
	}
	for _, tt := range tests {
		got, err := cli.ParseExpiry(tt.in)
		if (err == nil) != tt.ok || got != tt.want || (err != nil && !errors.Is(err, errs.InvalidArgument)) {
			t.Errorf("ParseExpiry(%q) = %v, %v; want %v ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

type nopNet struct{}

func (nopNet) AddPort(context.Context, string, netip.Addr, string) error { return nil }
func (nopNet) RemovePort(context.Context, string) error                  { return nil }

type noImages struct{}

func (noImages) Resolve(context.Context, string) (service.Image, error) {
	return service.Image{}, errs.New(errs.NotFound, "no images in this test")
}

type noDisks struct{}

func (noDisks) CreateOverlay(context.Context, string, string, string, int64) error { return nil }
func (noDisks) Clone(context.Context, string, string) error                        { return nil }
func (noDisks) Grow(context.Context, string, int64) error                          { return nil }

// newService is a real service (SQLite) for user and token commands; it
// never boots a VM.
func newService(t *testing.T) *service.Service {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "clit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	db, err := store.Open(context.Background(), filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewSignerFromKey(priv)
	svc, err := service.New(service.Config{StateDir: dir, Log: slog.New(slog.DiscardHandler)},
		service.Deps{DB: db, Driver: fake.New(fake.Config{}), Network: nopNet{}, Images: noImages{}, Disks: noDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// keyPair writes an unencrypted OpenSSH private key and its .pub next to
// it, as ssh-keygen does, and returns the signer and the .pub path.
func keyPair(t *testing.T, dir, comment string) (ssh.Signer, string) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, _ := ssh.NewSignerFromKey(priv)
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "id_"+strings.ReplaceAll(comment, "@", "_"))
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))) + " " + comment + "\n"
	if err := os.WriteFile(path+".pub", []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	return s, path + ".pub"
}

func pubKey(t *testing.T) string {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, _ := ssh.NewSignerFromKey(priv)
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))
}

// TestAdminCommands runs the user, token and quota commands in-process as
// root, then as the new user.
func TestAdminCommands(t *testing.T) {
	svc := newService(t)
	ctx := context.Background()
	root, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	caller := root
	run := func(stdin string, args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		env := &cli.Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
			Open: func(context.Context, *cli.Global) (service.Backend, error) {
				return svc.As(caller), nil
			}}
		code := cli.Run(ctx, env, args)
		return out.String(), errb.String(), code
	}
	_, keyFile := keyPair(t, t.TempDir(), "carol@laptop")

	if out, errOut, code := run("", "user", "add", "carol", "--ssh-key", keyFile); code != 0 || !strings.Contains(out, "carol") {
		t.Fatalf("user add: %d %q %q", code, out, errOut)
	}
	if _, errOut, code := run(pubKey(t)+"\n"+pubKey(t), "user", "add", "dave", "--ssh-key", "-"); code != 2 || !strings.Contains(errOut, "holds 2 keys") {
		t.Fatalf("user add with two keys: %d %q", code, errOut)
	}
	if _, _, code := run("", "user", "add", "carol"); code != 4 {
		t.Fatalf("user add twice: exit %d", code)
	}
	if _, _, code := run("", "quota", "set", "carol", "--vms", "3", "--memory", "2048"); code != 0 {
		t.Fatalf("quota set: exit %d", code)
	}
	// Flags not given keep their value.
	out, _, code := run("", "quota", "set", "carol", "--cpus", "4", "--json")
	var u service.User
	if code != 0 || json.Unmarshal([]byte(out), &u) != nil || u.Quota != (service.Quota{MaxVMs: 3, MaxCPUs: 4, MaxMemoryMiB: 2048}) || u.SSHKeys != 1 {
		t.Fatalf("quota set --cpus: %d %+v %q", code, u, out)
	}
	out, errOut, code := run("", "token", "create", "--user", "carol", "--expires", "30d", "--name", "ci")
	secret := strings.TrimSpace(out)
	if code != 0 || !strings.HasPrefix(secret, service.TokenPrefix) || !strings.Contains(errOut, "shown once") {
		t.Fatalf("token create: %d %q %q", code, out, errOut)
	}
	if _, _, code := run("", "token", "create", "--expires", "soon"); code != 2 {
		t.Fatalf("bad expiry: exit %d", code)
	}
	// The token is carol's: as carol, no admin commands.
	if caller, err = svc.AuthenticateToken(ctx, secret); err != nil {
		t.Fatal(err)
	}
	if out, _, code := run("", "whoami"); code != 0 || out != "carol (user)\n" {
		t.Fatalf("whoami as carol: %d %q", code, out)
	}
	if _, _, code := run("", "user", "list"); code != 6 {
		t.Fatalf("user list as carol: exit %d", code)
	}
	out, _, _ = run("", "token", "list", "--json")
	var ts []service.Token
	if json.Unmarshal([]byte(out), &ts) != nil || len(ts) != 1 || ts[0].Name != "ci" || ts[0].ExpiresAt.IsZero() {
		t.Fatalf("carol's tokens %q", out)
	}
	if _, _, code := run("", "token", "revoke", ts[0].ID); code != 0 {
		t.Fatalf("revoke own token: exit %d", code)
	}
	caller = root
	if _, _, code := run("", "user", "rm", "carol"); code != 5 {
		t.Fatalf("user rm without --yes: exit %d", code)
	}
	if _, _, code := run("", "user", "rm", "carol", "--yes"); code != 0 {
		t.Fatalf("user rm: exit %d", code)
	}
	if out, _, _ := run("", "user", "list"); strings.Contains(out, "carol") || !strings.Contains(out, "root") {
		t.Fatalf("users after rm: %q", out)
	}
}
