package cli_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/testenv"
)

func TestRunDir(t *testing.T) {
	for _, tt := range []struct {
		g    cli.Global
		want string
	}{
		{cli.Global{}, "/run/minions"},
		{cli.Global{StateDir: "/srv/m"}, "/srv/m/run"},
		{cli.Global{StateDir: "/srv/m", RunDir: "/tmp/r"}, "/tmp/r"},
	} {
		if got := cli.RunDir(&tt.g); got != tt.want {
			t.Errorf("RunDir(%+v) = %q, want %q", tt.g, got, tt.want)
		}
	}
}

func TestOpenRemote(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipUnlessCI(t, "needs root: a uid-0 peer is the daemon's admin")
	}
	ctx := context.Background()
	svc := newService(t)
	alice, err := svc.EnsureUser(ctx, "alice", false)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := svc.CreateToken(ctx, alice, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	home := t.TempDir()
	env := func(k string) string {
		if k == "HOME" {
			return home
		}
		return ""
	}
	g := &cli.Global{StateDir: state}

	// No socket: run in-process.
	if be, err := cli.OpenRemote(ctx, g, env); be != nil || err != nil {
		t.Fatalf("no socket: %v %v", be, err)
	}
	// A stale socket file nobody listens on: in-process too.
	sock := filepath.Join(state, "run", api.SocketName)
	os.MkdirAll(filepath.Dir(sock), 0o700)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if be, err := cli.OpenRemote(ctx, g, env); be != nil || err != nil {
		t.Fatalf("stale socket: %v %v", be, err)
	}

	// A daemon answers: root without a token is its admin.
	ln, err := api.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(api.NewHandler(api.Config{Service: svc}))
	go srv.Serve(ln)
	defer srv.Close()
	whoami := func(g *cli.Global) (string, error) {
		be, err := cli.OpenRemote(ctx, g, env)
		if err != nil {
			return "", err
		}
		if be == nil {
			return "", errors.New("no backend")
		}
		defer be.Close()
		c, err := be.Whoami(ctx)
		return c.Name, err
	}
	if name, err := whoami(g); err != nil || name != "root" {
		t.Fatalf("root on the socket: %q %v", name, err)
	}
	// A token in ~/.config/minions/token makes you its user.
	os.MkdirAll(filepath.Join(home, ".config/minions"), 0o700)
	os.WriteFile(filepath.Join(home, cli.TokenFile), []byte(tok.Secret+"\n"), 0o600)
	if name, err := whoami(g); err != nil || name != "alice" {
		t.Fatalf("token file: %q %v", name, err)
	}
	// --api-key wins over the file; a bad one is refused, not ignored.
	if _, err := whoami(&cli.Global{StateDir: state, APIKey: "mn_wrong"}); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("bad api key: %v", err)
	}
	// --host reaches a daemon by URL.
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(tcp)
	if name, err := whoami(&cli.Global{Host: "http://" + tcp.Addr().String(), APIKey: tok.Secret}); err != nil || name != "alice" {
		t.Fatalf("--host: %q %v", name, err)
	}
	if _, err := cli.OpenRemote(ctx, &cli.Global{Host: "ftp://x"}, env); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("bad --host: %v", err)
	}
}
