package engine

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

// TestKillByRunDir: a VM's processes whose handle was never recorded are
// found by their command lines (the agent relay keeps no pid file): one
// naming a file of the run dir after a '=' and one naming it as an
// argument are killed; one naming a sibling run dir whose name starts
// the same is not.
func TestKillByRunDir(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	root := t.TempDir()
	dir := filepath.Join(root, "0123456789ab")
	os.MkdirAll(dir, 0o700)
	start := func(argv0 string) *exec.Cmd {
		t.Helper()
		c := exec.Command("bash", "-c", `exec -a "$0" sleep 60`, argv0)
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(c.Process.Pid) + "/cmdline")
			if strings.HasPrefix(string(b), argv0) {
				return c
			}
			if time.Now().After(deadline) {
				t.Fatalf("%q never started: %q", argv0, b)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	relay := start("relay --listen=" + dir + "/vsock.sock")
	qemu := start(dir + "/qemu.log")
	other := start("relay --listen=" + dir + "cd/vsock.sock")
	exited := func(c *exec.Cmd) bool {
		var ws syscall.WaitStatus
		pid, _ := syscall.Wait4(c.Process.Pid, &ws, syscall.WNOHANG, nil)
		return pid == c.Process.Pid
	}
	killByRunDir(dir)
	for name, c := range map[string]*exec.Cmd{"relay": relay, "qemu": qemu} {
		deadline := time.Now().Add(5 * time.Second)
		for !exited(c) {
			if time.Now().After(deadline) {
				t.Fatalf("%s (naming the run dir) not killed", name)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if exited(other) || syscall.Kill(other.Process.Pid, 0) != nil {
		t.Error("the process of another run dir was killed")
	}
}

// sweepDriver is the fake driver that records what Reconcile asks it to
// sweep.
type sweepDriver struct {
	*fake.Driver
	runDirs, forkDirs []string
}

func (d *sweepDriver) SweepMemory(runDirs, forkDirs []string) []string {
	d.runDirs, d.forkDirs = runDirs, forkDirs
	return nil
}

// TestReconcileSweepsMemory: Reconcile has the driver sweep its RAM
// files, naming every run dir (whatever its VM's state) and every fork's
// saved state of this installation, so that only files no VM owns go.
func TestReconcileSweepsMemory(t *testing.T) {
	fx := newFixture(t)
	sd := &sweepDriver{Driver: fx.drv}
	fx.eng.Driver = sd
	ctx := context.Background()
	id := vm.NewID()
	os.MkdirAll(fx.eng.runDir(id), 0o700) // a vm's, whatever its state
	fork := fx.eng.forkStateDir("0123456789ab")
	os.MkdirAll(fork, 0o700)
	if err := fx.eng.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(sd.runDirs, fx.eng.runDir(id)) {
		t.Errorf("run dirs %q lack the running vm's %s", sd.runDirs, fx.eng.runDir(id))
	}
	if !slices.Equal(sd.forkDirs, []string{fork}) {
		t.Errorf("fork dirs %q, want %q", sd.forkDirs, fork)
	}
}

// cgroupDriver is the fake driver that records what Reconcile keeps when
// it sweeps the installation's cgroups.
type cgroupDriver struct {
	*fake.Driver
	keep  []string
	calls int
}

func (d *cgroupDriver) SweepCgroups(keep []string) []string {
	d.keep, d.calls = keep, d.calls+1
	return nil
}

// TestReconcileSweepsCgroups: Reconcile has the driver sweep the
// installation's cgroups, keeping those of every VM that has a run dir,
// is recorded in a state other than stopped, or has an operation
// running; a stopped VM's (its processes are gone) is not kept.
func TestReconcileSweepsCgroups(t *testing.T) {
	fx := newFixture(t)
	cd := &cgroupDriver{Driver: fx.drv}
	fx.eng.Driver = cd
	ctx := context.Background()
	now := time.Now()
	withRunDir, creating, stopped, busy := vm.NewID(), vm.NewID(), vm.NewID(), vm.NewID()
	os.MkdirAll(fx.eng.runDir(withRunDir), 0o700)
	if err := store.InsertUser(ctx, fx.eng.DB, store.User{ID: "u1", Name: "user-u1", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for i, r := range []struct {
		id    string
		state vm.State
	}{{creating, vm.Creating}, {stopped, vm.Stopped}, {busy, vm.Stopped}} {
		v := store.VM{ID: r.id, Name: fmt.Sprintf("v%d", i), OwnerID: "u1", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
			State: r.state, IP: fmt.Sprintf("10.99.0.%d", 70+i), MAC: fmt.Sprintf("52:54:00:00:00:%02x", 70+i), CID: uint32(970 + i), CreatedAt: now}
		if err := store.InsertVM(ctx, fx.eng.DB, v); err != nil {
			t.Fatal(err)
		}
	}
	// An operation of a live process (this one) on a stopped VM.
	if err := store.InsertOperation(ctx, fx.eng.DB, store.Operation{ID: vm.NewID(), VMID: busy, Kind: "start", Step: "boot", State: store.OpRunning,
		PID: os.Getpid(), Data: "{}", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := fx.eng.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if cd.calls != 1 {
		t.Fatalf("swept %d times", cd.calls)
	}
	for _, id := range []string{withRunDir, creating, busy} {
		if !slices.Contains(cd.keep, id) {
			t.Errorf("keep %q lacks %s", cd.keep, id)
		}
	}
	if slices.Contains(cd.keep, stopped) {
		t.Errorf("keep %q has the stopped vm %s", cd.keep, stopped)
	}
}

// TestReconcileSweepsOnlyWhenDue: the first Reconcile of an engine sweeps
// (the CLI's, once per command); the next ones within sweepEvery do not,
// unless one finds a dead hypervisor (what it left is swept at once);
// after sweepEvery they sweep again.
func TestReconcileSweepsOnlyWhenDue(t *testing.T) {
	l, drv, ids := repairFixture(t, 1)
	cd := &cgroupDriver{Driver: drv}
	l.Driver = cd
	ctx := context.Background()
	pass := func(want int, when string) {
		t.Helper()
		if err := l.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		if cd.calls != want {
			t.Fatalf("%s: swept %d times, want %d", when, cd.calls, want)
		}
	}
	pass(1, "the first pass")
	pass(1, "a second pass at once")
	pass(1, "a third")
	v, _ := store.GetLocalVMByID(ctx, l.DB, ids[0])
	h, _ := DecodeHandle(v.Handle)
	drv.Crash(h)
	pass(2, "the pass that found a dead hypervisor")
	pass(2, "the pass after it")
	l.swept.Store(time.Now().Add(-sweepEvery).UnixNano())
	pass(3, "a pass sweepEvery after the last sweep")
}
