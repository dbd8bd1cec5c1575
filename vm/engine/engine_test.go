package engine_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/testenv"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/engine/enginetest"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"github.com/minionsdev/minions/vm/hypervisor/fake/fakeagent"
	"github.com/minionsdev/minions/vm/network"
)

type ports struct {
	mu  sync.Mutex
	set map[string]netip.Addr
}

// AddPort refuses an address another port holds, as the host's network
// manager does.
func (p *ports) AddPort(_ context.Context, tap string, ip netip.Addr, _ string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for other, a := range p.set {
		if a == ip && other != tap {
			return errs.New(errs.AlreadyExists, "address %s belongs to port %s", ip, other)
		}
	}
	p.set[tap] = ip
	return nil
}

func (p *ports) RemovePort(_ context.Context, tap string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.set, tap)
	return nil
}

func (p *ports) has(tap string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.set[tap]
	return ok
}

type oneImage struct{ img engine.Image }

func (i oneImage) Resolve(_ context.Context, ref string) (engine.Image, error) {
	if ref != i.img.OS && ref != i.img.Ref {
		return engine.Image{}, errs.New(errs.NotFound, "no image %q", ref)
	}
	return i.img, nil
}

func newSigner(t *testing.T) ssh.Signer {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fakeHarness is the local engine on the fake hypervisor with an
// in-process guest agent, real qcow2 disks and a real store.
func fakeHarness(t *testing.T) enginetest.Harness {
	h, _ := fakeHarnessWith(t, engine.Config{})
	return h
}

// fakeHarnessWith is fakeHarness with cfg's agent pool settings, and its
// driver.
func fakeHarnessWith(t *testing.T, cfg engine.Config) (enginetest.Harness, *fakeagent.AgentDriver) {
	if os.Geteuid() != 0 {
		testenv.SkipUnlessCI(t, "needs root (the guest agent runs commands as users)")
	}
	dir, err := os.MkdirTemp("/tmp", "engt")
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
	hostKey := newSigner(t)
	srv, err := guestagent.NewServer(guestagent.Config{
		AuthorizedKey: hostKey.PublicKey(),
		HostKeyPath:   filepath.Join(root, "etc/minions/agent_host_key"),
		Root:          root,
		Mounts:        func() ([]guestagent.Mount, error) { return []guestagent.Mount{}, nil },
		GrowMount:     root,
		SetHostname:   func(string) error { return nil },
		SetTime:       func(time.Time) error { return nil },
		Power:         func(bool) error { return nil },
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
	nw := &ports{set: map[string]netip.Addr{}}
	state := filepath.Join(dir, "state")
	cfg.StateDir, cfg.ReadyTimeout, cfg.StopTimeout = state, 20*time.Second, time.Second
	l, err := engine.NewLocal(cfg,
		engine.Deps{DB: db, Driver: drv, Network: nw, Images: oneImage{img}, Disks: engine.HostDisks{}, HostKey: hostKey})
	if err != nil {
		t.Fatal(err)
	}
	return enginetest.Harness{
		Engine: l, Image: "minimal", Owner: owner.ID,
		Kill: func(t *testing.T, inst engine.Instance) { drv.Crash(inst.ID) },
		Leaks: func(t *testing.T, id string) []string {
			var left []string
			for _, p := range []string{l.VMDir(id), l.RunDir(id)} {
				if _, err := os.Stat(p); err == nil {
					left = append(left, p)
				}
			}
			if tap, _ := network.TAPName(id); nw.has(tap) {
				left = append(left, "tap "+tap)
			}
			if _, err := store.GetVMByID(ctx, db, id); err == nil {
				left = append(left, "vm row")
			}
			if ops, _ := store.RunningOperations(ctx, db); len(ops) > 0 {
				left = append(left, "running operations")
			}
			return left
		},
		Timeout: 2 * time.Minute,
	}, drv
}

func TestConformanceFake(t *testing.T) {
	enginetest.Run(t, fakeHarness)
}
