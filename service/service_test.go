package service

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"golang.org/x/crypto/ssh"
)

// ports records the TAPs the service asked for.
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
	svc   *Service
	drv   *fake.Driver
	ports *ports
	dir   string
	user  Caller
}

func newFixture(t *testing.T) *fixture { return newFixtureReady(t, 300*time.Millisecond) }

func newFixtureReady(t *testing.T, ready time.Duration) *fixture {
	t.Helper()
	// Short: unix socket paths live under it.
	dir, err := os.MkdirTemp("", "svc")
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
	fx.svc, err = New(Config{StateDir: filepath.Join(dir, "state"), ReadyTimeout: ready},
		Deps{DB: db, Driver: fx.drv, Network: fx.ports, Images: oneImage{base}, Disks: fileDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	fx.user, err = fx.svc.EnsureUser(context.Background(), "alice", false)
	if err != nil {
		t.Fatal(err)
	}
	return fx
}

// assertEmpty checks that nothing of any VM is left: rows, dirs, ports,
// hypervisor processes.
func (fx *fixture) assertEmpty(t *testing.T) {
	t.Helper()
	vms, _ := store.ListVMs(context.Background(), fx.svc.DB, "")
	if len(vms) != 0 {
		t.Errorf("vm rows left: %+v", vms)
	}
	entries, _ := os.ReadDir(filepath.Join(fx.dir, "state", "vms"))
	if len(entries) != 0 {
		t.Errorf("vm dirs left: %v", entries)
	}
	runs, _ := os.ReadDir(filepath.Join(fx.dir, "state", "run"))
	if len(runs) != 0 {
		t.Errorf("run dirs left: %v", runs)
	}
	if len(fx.ports.set) != 0 {
		t.Errorf("ports left: %v", fx.ports.set)
	}
	if n := fx.drv.Running(); n != 0 {
		t.Errorf("%d hypervisor processes left", n)
	}
	ops, _ := store.RunningOperations(context.Background(), fx.svc.DB)
	if len(ops) != 0 {
		t.Errorf("operations still marked running: %+v", ops)
	}
}

func TestCreateBootFailureRollsBack(t *testing.T) {
	fx := newFixture(t)
	fx.drv.Fail(fake.OpStart, errors.New("qemu exploded"), 1)
	_, err := fx.svc.Create(context.Background(), fx.user, CreateRequest{Name: "web"}, nil)
	if err == nil || !strings.Contains(err.Error(), "qemu exploded") {
		t.Fatalf("create = %v", err)
	}
	fx.assertEmpty(t)
}

func TestCreateAgentTimeoutRollsBackAndShowsConsole(t *testing.T) {
	fx := newFixture(t)
	// The fake hypervisor has no guest agent: the create waits ReadyTimeout.
	var steps []string
	_, err := fx.svc.Create(context.Background(), fx.user, CreateRequest{Name: "web"}, func(s string) { steps = append(steps, s) })
	if !errors.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "did not become ready") || !strings.Contains(err.Error(), "console") {
		t.Fatalf("create = %v", err)
	}
	if len(steps) < 5 || steps[len(steps)-1] != "agent" {
		t.Fatalf("progress steps = %v", steps)
	}
	fx.assertEmpty(t)
	// The name and the address are free again.
	fx.drv.Fail(fake.OpStart, errors.New("again"), 1)
	_, err = fx.svc.Create(context.Background(), fx.user, CreateRequest{Name: "web"}, nil)
	if err == nil || errs.ClassOf(err) == errs.AlreadyExists {
		t.Fatalf("second create = %v", err)
	}
}

func TestCreateValidatesBeforeChangingAnything(t *testing.T) {
	fx := newFixture(t)
	for _, tc := range []struct {
		req   CreateRequest
		class *errs.Class
	}{
		{CreateRequest{Name: "Bad_Name"}, errs.InvalidArgument},
		{CreateRequest{Name: "web", Image: "nosuch"}, errs.NotFound},
		{CreateRequest{Name: "web", CPUs: 1000}, errs.InvalidArgument},
		{CreateRequest{Name: "web", SSHKeys: []string{"not a key"}}, errs.InvalidArgument},
	} {
		_, err := fx.svc.Create(context.Background(), fx.user, tc.req, nil)
		if !errors.Is(err, tc.class) {
			t.Errorf("create %+v = %v, want %v", tc.req, err, tc.class)
		}
	}
	if _, err := fx.svc.Create(context.Background(), Caller{}, CreateRequest{Name: "web"}, nil); !errors.Is(err, errs.Unauthenticated) {
		t.Errorf("anonymous create = %v", err)
	}
	fx.assertEmpty(t)
}

func TestQuotaCheckedInTheCreateTransaction(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	u, _ := store.GetUserByName(ctx, fx.svc.DB, "alice")
	u.MaxVMs = 1
	store.UpdateUser(ctx, fx.svc.DB, u)
	store.InsertVM(ctx, fx.svc.DB, store.VM{ID: "aaaaaaaaaaaa", Name: "old", OwnerID: u.ID, Image: "minimal@1", CPUs: 1, MemoryMiB: 256,
		DiskGiB: 1, IP: "10.210.0.9", MAC: "02:00:00:00:00:09", CID: 3, State: store.StateStopped, CreatedAt: time.Now()})
	_, err := fx.svc.Create(ctx, fx.user, CreateRequest{Name: "web"}, nil)
	if !errors.Is(err, errs.ResourceExhausted) || !strings.Contains(err.Error(), "at most 1 vms") {
		t.Fatalf("create over quota = %v", err)
	}
	if _, err := store.GetVMByName(ctx, fx.svc.DB, "web"); !errors.Is(err, errs.NotFound) {
		t.Fatal("a refused create left a row")
	}
}

// Others' VMs are invisible: not found, never forbidden.
func TestOthersVMsAreNotFound(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	store.InsertVM(ctx, fx.svc.DB, store.VM{ID: "aaaaaaaaaaaa", Name: "web", OwnerID: fx.user.UserID, Image: "minimal@1", CPUs: 1, MemoryMiB: 256,
		DiskGiB: 1, IP: "10.210.0.9", MAC: "02:00:00:00:00:09", CID: 3, State: store.StateStopped, CreatedAt: time.Now()})
	bob, _ := fx.svc.EnsureUser(ctx, "bob", false)
	checks := map[string]error{}
	_, checks["get"] = fx.svc.Get(ctx, bob, "web")
	_, checks["start"] = fx.svc.Start(ctx, bob, "web", nil)
	checks["destroy"] = fx.svc.Destroy(ctx, bob, "web")
	_, checks["rename"] = fx.svc.Rename(ctx, bob, "web", "mine")
	_, checks["snapshot"] = fx.svc.CreateSnapshot(ctx, bob, "web", SnapshotRequest{}, nil)
	_, checks["copy"] = fx.svc.Copy(ctx, bob, "web", CopyRequest{}, nil)
	_, checks["agent"] = fx.svc.Agent(ctx, bob, "web")
	for name, err := range checks {
		if !errors.Is(err, errs.NotFound) {
			t.Errorf("bob %s alice's vm: %v", name, err)
		}
	}
	list, _ := fx.svc.List(ctx, bob)
	if len(list) != 0 {
		t.Errorf("bob lists %v", list)
	}
	admin, _ := fx.svc.EnsureUser(ctx, "root", true)
	if _, err := fx.svc.Get(ctx, admin, "web"); err != nil {
		t.Errorf("admin get: %v", err)
	}
}

// A rename is one row update; the old name is free at once.
func TestRename(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	store.InsertVM(ctx, fx.svc.DB, store.VM{ID: "aaaaaaaaaaaa", Name: "web", OwnerID: fx.user.UserID, Image: "minimal@1", CPUs: 1, MemoryMiB: 256,
		DiskGiB: 1, IP: "10.210.0.9", MAC: "02:00:00:00:00:09", CID: 3, State: store.StateStopped, CreatedAt: time.Now()})
	v, err := fx.svc.Rename(ctx, fx.user, "web", "prod")
	if err != nil || v.Name != "prod" || v.ID != "aaaaaaaaaaaa" {
		t.Fatalf("rename = %+v, %v", v, err)
	}
	if _, err := fx.svc.Rename(ctx, fx.user, "prod", "Bad Name"); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("bad rename = %v", err)
	}
	if _, err := fx.svc.Get(ctx, fx.user, "web"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("old name: %v", err)
	}
}

// A guest kernel panic ends the wait for the agent at once, with the panic
// line in the error, and the create is rolled back.
func TestCreateFailsFastOnKernelPanic(t *testing.T) {
	fx := newFixtureReady(t, 30*time.Second)
	// The stand-in for QEMU writes a panic to each VM's console log once,
	// after the hypervisor started (then it stops, as QEMU is killed
	// before the rollback removes files).
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		written := map[string]bool{}
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			socks, _ := filepath.Glob(filepath.Join(fx.svc.cfg.RunDir, "*", fake.SocketName))
			for _, sock := range socks {
				d := filepath.Join(fx.dir, "state", "vms", filepath.Base(filepath.Dir(sock)))
				if written[d] {
					continue // once: a write racing the rollback's removal would leave the dir
				}
				written[d] = true
				os.WriteFile(filepath.Join(d, "console.log"), []byte("[    1.95] Failed to execute /init (error -2)\n[    1.96] Kernel panic - not syncing: No working init found.\n"), 0o600)
			}
		}
	}()
	start := time.Now()
	_, err := fx.svc.Create(context.Background(), fx.user, CreateRequest{Name: "web"}, nil)
	close(done)
	<-stopped
	if err == nil || !strings.Contains(err.Error(), "kernel panicked: Kernel panic - not syncing: No working init found.") {
		t.Fatalf("create = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("noticed the panic after %s", d)
	}
	fx.assertEmpty(t)
}

// eng is the local engine the fixture's service runs on.
func (fx *fixture) eng() *engine.Local { return fx.svc.Engine.(*engine.Local) }
