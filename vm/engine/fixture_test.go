package engine

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"golang.org/x/crypto/ssh"
)

// ports records the TAPs the engine asked for.
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

func (p *ports) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.set)
}

type oneImage struct{ path string }

func (i oneImage) Resolve(_ context.Context, ref string) (Image, error) {
	if ref != "minimal" && !strings.HasPrefix(ref, "minimal@") {
		return Image{}, errs.New(errs.NotFound, "no %s image", ref)
	}
	return Image{Ref: "minimal@1", OS: "minimal", Path: i.path, Format: "raw", SizeBytes: 1 << 20}, nil
}

// fileDisks makes plain files: enough to see what a failed create leaves.
type fileDisks struct{}

func (fileDisks) CreateOverlay(_ context.Context, base, _, path string, _ int64) error {
	return os.WriteFile(path, []byte("overlay of "+base), 0o600)
}
func (fileDisks) Clone(_ context.Context, src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}
func (fileDisks) Grow(context.Context, string, int64) error { return nil }

type fixture struct {
	eng   *Local
	drv   *fake.Driver
	ports *ports
	dir   string
}

func newFixture(t *testing.T) *fixture { return newFixtureReady(t, 300*time.Millisecond) }

func newFixtureReady(t *testing.T, ready time.Duration) *fixture {
	t.Helper()
	// Short: unix socket paths live under it.
	dir, err := os.MkdirTemp("", "eng")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	db, err := store.Open(context.Background(), filepath.Join(dir, "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewSignerFromKey(priv)
	base := filepath.Join(dir, "base.raw")
	os.WriteFile(base, []byte("base"), 0o444)
	fx := &fixture{drv: fake.New(fake.Config{}), ports: &ports{set: map[string]netip.Addr{}}, dir: dir}
	fx.eng, err = NewLocal(Config{StateDir: filepath.Join(dir, "state"), ReadyTimeout: ready},
		Deps{DB: db, Driver: fx.drv, Network: fx.ports, Images: oneImage{base}, Disks: fileDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	return fx
}
