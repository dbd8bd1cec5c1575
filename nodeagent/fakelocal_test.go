package nodeagent_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	agent "github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"github.com/minionsdev/minions/vm/hypervisor/fake/fakeagent"
)

type ports struct {
	mu  sync.Mutex
	set map[string]netip.Addr
}

func (p *ports) AddPort(_ context.Context, tap string, ip netip.Addr, _ string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.set[tap] = ip
	return nil
}

func (p *ports) RemovePort(_ context.Context, tap string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.set, tap)
	return nil
}

type oneImage struct{ img engine.Image }

func (i oneImage) Resolve(_ context.Context, ref string) (engine.Image, error) {
	if ref != i.img.OS && ref != i.img.Ref {
		return engine.Image{}, errs.New(errs.NotFound, "no image %q", ref)
	}
	return i.img, nil
}

// fakeLocal is a local engine on the fake hypervisor with an in-process
// guest agent, real qcow2 disks and a real store.
type fakeLocal struct {
	eng     *engine.Local
	drv     *fakeagent.AgentDriver
	hostKey ssh.Signer
	db      *store.DB
	owner   string
	dir     string // its directory; the state directory is dir/state
}

func newFakeLocal(t testing.TB) *fakeLocal { return newFakeLocalWith(t, nil) }

// newFakeLocalWith is newFakeLocal whose engine's driver is wrap(the
// fake driver) (nil: the fake driver itself).
func newFakeLocalWith(t testing.TB, wrap func(*fakeagent.AgentDriver) hypervisor.Driver) *fakeLocal {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the guest agent runs commands as users)")
	}
	dir, err := os.MkdirTemp("/tmp", "nat")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	owner := store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}
	if err := store.InsertUser(ctx, db, owner); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "guest")
	home := filepath.Join(root, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(home, 0o700)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:"+home+":/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	hostKey, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := agent.NewServer(agent.Config{
		AuthorizedKey: hostKey.PublicKey(),
		HostKeyPath:   filepath.Join(root, "etc/minions/agent_host_key"),
		Root:          root,
		Mounts:        func() ([]agent.Mount, error) { return []agent.Mount{}, nil },
		GrowMount:     root,
		SetHostname:   func(string) error { return nil },
		SetTime:       func(time.Time) error { return nil },
		Power:         func(bool) error { return nil },
		ReseedRNG:     func([]byte) error { return nil },
		SetNetwork:    func(net.HardwareAddr, netip.Prefix, netip.Addr) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	drv := fakeagent.NewAgentDriver(fake.New(fake.Config{Caps: hypervisor.Caps{MemorySnapshot: true}}), srv)
	base := filepath.Join(dir, "base.raw")
	f, err := os.Create(base)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.Close()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	img := engine.Image{Ref: "minimal@1", OS: "minimal", Path: base, Format: "raw", SizeBytes: 64 << 20, Kernel: kernel}
	l, err := engine.NewLocal(engine.Config{StateDir: filepath.Join(dir, "state"), ReadyTimeout: 20 * time.Second, StopTimeout: time.Second},
		engine.Deps{DB: db, Driver: wrapDriver(drv, wrap), Network: &ports{set: map[string]netip.Addr{}}, Images: oneImage{img}, Disks: engine.HostDisks{}, HostKey: hostKey})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeLocal{eng: l, drv: drv, hostKey: hostKey, db: db, owner: owner.ID, dir: dir}
}

func wrapDriver(drv *fakeagent.AgentDriver, wrap func(*fakeagent.AgentDriver) hypervisor.Driver) hypervisor.Driver {
	if wrap == nil {
		return drv
	}
	return wrap(drv)
}
