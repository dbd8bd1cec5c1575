package engine

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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
