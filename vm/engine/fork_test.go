package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
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
	"golang.org/x/crypto/ssh"
)

// guestRec is what one fake guest's machine hooks were asked to do.
type guestRec struct {
	mu       sync.Mutex
	hostname string
	clock    time.Time
	entropy  int
	mac      string
	ip       netip.Prefix
	gw       netip.Addr
}

// forkDriver is the fake hypervisor where every VM has a guest agent of
// its own (in-process, every machine hook set, nothing touches the host)
// over a root directory of its own. A VM restored from a fork's saved
// state starts with a copy of the source's root: its "memory" (agent key,
// hostname, machine-id) is the source's until re-identified.
type forkDriver struct {
	*fake.Driver
	hostKey ssh.PublicKey
	dir     string

	mu        sync.Mutex
	lns       map[int]net.Listener
	guests    map[string]*guestRec // by VM ID
	discarded []string             // DiscardCopy's dirs
	accepts   int                  // agent connections accepted
}

// DiscardCopy records dir: the qemu driver keeps a fork's RAM copy
// outside it until RestoreCopy adopts it.
func (d *forkDriver) DiscardCopy(dir string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.discarded = append(d.discarded, dir)
	return nil
}

func (d *forkDriver) root(id string) string { return filepath.Join(d.dir, "guests", id) }

func (d *forkDriver) guest(id string) *guestRec {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.guests[id]
}

func (d *forkDriver) serve(id string, h *hypervisor.Handle) (*hypervisor.Handle, error) {
	root := d.root(id)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(filepath.Join(root, "root"), 0o700)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:"+filepath.Join(root, "root")+":/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	rec := &guestRec{}
	srv, err := agent.NewServer(agent.Config{
		AuthorizedKey: d.hostKey, HostKeyPath: filepath.Join(root, "etc/minions/agent_host_key"), Root: root,
		Mounts: func() ([]agent.Mount, error) { return []agent.Mount{}, nil }, GrowMount: root,
		SetHostname: func(n string) error { rec.mu.Lock(); rec.hostname = n; rec.mu.Unlock(); return nil },
		SetTime:     func(t time.Time) error { rec.mu.Lock(); rec.clock = t; rec.mu.Unlock(); return nil },
		Power:       func(bool) error { return nil },
		ReseedRNG:   func(b []byte) error { rec.mu.Lock(); rec.entropy += len(b); rec.mu.Unlock(); return nil },
		SetNetwork: func(mac net.HardwareAddr, ip netip.Prefix, gw netip.Addr) error {
			rec.mu.Lock()
			rec.mac, rec.ip, rec.gw = mac.String(), ip, gw
			rec.mu.Unlock()
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(h.RunDir, "agent.sock")
	ln, err := fakeagent.ServeAgent(sock, srv, func() { d.mu.Lock(); d.accepts++; d.mu.Unlock() })
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.lns[h.PID] = ln
	d.guests[id] = rec
	d.mu.Unlock()
	h.Agent = hypervisor.AgentEndpoint{Kind: "hybrid-vsock", Path: sock, Port: 1024}
	return h, nil
}

func (d *forkDriver) unserve(h *hypervisor.Handle) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if h != nil && d.lns[h.PID] != nil {
		d.lns[h.PID].Close()
		delete(d.lns, h.PID)
	}
}

func (d *forkDriver) Start(ctx context.Context, spec hypervisor.Spec) (*hypervisor.Handle, error) {
	h, err := d.Driver.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	return d.serve(spec.ID, h)
}

func (d *forkDriver) RestoreCopy(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	b, err := os.ReadFile(filepath.Join(dir, fake.StateFile))
	if err != nil {
		return nil, errs.New(errs.NotFound, "no saved state in %s", dir)
	}
	var st struct{ ID string }
	json.Unmarshal(b, &st)
	h, err := d.Driver.RestoreCopy(ctx, spec, dir)
	if err != nil {
		return nil, err
	}
	// The copy's memory is the source's.
	if out, err := exec.Command("cp", "-a", d.root(st.ID), d.root(spec.ID)).CombinedOutput(); err != nil {
		d.Driver.Kill(ctx, h)
		return nil, errors.New(string(out))
	}
	return d.serve(spec.ID, h)
}

func (d *forkDriver) Shutdown(ctx context.Context, h *hypervisor.Handle, timeout time.Duration) error {
	d.unserve(h)
	return d.Driver.Shutdown(ctx, h, timeout)
}

func (d *forkDriver) Kill(ctx context.Context, h *hypervisor.Handle) error {
	d.unserve(h)
	return d.Driver.Kill(ctx, h)
}

func forkFixture(t *testing.T) (*engine.Local, *forkDriver, *ports, string) {
	t.Helper()
	return forkFixtureWith(t, nil)
}

// forkFixtureWith is forkFixture whose engine drives wrap(the fork driver)
// (nil: the fork driver itself).
func forkFixtureWith(t *testing.T, wrap func(*forkDriver) hypervisor.Driver) (*engine.Local, *forkDriver, *ports, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (the guest agent runs commands as users)")
	}
	dir, err := os.MkdirTemp("/tmp", "engf")
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
	for _, u := range []string{"u1", "u2"} {
		if err := store.InsertUser(ctx, db, store.User{ID: u, Name: "user-" + u, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	hostKey := newSigner(t)
	drv := &forkDriver{Driver: fake.New(fake.Config{Caps: hypervisor.Caps{MemorySnapshot: true}}), hostKey: hostKey.PublicKey(), dir: dir,
		lns: map[int]net.Listener{}, guests: map[string]*guestRec{}}
	base := filepath.Join(dir, "base.raw")
	f, _ := os.Create(base)
	f.Truncate(64 << 20)
	f.Close()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	img := engine.Image{Ref: "minimal@1", OS: "minimal", Path: base, Format: "raw", SizeBytes: 64 << 20, Kernel: kernel}
	state := filepath.Join(dir, "state")
	p := &ports{set: map[string]netip.Addr{}}
	var d hypervisor.Driver = drv
	if wrap != nil {
		d = wrap(drv)
	}
	l, err := engine.NewLocal(engine.Config{StateDir: state, ReadyTimeout: 20 * time.Second, StopTimeout: time.Second, NoWarm: true},
		engine.Deps{DB: db, Driver: d, Network: p, Images: oneImage{img}, Disks: engine.HostDisks{}, HostKey: hostKey})
	if err != nil {
		t.Fatal(err)
	}
	return l, drv, p, state
}

const forkKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl fork@test"

// TestForkRunningVM: a fork runs from the source's saved state with its
// own address, MAC, hostname, machine-id, agent key, entropy, clock and
// keys; the source was paused for the save and runs on; both agents
// answer with their own pinned keys.
func TestForkRunningVM(t *testing.T) {
	l, drv, p, state := forkFixture(t)
	ctx := context.Background()
	src, err := l.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "web", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Something only the source's "memory" has.
	os.WriteFile(filepath.Join(drv.root(src.ID), "root/counter"), []byte("42"), 0o600)
	var steps []string
	fk, err := l.Fork(ctx, src.ID, engine.ForkSpec{ID: vm.NewID(), Name: "web-fork", Owner: "u2", AuthorizedKeys: []string{forkKey}},
		func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"allocate", "save memory", "copy disk", "resume source", "network", "restore", "agent", "reidentify"} {
		if !slices.Contains(steps, want) {
			t.Errorf("progress %q lacks %q", steps, want)
		}
	}
	if fk.State != vm.Running || fk.Name != "web-fork" || fk.Owner != "u2" || fk.Image != src.Image || fk.CPUs != 1 || fk.MemoryMiB != 256 || fk.DiskGiB != src.DiskGiB {
		t.Fatalf("fork = %+v", fk)
	}
	if fk.IP == src.IP || fk.MAC == src.MAC || fk.ID == src.ID {
		t.Fatalf("fork shares identity with source: %+v vs %+v", fk, src)
	}
	// The source runs (not paused) and its guest was left alone.
	s, _ := l.Get(ctx, src.ID)
	if s.State != vm.Running {
		t.Fatalf("source state %s", s.State)
	}
	srcRow, _ := store.GetVMByID(ctx, l.DB, src.ID)
	h, _ := engine.DecodeHandle(srcRow.Handle)
	if info, _ := drv.Info(ctx, h); info.State != hypervisor.StateRunning {
		t.Fatalf("source hypervisor %s after fork", info.State)
	}
	if g := drv.guest(src.ID); g.hostname != "" || g.mac != "" {
		t.Fatalf("source guest re-identified: %+v", g)
	}
	// The fork's guest: the source's memory, its own identity.
	g := drv.guest(fk.ID)
	g.mu.Lock()
	if g.hostname != "web-fork" || g.mac != fk.MAC || g.ip.Addr().String() != fk.IP || g.entropy < 32 || time.Since(g.clock).Abs() > 5*time.Second {
		t.Errorf("fork guest hooks: %+v (fork %s %s)", g, fk.MAC, fk.IP)
	}
	g.mu.Unlock()
	read := func(id, p string) string {
		b, _ := os.ReadFile(filepath.Join(drv.root(id), p))
		return strings.TrimSpace(string(b))
	}
	if read(fk.ID, "root/counter") != "42" {
		t.Errorf("fork lacks the source's state")
	}
	if read(fk.ID, "etc/hostname") != "web-fork" || read(fk.ID, "etc/machine-id") == "" || read(fk.ID, "etc/machine-id") == read(src.ID, "etc/machine-id") {
		t.Errorf("fork hostname %q machine-id %q (source %q)", read(fk.ID, "etc/hostname"), read(fk.ID, "etc/machine-id"), read(src.ID, "etc/machine-id"))
	}
	if read(fk.ID, "root/.ssh/authorized_keys") != forkKey {
		t.Errorf("fork authorized_keys %q", read(fk.ID, "root/.ssh/authorized_keys"))
	}
	fkRow, _ := store.GetVMByID(ctx, l.DB, fk.ID)
	if fkRow.AgentKey == "" || fkRow.AgentKey == srcRow.AgentKey {
		t.Errorf("fork agent key %q, source %q", fkRow.AgentKey, srcRow.AgentKey)
	}
	// Both agents answer, each with its own pinned key, over the
	// connection create and fork waited for them on (no dial).
	drv.mu.Lock()
	accepts := drv.accepts
	drv.mu.Unlock()
	for _, id := range []string{src.ID, fk.ID} {
		cl, err := l.Agent(ctx, id)
		if err != nil {
			t.Fatalf("agent of %s: %v", id, err)
		}
		if _, err := cl.Status(ctx); err != nil {
			t.Fatalf("status of %s: %v", id, err)
		}
		cl.Close()
	}
	drv.mu.Lock()
	if drv.accepts != accepts {
		t.Errorf("the first agent calls after create and fork dialed %d connections, want 0", drv.accepts-accepts)
	}
	drv.mu.Unlock()
	// Its disk is a child of the image like the source's, and its saved
	// memory is gone.
	if _, err := os.Stat(filepath.Join(state, "vms", fk.ID, "disk.qcow2")); err != nil {
		t.Errorf("fork disk: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "vms", fk.ID, "fork-state")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("fork state left behind: %v", err)
	}
	if portCount(p) != 2 {
		t.Errorf("%d ports, want 2", portCount(p))
	}
	// The fork lives on its own: destroying the source leaves it running.
	if err := l.Destroy(ctx, src.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := l.Get(ctx, fk.ID); err != nil || got.State != vm.Running {
		t.Fatalf("fork after source destroyed: %+v %v", got, err)
	}
}

// TestForkFailures: bad input and failures midway leave nothing of the
// fork behind and the source running.
func TestForkFailures(t *testing.T) {
	l, drv, p, state := forkFixture(t)
	ctx := context.Background()
	src, err := l.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "web", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := l.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "db", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srcRow, _ := store.GetVMByID(ctx, l.DB, src.ID)
	h, _ := engine.DecodeHandle(srcRow.Handle)
	nothingLeft := func(t *testing.T, id string) {
		t.Helper()
		if _, err := store.GetVMByID(ctx, l.DB, id); err == nil {
			t.Errorf("fork row left")
		}
		if _, err := os.Stat(filepath.Join(state, "vms", id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("fork dir left: %v", err)
		}
		if portCount(p) != 2 {
			t.Errorf("%d ports, want 2", portCount(p))
		}
		if info, _ := drv.Info(ctx, h); info.State != hypervisor.StateRunning {
			t.Errorf("source hypervisor %s", info.State)
		}
		if n := drv.Running(); n != 2 {
			t.Errorf("%d fake vms run, want 2", n)
		}
	}
	cases := []struct {
		name  string
		src   string
		spec  engine.ForkSpec
		fail  fake.Op
		class *errs.Class
	}{
		{"bad name", src.ID, engine.ForkSpec{ID: vm.NewID(), Owner: "u1", Name: "Bad Name!"}, "", errs.InvalidArgument},
		{"bad key", src.ID, engine.ForkSpec{ID: vm.NewID(), Owner: "u1", Name: "f1", AuthorizedKeys: []string{"nope"}}, "", errs.InvalidArgument},
		{"taken name", src.ID, engine.ForkSpec{ID: vm.NewID(), Owner: "u1", Name: "db"}, "", errs.AlreadyExists},
		{"no source", vm.NewID(), engine.ForkSpec{ID: vm.NewID(), Owner: "u1", Name: "f2"}, "", errs.NotFound},
		{"save fails", src.ID, engine.ForkSpec{ID: vm.NewID(), Owner: "u1", Name: "f3"}, fake.OpSaveState, nil},
		{"restore fails", src.ID, engine.ForkSpec{ID: vm.NewID(), Owner: "u1", Name: "f4"}, fake.OpRestore, nil},
		// The source resumes while the fork starts: its failure still
		// fails the fork (and the source is resumed again below).
		{"resume fails", src.ID, engine.ForkSpec{ID: vm.NewID(), Owner: "u1", Name: "f7"}, fake.OpResume, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.fail != "" {
				drv.Fail(c.fail, errors.New("injected"), 1)
			}
			_, err := l.Fork(ctx, c.src, c.spec, nil)
			if err == nil {
				t.Fatal("fork succeeded")
			}
			if c.fail != "" && !strings.Contains(err.Error(), "injected") {
				t.Fatalf("error %v, want the injected one", err)
			}
			if c.class != nil && !errors.Is(err, c.class) {
				t.Fatalf("error %v: class %v, want %v", err, errs.ClassOf(err), c.class)
			}
			if c.fail == fake.OpResume {
				if err := drv.Resume(ctx, h); err != nil {
					t.Fatal(err)
				}
			}
			nothingLeft(t, c.spec.ID)
		})
	}
	// A stopped source cannot be forked.
	if _, err := l.Stop(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	id := vm.NewID()
	if _, err := l.Fork(ctx, other.ID, engine.ForkSpec{ID: id, Owner: "u1", Name: "f5"}, nil); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("fork of a stopped vm: %v", err)
	}
	if _, err := store.GetVMByID(ctx, l.DB, id); err == nil {
		t.Errorf("fork row left")
	}
	// And the source still forks afterwards.
	if _, err := l.Fork(ctx, src.ID, engine.ForkSpec{ID: vm.NewID(), Owner: "u1", Name: "f6"}, nil); err != nil {
		t.Fatal(err)
	}
}

func portCount(p *ports) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.set)
}

// TestForkInterruptedRecovers: a fork whose process died while the source
// was paused and the fork half made: Reconcile resumes the source and
// removes the half-made fork.
func TestForkInterruptedRecovers(t *testing.T) {
	l, drv, _, state := forkFixture(t)
	ctx := context.Background()
	src, err := l.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "web", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srcRow, _ := store.GetVMByID(ctx, l.DB, src.ID)
	h, _ := engine.DecodeHandle(srcRow.Handle)
	if err := drv.Pause(ctx, h); err != nil {
		t.Fatal(err)
	}
	forkID := vm.NewID()
	now := time.Now()
	half := store.VM{ID: forkID, Name: "half", OwnerID: "u1", Image: src.Image, CPUs: 1, MemoryMiB: 256, DiskGiB: src.DiskGiB,
		State: vm.Creating, IP: "10.99.0.77", MAC: "52:54:00:00:00:77", CID: 977, CreatedAt: now}
	if err := store.InsertVM(ctx, l.DB, half); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(state, "vms", forkID, "fork-state"), 0o700)
	dead := 1 << 23 // above pid_max: no such process
	for _, o := range []store.Operation{
		{ID: vm.NewID(), VMID: src.ID, Kind: "fork-source", Step: "save memory", State: store.OpRunning, PID: dead, Data: "{}", CreatedAt: now, UpdatedAt: now},
		{ID: vm.NewID(), VMID: forkID, Kind: "fork", Step: "copy disk", State: store.OpRunning, PID: dead, Data: "{}", CreatedAt: now, UpdatedAt: now},
	} {
		if err := store.InsertOperation(ctx, l.DB, o); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if info, _ := drv.Info(ctx, h); info.State != hypervisor.StateRunning {
		t.Errorf("source hypervisor %s after reconcile", info.State)
	}
	if _, err := store.GetVMByID(ctx, l.DB, forkID); err == nil {
		t.Errorf("half-made fork row left")
	}
	if _, err := os.Stat(filepath.Join(state, "vms", forkID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("half-made fork dir left: %v", err)
	}
	// What the driver keeps of the fork's saved state outside its dir
	// (the qemu driver's RAM copy on a tmpfs) is discarded too.
	drv.mu.Lock()
	discarded := drv.discarded
	drv.mu.Unlock()
	if !slices.Contains(discarded, filepath.Join(state, "vms", forkID, "fork-state")) {
		t.Errorf("the driver's copy of the half-made fork was not discarded: %v", discarded)
	}
}

// earlyDriver is the fork driver with a fork's copy started before the
// source's save (engine earlyCopier, as the qemu driver does it):
// StartCopy boots a fake VM at once, FinishCopy gives it the source's
// "memory" and its agent. unfit makes FinishCopy refuse the state.
type earlyDriver struct {
	*forkDriver
	emu    sync.Mutex
	events []string
	ids    map[int]string // VM ID by the PID of copies started early
	unfit  bool
}

func (d *earlyDriver) event(e string) {
	d.emu.Lock()
	d.events = append(d.events, e)
	d.emu.Unlock()
}

func (d *earlyDriver) StartCopy(ctx context.Context, spec hypervisor.Spec, dir string) (func() (*hypervisor.Handle, error), error) {
	d.event("start copy")
	h, err := d.forkDriver.Driver.Start(ctx, spec)
	if err == nil {
		d.emu.Lock()
		d.ids[h.PID] = spec.ID
		d.emu.Unlock()
	}
	return func() (*hypervisor.Handle, error) { return h, err }, nil
}

func (d *earlyDriver) SaveCopy(ctx context.Context, h *hypervisor.Handle, dir string) error {
	d.event("save copy")
	return d.forkDriver.SaveCopy(ctx, h, dir)
}

func (d *earlyDriver) RestoreCopy(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	d.event("restore copy")
	return d.forkDriver.RestoreCopy(ctx, spec, dir)
}

func (d *earlyDriver) FinishCopy(ctx context.Context, h *hypervisor.Handle, dir string) error {
	d.event("finish copy")
	if d.unfit {
		return errs.New(errs.FailedPrecondition, "state does not fit")
	}
	b, err := os.ReadFile(filepath.Join(dir, fake.StateFile))
	if err != nil {
		return errs.New(errs.NotFound, "no saved state in %s", dir)
	}
	var st struct{ ID string }
	json.Unmarshal(b, &st)
	d.emu.Lock()
	id := d.ids[h.PID]
	d.emu.Unlock()
	if out, err := exec.Command("cp", "-a", d.root(st.ID), d.root(id)).CombinedOutput(); err != nil {
		return errors.New(string(out))
	}
	_, err = d.serve(id, h)
	return err
}

func (d *earlyDriver) Kill(ctx context.Context, h *hypervisor.Handle) error {
	d.event("kill")
	return d.forkDriver.Kill(ctx, h)
}

// TestForkEarlyCopy: with a driver that can, the fork's hypervisor starts
// before the source's save and is finished after it (its disk copied over
// the placeholder it opened); a copy the saved state does not fit is
// killed and the fork restored the usual way; a failed save kills the
// copy started early and leaves nothing.
func TestForkEarlyCopy(t *testing.T) {
	var ed *earlyDriver
	l, drv, p, state := forkFixtureWith(t, func(d *forkDriver) hypervisor.Driver {
		ed = &earlyDriver{forkDriver: d, ids: map[int]string{}}
		return ed
	})
	ctx := context.Background()
	src, err := l.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "web", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(drv.root(src.ID), "root/counter"), []byte("42"), 0o600)
	fork := func(name string) (engine.Instance, []string, []string, error) {
		ed.emu.Lock()
		ed.events = nil
		ed.emu.Unlock()
		var steps []string
		fk, err := l.Fork(ctx, src.ID, engine.ForkSpec{ID: vm.NewID(), Name: name, Owner: "u1", AuthorizedKeys: []string{forkKey}},
			func(s string) { steps = append(steps, s) })
		ed.emu.Lock()
		defer ed.emu.Unlock()
		return fk, steps, append([]string(nil), ed.events...), err
	}

	fk, steps, events, err := fork("web-f1")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"start copy", "save copy", "finish copy"}; !slices.Equal(events, want) {
		t.Errorf("driver calls %q, want %q", events, want)
	}
	for _, want := range []string{"allocate", "network", "start", "save memory", "copy disk", "resume source", "restore", "agent", "reidentify"} {
		if !slices.Contains(steps, want) {
			t.Errorf("progress %q lacks %q", steps, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(drv.root(fk.ID), "root/counter")); string(b) != "42" {
		t.Errorf("the early copy's memory: counter %q, want the source's", b)
	}
	if got, _ := l.Get(ctx, fk.ID); got.State != vm.Running || drv.guest(fk.ID).hostname != "web-f1" {
		t.Errorf("fork %+v, guest hostname %q", got, drv.guest(fk.ID).hostname)
	}
	if a, b := fileBytes(t, filepath.Join(state, "vms", fk.ID, "disk.qcow2")), fileBytes(t, filepath.Join(state, "vms", src.ID, "disk.qcow2")); !slices.Equal(a, b) {
		t.Error("the fork's disk is not the source's copy")
	}

	// The saved state does not fit the copy started early: killed, and
	// the fork restored anew.
	ed.unfit = true
	fk2, _, events, err := fork("web-f2")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"start copy", "save copy", "finish copy", "kill", "restore copy"}; !slices.Equal(events, want) {
		t.Errorf("driver calls %q, want %q", events, want)
	}
	if got, _ := l.Get(ctx, fk2.ID); got.State != vm.Running || drv.guest(fk2.ID).hostname != "web-f2" {
		t.Errorf("fork 2 %+v", got)
	}
	ed.unfit = false

	// A failed save: the early copy is killed, nothing of the fork is left.
	running := drv.Running()
	drv.Fail(fake.OpSaveState, errors.New("disk on fire"), 1)
	_, _, events, err = fork("web-f3")
	if err == nil {
		t.Fatal("fork with a failing save succeeded")
	}
	if !slices.Contains(events, "kill") {
		t.Errorf("driver calls %q: the early copy was not killed", events)
	}
	if n := drv.Running(); n != running {
		t.Errorf("%d fake vms run, want %d", n, running)
	}
	if portCount(p) != 3 {
		t.Errorf("%d ports, want 3", portCount(p))
	}
	vms, _ := os.ReadDir(filepath.Join(state, "vms"))
	if len(vms) != 3 {
		t.Errorf("vm dirs %v, want the source's and two forks'", vms)
	}
}

func fileBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
