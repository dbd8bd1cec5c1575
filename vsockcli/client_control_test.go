package vsockcli

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
)

// The agent's keys and its control calls: ping, status, configure,
// shutdown.

func TestWrongKeyRefused(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	cfg := e.config()
	cfg.Signer = newSigner(t)
	start := time.Now()
	_, err := WaitReady(ctx, e.ep, cfg)
	if !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("err = %v, want unauthenticated", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("WaitReady retried an authentication failure")
	}
	// And a wrong pinned host key is refused by the client.
	cfg = e.config()
	cfg.HostKey = ssh.FixedHostKey(newSigner(t).PublicKey())
	if _, err := Dial(ctx, e.ep, cfg); err == nil {
		t.Fatal("dial with a wrong pinned host key succeeded")
	}
}

func TestHostKeyPersists(t *testing.T) {
	e := newEnv(t, envOpts{})
	path := filepath.Join(e.root, "etc/minions/agent_host_key")
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("host key file: %v %v", st, err)
	}
	s2, err := guestagent.LoadOrCreateHostKey(path)
	if err != nil || !bytes.Equal(s2.PublicKey().Marshal(), e.srv.HostKey().Marshal()) {
		t.Fatal("host key changed on reload")
	}
}

func TestPingStatus(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	p, err := c.Ping(ctx)
	if err != nil || p.Version == "" || len(p.BootID) != 36 || p.UptimeMS <= 0 {
		t.Fatalf("ping %+v %v", p, err)
	}
	os.WriteFile(filepath.Join(e.root, "etc/machine-id"), []byte("0123456789abcdef0123456789abcdef\n"), 0o444)
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if st.Hostname != host || st.Kernel == "" || st.MemTotal == 0 || st.MemAvailable == 0 || st.DiskTotal == 0 ||
		st.Procs == 0 || st.AgentVersion != guestagent.Version || st.MachineID != "0123456789abcdef0123456789abcdef" || st.UptimeS <= 0 {
		t.Fatalf("status %+v", st)
	}
	var out bytes.Buffer
	if err := Debug(ctx, c, []string{"ping"}, &out); err != nil || !strings.HasPrefix(out.String(), "pong") {
		t.Fatalf("debug ping: %q %v", out.String(), err)
	}
	out.Reset()
	if err := Debug(ctx, c, []string{"exec", "echo", "a b"}, &out); err != nil || out.String() != "a b\n" {
		t.Fatalf("debug exec: %q %v", out.String(), err)
	}
	if err := Debug(ctx, c, []string{"exec", "exit 2"}, io.Discard); err == nil {
		t.Fatal("debug exec of a failing command succeeded")
	}
	out.Reset()
	if err := Debug(ctx, c, []string{"status"}, &out); err != nil || !strings.Contains(out.String(), `"mem_total"`) {
		t.Fatalf("debug status: %q %v", out.String(), err)
	}
	if err := Debug(ctx, c, []string{"bogus"}, io.Discard); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("debug bogus: %v", err)
	}
}

func TestConfigure(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	os.MkdirAll(filepath.Join(e.root, "etc/ssh"), 0o755)
	os.WriteFile(filepath.Join(e.root, "etc/ssh/ssh_host_dsa_key"), []byte("old"), 0o600)
	hostname, mid, now := "web-1", "00112233445566778899aabbccddeeff", time.Now().Add(time.Hour).UnixNano()
	userKey := string(ssh.MarshalAuthorizedKey(newSigner(t).PublicKey()))
	err := c.Configure(ctx, proto.Configure{
		Hostname: &hostname, MachineID: &mid, TimeUnixNano: &now,
		AuthorizedKeys: []string{userKey}, Reseed: []byte("0123456789abcdef"), RegenHostKeys: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.rec.mu.Lock()
	if e.rec.hostname != hostname || e.rec.time.UnixNano() != now {
		t.Errorf("recorded hostname %q time %v", e.rec.hostname, e.rec.time)
	}
	e.rec.mu.Unlock()
	for file, want := range map[string]string{
		"etc/hostname":              hostname + "\n",
		"etc/machine-id":            mid + "\n",
		"root/.ssh/authorized_keys": strings.TrimSpace(userKey) + "\n",
	} {
		if got, err := os.ReadFile(filepath.Join(e.root, file)); err != nil || string(got) != want {
			t.Errorf("%s = %q (%v), want %q", file, got, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(e.root, "etc/ssh/ssh_host_dsa_key")); !os.IsNotExist(err) {
		t.Error("old host key not removed")
	}
	for _, k := range []string{"ssh_host_ed25519_key", "ssh_host_ecdsa_key"} {
		if _, err := os.Stat(filepath.Join(e.root, "etc/ssh", k)); err != nil {
			t.Errorf("host keys not regenerated: %v", err)
		}
	}
	for _, bad := range []proto.Configure{
		{Hostname: ptr("-bad-")},
		{MachineID: ptr("xyz")},
		{AuthorizedKeys: []string{"not a key"}},
	} {
		if err := c.Configure(ctx, bad); !errors.Is(err, errs.FailedPrecondition) {
			t.Errorf("configure %+v: err = %v", bad, err)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestShutdown(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	for _, reboot := range []bool{false, true} {
		if err := c.Shutdown(ctx, reboot); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-e.rec.power:
			if got != reboot {
				t.Fatalf("power(%v), want %v", got, reboot)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("power function not called")
		}
	}
}
