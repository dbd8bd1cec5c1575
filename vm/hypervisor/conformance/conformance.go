package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/hypervisor"
)

// Fixture is what the suite needs from a driver's test.
type Fixture struct {
	Driver hypervisor.Driver
	// NewSpec returns a bootable spec with a fresh, empty RunDir and
	// ConsoleLog each time it is called.
	NewSpec func(t *testing.T) hypervisor.Spec
	// GuestRunning returns once the guest provably executes (for example,
	// its console output advances). It must fail when ctx ends while the
	// guest is paused. nil skips the guest-side checks.
	GuestRunning func(ctx context.Context, spec hypervisor.Spec, h *hypervisor.Handle) error
	// AgentReady returns once the guest agent answers. nil skips the
	// agent checks.
	AgentReady func(ctx context.Context, h *hypervisor.Handle) error
	// Timeout bounds each subtest. Default 3 minutes.
	Timeout time.Duration
	// ShutdownTimeout is passed to Shutdown. Default 2 s.
	ShutdownTimeout time.Duration
}

// Run runs the suite against f.
func Run(t *testing.T, f Fixture) {
	if f.Timeout == 0 {
		f.Timeout = 3 * time.Minute
	}
	if f.ShutdownTimeout == 0 {
		f.ShutdownTimeout = 2 * time.Second
	}
	s := &suite{f: f}
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, ctx context.Context)
	}{
		{"Lifecycle", s.lifecycle},
		{"Kill", s.kill},
		{"FailedStartLeavesNothing", s.failedStart},
		{"HandleReload", s.handleReload},
		{"SaveRestore", s.saveRestore},
		{"Fork", s.fork},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), f.Timeout)
			defer cancel()
			tc.fn(t, ctx)
		})
	}
}

type suite struct{ f Fixture }

func (s *suite) d() hypervisor.Driver { return s.f.Driver }

// start starts spec and registers a Kill for the end of the test.
func (s *suite) start(t *testing.T, ctx context.Context, spec hypervisor.Spec) *hypervisor.Handle {
	t.Helper()
	h, err := s.d().Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	s.cleanup(t, h)
	return h
}

func (s *suite) cleanup(t *testing.T, h *hypervisor.Handle) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.d().Kill(ctx, h); err != nil {
			t.Errorf("cleanup Kill: %v", err)
		}
	})
}

func (s *suite) wantInfo(t *testing.T, ctx context.Context, h *hypervisor.Handle, spec hypervisor.Spec, want hypervisor.State) {
	t.Helper()
	info, err := s.d().Info(ctx, h)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if info.State != want {
		t.Fatalf("Info state = %q, want %q", info.State, want)
	}
	if want != hypervisor.StateStopped && (info.CPUs != spec.CPUs || info.MemoryMiB != spec.MemoryMiB) {
		t.Fatalf("Info = %d cpus %d MiB, want %d cpus %d MiB", info.CPUs, info.MemoryMiB, spec.CPUs, spec.MemoryMiB)
	}
}

func (s *suite) guestRunning(t *testing.T, ctx context.Context, spec hypervisor.Spec, h *hypervisor.Handle) {
	t.Helper()
	if s.f.GuestRunning != nil {
		if err := s.f.GuestRunning(ctx, spec, h); err != nil {
			t.Fatalf("guest not running: %v", err)
		}
	}
	if s.f.AgentReady != nil {
		if err := s.f.AgentReady(ctx, h); err != nil {
			t.Fatalf("agent not ready: %v", err)
		}
	}
}

// wantClean checks that nothing of a VM is left: no socket in its run dir
// and no process mentioning the run dir.
func wantClean(t *testing.T, runDir string) {
	t.Helper()
	entries, err := os.ReadDir(runDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			t.Errorf("socket left in run dir: %s", e.Name())
		}
	}
	if pids := processesMentioning(runDir); len(pids) > 0 {
		t.Errorf("processes still mention %s: %v", runDir, pids)
	}
}

// processesMentioning lists processes whose command line contains s
// (zombies have an empty command line and are not listed).
func processesMentioning(s string) []string {
	var out []string
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), s) {
			out = append(out, filepath.Base(filepath.Dir(p))+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

func (s *suite) lifecycle(t *testing.T, ctx context.Context) {
	d := s.d()
	if d.Name() == "" {
		t.Error("empty driver name")
	}
	spec := s.f.NewSpec(t)
	h := s.start(t, ctx, spec)
	if h.Driver != d.Name() {
		t.Errorf("handle driver %q, driver name %q", h.Driver, d.Name())
	}
	if !d.Alive(h) {
		t.Fatal("not alive after Start")
	}
	s.wantInfo(t, ctx, h, spec, hypervisor.StateRunning)
	s.guestRunning(t, ctx, spec, h)

	for i := range 2 { // idempotent
		if err := d.Pause(ctx, h); err != nil {
			t.Fatalf("Pause #%d: %v", i+1, err)
		}
	}
	s.wantInfo(t, ctx, h, spec, hypervisor.StatePaused)
	if s.f.GuestRunning != nil {
		pctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		err := s.f.GuestRunning(pctx, spec, h)
		cancel()
		if err == nil {
			t.Fatal("guest still runs while paused")
		}
	}
	for i := range 2 {
		if err := d.Resume(ctx, h); err != nil {
			t.Fatalf("Resume #%d: %v", i+1, err)
		}
	}
	s.wantInfo(t, ctx, h, spec, hypervisor.StateRunning)
	s.guestRunning(t, ctx, spec, h)

	err := d.Resize(ctx, h, spec.CPUs+1, spec.MemoryMiB*2)
	if !d.Caps().LiveResize && !errors.Is(err, hypervisor.ErrUnsupported) {
		t.Fatalf("Resize without LiveResize: err = %v, want ErrUnsupported", err)
	}
	if d.Caps().LiveResize {
		if err != nil {
			t.Fatalf("Resize with LiveResize: %v", err)
		}
		resized := spec
		resized.CPUs, resized.MemoryMiB = spec.CPUs+1, spec.MemoryMiB*2
		s.wantInfo(t, ctx, h, resized, hypervisor.StateRunning)
		s.guestRunning(t, ctx, spec, h)
	}

	for i := range 2 {
		if err := d.Shutdown(ctx, h, s.f.ShutdownTimeout); err != nil {
			t.Fatalf("Shutdown #%d: %v", i+1, err)
		}
		if d.Alive(h) {
			t.Fatalf("alive after Shutdown #%d", i+1)
		}
	}
	s.wantInfo(t, ctx, h, spec, hypervisor.StateStopped)
	if err := d.Kill(ctx, h); err != nil {
		t.Fatalf("Kill after Shutdown: %v", err)
	}
	wantClean(t, spec.RunDir)
}

func (s *suite) kill(t *testing.T, ctx context.Context) {
	d := s.d()
	spec := s.f.NewSpec(t)
	h := s.start(t, ctx, spec)
	for i := range 2 {
		if err := d.Kill(ctx, h); err != nil {
			t.Fatalf("Kill #%d: %v", i+1, err)
		}
		if d.Alive(h) {
			t.Fatalf("alive after Kill #%d", i+1)
		}
	}
	if err := d.Shutdown(ctx, h, s.f.ShutdownTimeout); err != nil {
		t.Fatalf("Shutdown after Kill: %v", err)
	}
	if err := d.Pause(ctx, h); err == nil {
		t.Fatal("Pause of a killed VM succeeded")
	}
	if err := d.Resume(ctx, h); err == nil {
		t.Fatal("Resume of a killed VM succeeded")
	}
	if err := d.SaveState(ctx, h, t.TempDir()); err == nil {
		t.Fatal("SaveState of a killed VM succeeded")
	}
	s.wantInfo(t, ctx, h, spec, hypervisor.StateStopped)
	wantClean(t, spec.RunDir)
}

func (s *suite) failedStart(t *testing.T, ctx context.Context) {
	spec := s.f.NewSpec(t)
	spec.Kernel = filepath.Join(spec.RunDir, "no-such-kernel")
	h, err := s.d().Start(ctx, spec)
	if err == nil {
		s.cleanup(t, h)
		t.Fatal("Start with a missing kernel succeeded")
	}
	wantClean(t, spec.RunDir)

	spec = s.f.NewSpec(t)
	h, err = s.d().Restore(ctx, spec, t.TempDir())
	if err == nil {
		s.cleanup(t, h)
		t.Fatal("Restore from an empty directory succeeded")
	}
	wantClean(t, spec.RunDir)
}

func (s *suite) handleReload(t *testing.T, ctx context.Context) {
	d := s.d()
	spec := s.f.NewSpec(t)
	h := s.start(t, ctx, spec)
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var copied hypervisor.Handle
	if err := json.Unmarshal(b, &copied); err != nil {
		t.Fatal(err)
	}
	if !d.Alive(&copied) {
		t.Fatal("reloaded handle not alive")
	}
	s.wantInfo(t, ctx, &copied, spec, hypervisor.StateRunning)

	// A handle whose start time does not match names another process (a
	// reused PID): it is not alive and killing it must not kill the VM.
	forged := copied
	forged.StartTime++
	forged.Helpers = nil
	if d.Alive(&forged) {
		t.Fatal("handle with a wrong start time is alive")
	}
	if err := d.Kill(ctx, &forged); err != nil {
		t.Fatalf("Kill with a wrong start time: %v", err)
	}
	if !d.Alive(h) {
		t.Fatal("Kill with a wrong start time killed the VM")
	}
	if err := d.Kill(ctx, &copied); err != nil {
		t.Fatalf("Kill via reloaded handle: %v", err)
	}
	if d.Alive(h) {
		t.Fatal("original handle alive after Kill via the copy")
	}
	wantClean(t, spec.RunDir)
}

func (s *suite) saveRestore(t *testing.T, ctx context.Context) {
	d := s.d()
	if !d.Caps().MemorySnapshot {
		t.Skip("driver has no memory snapshots on this host")
	}
	spec := s.f.NewSpec(t)
	h := s.start(t, ctx, spec)
	s.guestRunning(t, ctx, spec, h)
	dir := t.TempDir()
	if err := d.SaveState(ctx, h, dir); err != nil {
		t.Fatalf("SaveState: %v", err)
	}
	s.wantInfo(t, ctx, h, spec, hypervisor.StatePaused)
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	wantClean(t, spec.RunDir)

	r, err := d.Restore(ctx, spec, dir)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	s.cleanup(t, r)
	if !d.Alive(r) {
		t.Fatal("restored VM not alive")
	}
	s.wantInfo(t, ctx, r, spec, hypervisor.StateRunning)
	s.guestRunning(t, ctx, spec, r)
	if err := d.Kill(ctx, r); err != nil {
		t.Fatal(err)
	}
	wantClean(t, spec.RunDir)

	// A mismatching shape is refused and leaves nothing.
	bad := spec
	bad.MemoryMiB *= 2
	if r, err := d.Restore(ctx, bad, dir); err == nil {
		s.cleanup(t, r)
		t.Fatal("Restore with twice the memory succeeded")
	}
	wantClean(t, spec.RunDir)
}

// fork: a running VM saved for a copy (hypervisor.Forker) is paused, runs
// on when resumed, and a copy with another ID, run dir and MAC starts from
// the saved state while the source runs; a copy of another shape is
// refused and leaves nothing.
func (s *suite) fork(t *testing.T, ctx context.Context) {
	d := s.d()
	fk, ok := d.(hypervisor.Forker)
	if !ok || !d.Caps().MemorySnapshot {
		t.Skip("driver cannot fork on this host")
	}
	spec := s.f.NewSpec(t)
	h := s.start(t, ctx, spec)
	s.guestRunning(t, ctx, spec, h)
	dir := t.TempDir()
	if err := fk.SaveCopy(ctx, h, dir); err != nil {
		t.Fatalf("SaveCopy: %v", err)
	}
	s.wantInfo(t, ctx, h, spec, hypervisor.StatePaused)
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	s.wantInfo(t, ctx, h, spec, hypervisor.StateRunning)

	cp := s.f.NewSpec(t)
	cp.ID = "f0" + spec.ID[2:]
	if cp.Net != nil {
		n := *cp.Net
		n.MAC = "02:00:00:0f:0f:0f"
		cp.Net = &n
	}
	bad := cp
	bad.CPUs++
	if r, err := fk.RestoreCopy(ctx, bad, dir); err == nil {
		s.cleanup(t, r)
		t.Fatal("RestoreCopy with another cpu count succeeded")
	}
	wantClean(t, cp.RunDir)
	// The copy's console starts as the source's did (guest checks that
	// read the console look for what the source printed before the save).
	if b, err := os.ReadFile(spec.ConsoleLog); err == nil {
		os.WriteFile(cp.ConsoleLog, b, 0o600)
	}
	r, err := fk.RestoreCopy(ctx, cp, dir)
	if err != nil {
		t.Fatalf("RestoreCopy: %v", err)
	}
	s.cleanup(t, r)
	if !d.Alive(r) || !d.Alive(h) {
		t.Fatalf("alive: copy %v, source %v", d.Alive(r), d.Alive(h))
	}
	s.wantInfo(t, ctx, r, cp, hypervisor.StateRunning)
	s.guestRunning(t, ctx, cp, r)
	s.guestRunning(t, ctx, spec, h)
	if err := d.Kill(ctx, r); err != nil {
		t.Fatal(err)
	}
	wantClean(t, cp.RunDir)
	s.wantInfo(t, ctx, h, spec, hypervisor.StateRunning)
}
