package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/vm/hypervisor/conformance/tinyvm"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

// TestRelayLogsConsole boots a jailed VM with the real minions-relay as
// both relay and console command: one helper process per VM relays the
// agent and writes the capped console log through the descriptors the
// driver handed it. Killed with SIGKILL, the relay is restarted by Repair
// and the console log goes on; Kill leaves no helper behind.
func TestRelayLogsConsole(t *testing.T) {
	d, newSpec := vmFixture(t)
	bin := filepath.Join(t.TempDir(), "minions-relay")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./relay/cmd/minions-relay")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cfg := d.cfg
	cfg.RelayCommand = []string{bin, "agent-relay"}
	cfg.ConsoleCommand = []string{bin, "console-log"}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec := newSpec(t)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), h)
	if len(h.Helpers) != 1 || h.Helpers[0].Name != "agent-relay" {
		t.Fatalf("helpers %+v, want the agent relay alone", h.Helpers)
	}
	argv, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", h.Helpers[0].PID))
	if !strings.Contains(string(argv), "--console-fd\x003") {
		t.Fatalf("relay argv %q has no --console-fd", argv)
	}
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatal(err)
	}
	connect(t, h.Agent.Path, h.Agent.Port)

	// The relay dies: Repair starts another, which logs on.
	if _, err := procfs.Signal(h.Helpers[0].PID, h.Helpers[0].StartTime, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := procfs.WaitGone(ctx, h.Helpers[0].PID, h.Helpers[0].StartTime, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	nh, repaired, err := d.Repair(ctx, h)
	if err != nil || !repaired || len(nh.Helpers) != 1 || nh.Helpers[0].PID == h.Helpers[0].PID {
		t.Fatalf("repair: %v, %v, helpers %+v", repaired, err, nh.Helpers)
	}
	h = nh
	before := tinyvm.LastTick(spec.ConsoleLog)
	for tinyvm.LastTick(spec.ConsoleLog) <= before+1 {
		select {
		case <-ctx.Done():
			t.Fatalf("console log stuck at tick %d after the relay restarted", before)
		case <-time.After(20 * time.Millisecond):
		}
	}
	connect(t, h.Agent.Path, h.Agent.Port)
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	if procfs.Alive(h.Helpers[0].PID, h.Helpers[0].StartTime) {
		t.Fatal("relay survived Kill")
	}
}

// connect checks that the relay at path accepts connections (the tiny
// guest runs no agent, so a CONNECT would get no stream).
func connect(t *testing.T, path string, _ uint32) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
