package engine_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	agent "github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"github.com/minionsdev/minions/vm/hypervisor/fake/fakeagent"
)

// templDriver is fakeagent.AgentDriver as a hypervisor.Templater: a template is a
// fake VM whose "RAM" is a file; a clone whose template file is corrupt
// fails like QEMU's incoming migration does. Clones never get as far as
// re-identification here (that runs netlink in the guest: see
// e2e TestWarmCreate for the real thing).
type templDriver struct {
	*fakeagent.AgentDriver
	mu     sync.Mutex
	clones int

	bootDelay           time.Duration // each template boot takes this long
	building, mostBuilt int           // template builds running now, and the most at once
	forgot              []string      // the run dirs of ForgetRunDir
}

// ForgetRunDir notes what the engine asks the driver to forget (the qemu
// driver removes the RAM file and cgroup of the run dir's VM).
func (d *templDriver) ForgetRunDir(runDir string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.forgot = append(d.forgot, filepath.Base(runDir))
}

func (d *templDriver) BootTemplate(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	d.mu.Lock()
	d.building++
	d.mostBuilt = max(d.mostBuilt, d.building)
	delay := d.bootDelay
	d.mu.Unlock()
	time.Sleep(delay)
	if err := os.WriteFile(filepath.Join(dir, "memory.ram"), []byte("ram"), 0o600); err != nil {
		return nil, err
	}
	return d.Start(ctx, spec)
}

func (d *templDriver) SaveTemplate(ctx context.Context, h *hypervisor.Handle, dir string) error {
	d.mu.Lock()
	d.building--
	d.mu.Unlock()
	if err := os.WriteFile(filepath.Join(dir, "memory.state"), []byte("state"), 0o600); err != nil {
		return err
	}
	return d.Kill(ctx, h)
}

func (d *templDriver) StartClone(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	d.mu.Lock()
	d.clones++
	d.mu.Unlock()
	b, err := os.ReadFile(filepath.Join(dir, "memory.state"))
	if err != nil {
		return nil, errs.New(errs.NotFound, "no template in %s", dir)
	}
	if string(b) != "state" {
		return nil, errors.New("load vm state: invalid migration stream")
	}
	return nil, errs.New(errs.Unavailable, "the fake cannot run clones")
}

func (d *templDriver) cloneCalls() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.clones
}

func warmFixture(t *testing.T) (*engine.Local, *templDriver, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (the guest agent runs commands as users)")
	}
	dir, err := os.MkdirTemp("/tmp", "engw")
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
	if err := store.InsertUser(ctx, db, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "guest")
	home := filepath.Join(root, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(home, 0o700)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:"+home+":/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	hostKey := newSigner(t)
	srv, err := agent.NewServer(agent.Config{
		AuthorizedKey: hostKey.PublicKey(), HostKeyPath: filepath.Join(root, "etc/minions/agent_host_key"), Root: root,
		Mounts: func() ([]agent.Mount, error) { return []agent.Mount{}, nil }, GrowMount: root,
		SetHostname: func(string) error { return nil }, SetTime: func(time.Time) error { return nil }, Power: func(bool) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	drv := &templDriver{AgentDriver: fakeagent.NewAgentDriver(fake.New(fake.Config{}), srv)}
	base := filepath.Join(dir, "base.raw")
	f, _ := os.Create(base)
	f.Truncate(64 << 20)
	f.Close()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	img := engine.Image{Ref: "minimal@1", OS: "minimal", Path: base, Format: "raw", SizeBytes: 64 << 20, Kernel: kernel}
	state := filepath.Join(dir, "state")
	l, err := engine.NewLocal(engine.Config{StateDir: state, ReadyTimeout: 20 * time.Second, StopTimeout: time.Second},
		engine.Deps{DB: db, Driver: drv, Network: &ports{set: map[string]netip.Addr{}}, Images: oneImage{img}, Disks: engine.HostDisks{}, HostKey: hostKey})
	if err != nil {
		t.Fatal(err)
	}
	return l, drv, state
}

// TestWarmTemplateStoreAndFallback: a template is recorded with its
// manifest last; Cold skips it; a corrupt template makes the create boot
// cold with a warning and is dropped; a build killed midway (no manifest)
// is removed by Reconcile.
func TestWarmTemplateStoreAndFallback(t *testing.T) {
	l, drv, state := warmFixture(t)
	ctx := context.Background()
	tpl, err := l.WarmTemplate(ctx, "minimal", 1, 256, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(state, "templates", tpl.Key)
	for _, f := range []string{"manifest.json", "memory.ram", "memory.state"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("template file %s: %v", f, err)
		}
	}
	if _, err := os.Stat(tpl.Disk); err != nil {
		t.Fatalf("template disk: %v", err)
	}
	if ts, _ := l.Templates(ctx); len(ts) != 1 || ts[0].Key != tpl.Key || ts[0].Image != "minimal@1" {
		t.Fatalf("Templates() = %+v", ts)
	}
	// Another shape has no template.
	if again, err := l.WarmTemplate(ctx, "minimal", 1, 256, 0, nil); err != nil || again.CreatedAt != tpl.CreatedAt {
		t.Fatalf("WarmTemplate of an existing template rebuilt it: %v", err)
	}

	// --cold: never tries the template.
	inst, err := l.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "cold", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, Cold: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if inst.Boot != engine.BootCold || drv.cloneCalls() != 0 || len(inst.Warnings) != 0 {
		t.Fatalf("cold create: boot %q, %d clone calls, warnings %v", inst.Boot, drv.cloneCalls(), inst.Warnings)
	}
	// Another shape: no template, cold, no clone attempt.
	inst, err = l.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "other", Owner: "u1", Image: "minimal", CPUs: 2, MemoryMiB: 256}, nil)
	if err != nil || inst.Boot != engine.BootCold || drv.cloneCalls() != 0 {
		t.Fatalf("create of another shape: %v, boot %q, %d clone calls", err, inst.Boot, drv.cloneCalls())
	}

	// A corrupt template: the create falls back to a cold boot, warns, and
	// the template is gone; the clone's leftovers are not.
	os.WriteFile(filepath.Join(dir, "memory.state"), []byte("garbage"), 0o600)
	var steps []string
	inst, err = l.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "fallback", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256},
		func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	if inst.Boot != engine.BootCold || len(inst.Warnings) != 1 || !strings.Contains(inst.Warnings[0], "invalid migration stream") {
		t.Fatalf("create from a corrupt template: boot %q, warnings %v", inst.Boot, inst.Warnings)
	}
	if drv.cloneCalls() != 1 {
		t.Fatalf("clone calls %d, want 1", drv.cloneCalls())
	}
	if !strings.Contains(strings.Join(steps, "\n"), "warning: ") {
		t.Errorf("progress did not carry the warning: %q", steps)
	}
	if ts, _ := l.Templates(ctx); len(ts) != 0 {
		t.Fatalf("corrupt template still listed: %+v", ts)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("corrupt template dir left: %v", err)
	}
	if got, err := l.Get(ctx, inst.ID); err != nil || got.State != vm.Running {
		t.Fatalf("fallback vm: %+v, %v", got, err)
	}

	// A build killed midway: files without a manifest. Reconcile removes
	// them; a complete template stays.
	tpl, err = l.WarmTemplate(ctx, "minimal", 1, 256, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	half := filepath.Join(state, "templates", "0123456789abcdef")
	os.MkdirAll(half, 0o700)
	os.WriteFile(filepath.Join(half, "memory.ram"), []byte("half"), 0o600)
	if err := l.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(half); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unfinished build left after reconcile: %v", err)
	}
	// What the build VM had outside its run dir (its RAM file and cgroup)
	// goes now, not after the sweeps' minute of grace.
	drv.mu.Lock()
	forgot := slices.Contains(drv.forgot, "t0123456789a")
	drv.mu.Unlock()
	if !forgot {
		t.Fatalf("the unfinished build's run dir was not forgotten (the driver was asked about %v)", drv.forgot)
	}
	if ts, _ := l.Templates(ctx); len(ts) != 1 || ts[0].Key != tpl.Key {
		t.Fatalf("complete template lost by reconcile: %+v", ts)
	}
	// Dropping the image's templates.
	if err := l.DropTemplates(ctx, "minimal"); err != nil {
		t.Fatal(err)
	}
	if ts, _ := l.Templates(ctx); len(ts) != 0 {
		t.Fatalf("DropTemplates left %+v", ts)
	}
}

// TestTemplateBuildsOneAtATime: builds of two templates asked for at once
// (the daemon's background build of the default shape and an admin's
// `image warm` of another) both succeed, one after the other: each build
// VM holds the subnet's one template address. The one that waits says so.
func TestTemplateBuildsOneAtATime(t *testing.T) {
	l, drv, _ := warmFixture(t)
	drv.bootDelay = 300 * time.Millisecond
	ctx := context.Background()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	var mu sync.Mutex
	var steps []string
	for _, mem := range []int{256, 320} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := l.WarmTemplate(ctx, "minimal", 1, mem, 0, func(s string) {
				mu.Lock()
				steps = append(steps, s)
				mu.Unlock()
			})
			errc <- err
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Errorf("a build asked for beside another: %v", err)
		}
	}
	if ts, _ := l.Templates(ctx); len(ts) != 2 {
		t.Errorf("%d templates, want 2", len(ts))
	}
	if drv.mostBuilt != 1 {
		t.Errorf("%d template builds ran at once, want 1", drv.mostBuilt)
	}
	if !slices.Contains(steps, "wait for another template build") {
		t.Errorf("steps %v: the build that waited did not say so", steps)
	}
}
