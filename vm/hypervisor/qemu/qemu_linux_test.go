package qemu

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/testenv"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/conformance"
	"github.com/minionsdev/minions/vm/hypervisor/conformance/tinyvm"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
	"github.com/minionsdev/minions/vm/jail"
)

// Environment between the test process, its re-exec inside a fresh network
// namespace, and the test relay it starts.
const (
	envRelay  = "MINIONS_QEMU_TEST_RELAY"  // "1": act as the agent relay
	envJail   = "MINIONS_QEMU_TEST_JAIL"   // "1": act as the jail launcher
	envNetns  = "MINIONS_QEMU_TEST_NETNS"  // "1": already in the test netns
	envKernel = "MINIONS_QEMU_TEST_KERNEL" // fixture kernel path
	envSkip   = "MINIONS_QEMU_TEST_SKIP"   // why VM tests cannot run
)

var measure = flag.Bool("measure", false, "measure boot and snapshot times (5 boots)")

// TestMain runs the VM tests inside a network namespace of their own: as
// root with QEMU installed it fetches the fixture kernel (that needs the
// network), then re-executes the test binary in a new netns.
func TestMain(m *testing.M) {
	// The relay first: a jailed relay inherits the launcher's environment.
	if os.Getenv(envRelay) == "1" {
		os.Exit(testRelay(os.Args[1:]))
	}
	if os.Getenv(envJail) == "1" {
		os.Exit(jail.Main(os.Args[1:]))
	}
	flag.Parse()
	if os.Getenv(envNetns) == "1" {
		os.Exit(m.Run())
	}
	reason := ""
	switch {
	case testing.Short():
		reason = "-short"
	case os.Geteuid() != 0:
		reason = "not root (needed for a network namespace)"
	default:
		if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
			reason = "qemu-system-x86_64 not installed"
		}
	}
	if reason != "" {
		os.Setenv(envSkip, reason)
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cache, _ := os.UserCacheDir()
	kernel, err := tinyvm.Kernel(ctx, filepath.Join(cache, "minions-test", "kernel"))
	cancel()
	if err != nil {
		os.Setenv(envSkip, "no fixture kernel: "+err.Error())
		os.Exit(m.Run())
	}
	// The Debian kernel the agent-guest tests boot (newAgentGuest) comes
	// from apt: fetch it here, before the netns, where the network is
	// (inside, only a cache another package filled first would do).
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Minute)
	if _, err := images.EnsureKernel(ctx, filepath.Join(cache, "minions-test", "kernels")); err != nil {
		fmt.Fprintln(os.Stderr, "qemu tests: guest kernel:", err)
	}
	cancel()
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envNetns+"=1", envKernel+"="+kernel)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "re-exec in a network namespace:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// testRelay is a minimal agent relay: hybrid-vsock on --listen, each
// connection piped to the unix socket --serial.
func testRelay(args []string) int {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	serial := fs.String("serial", "", "")
	listen := fs.String("listen", "", "")
	if err := fs.Parse(args); err != nil || *serial == "" || *listen == "" {
		fmt.Fprintln(os.Stderr, "usage: relay --serial PATH --listen PATH")
		return 2
	}
	ln, err := net.Listen("unix", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			line, err := br.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "CONNECT ") {
				return
			}
			s, err := net.Dial("unix", *serial)
			if err != nil {
				return
			}
			defer s.Close()
			fmt.Fprintf(c, "OK 1\n")
			go func() { _, _ = io.Copy(s, br) }()
			_, _ = io.Copy(c, s)
		}()
	}
}

var (
	initramfsOnce sync.Once
	initramfsPath string
	initramfsErr  error
)

// vmFixture skips the test unless VMs can run, and returns the driver and
// a spec factory for the tinyvm fixture.
func vmFixture(t *testing.T) (*Driver, func(t *testing.T, extra ...string) hypervisor.Spec) {
	t.Helper()
	switch r := os.Getenv(envSkip); r {
	case "":
	case "-short":
		t.Skip("VM tests skipped: -short")
	default:
		// Root, QEMU and the fixture kernel are what a CI machine has.
		testenv.SkipUnlessCI(t, "VM tests skipped: "+r)
	}
	kernel := os.Getenv(envKernel)
	initramfsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tinyvm-")
		if err != nil {
			initramfsErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		initramfsPath, initramfsErr = tinyvm.Initramfs(ctx, dir)
	})
	if initramfsErr != nil {
		t.Fatal(initramfsErr)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{
		VhostVsock:   VsockOff,
		RelayCommand: []string{"/usr/bin/env", envRelay + "=1", self},
		MemoryDir:    testMemoryDir(t),
		Jail:         testJail(t, self),
		Log:          slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	newSpec := func(t *testing.T, extra ...string) hypervisor.Spec {
		run, err := os.MkdirTemp("", "mq")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(run, 0o700); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				for _, name := range []string{qemuLog, relayLog, "console.log"} {
					b, _ := os.ReadFile(filepath.Join(run, name))
					t.Logf("%s:\n%s", name, b)
				}
			}
			os.RemoveAll(run)
		})
		n := specSeq.Add(1)
		return hypervisor.Spec{
			ID: fmt.Sprintf("0123456789%02x", n%256), Name: "tiny", CPUs: 1, MemoryMiB: 256,
			VsockCID: uint32(100 + n), // the jail's uid
			Kernel:   kernel, Initramfs: initramfsPath, Cmdline: tinyvm.Cmdline(extra...),
			RunDir: run, ConsoleLog: filepath.Join(run, "console.log"),
		}
	}
	return d, newSpec
}

// specSeq numbers the specs of this test process: each VM gets its own
// ID (its cgroup) and CID (its uid).
var specSeq atomic.Uint32

// testJail jails the test VMs like the daemon's: the test binary is the
// launcher, and the directories holding the fixtures (the temporary
// directory, the home with the cached kernel) are hidden, so every file a
// VM uses is bound into its mount namespace.
func testJail(t testing.TB, self string) jail.Config {
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	return jail.Config{Command: []string{"/usr/bin/env", envJail + "=1", self}, CgroupParent: "minions-test", Hide: []string{os.TempDir(), home}}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// guestRunning waits for the ready marker, then for the tick counter to
// advance.
func guestRunning(ctx context.Context, spec hypervisor.Spec, _ *hypervisor.Handle) error {
	if err := tinyvm.WaitFor(ctx, spec.ConsoleLog, tinyvm.ReadyMarker, 1); err != nil {
		return err
	}
	start := tinyvm.LastTick(spec.ConsoleLog)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for tinyvm.LastTick(spec.ConsoleLog) <= start {
		select {
		case <-ctx.Done():
			return fmt.Errorf("console ticks stuck at %d: %w", start, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

func TestConformanceQEMU(t *testing.T) {
	d, newSpec := vmFixture(t)
	conformance.Run(t, conformance.Fixture{
		Driver:       d,
		NewSpec:      func(t *testing.T) hypervisor.Spec { return newSpec(t) },
		GuestRunning: guestRunning,
	})
}

// processesIn lists processes whose command line mentions dir.
func processesIn(dir string) []string {
	var out []string
	files, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), dir) {
			out = append(out, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

func wantNothingLeft(t *testing.T, dir string) {
	t.Helper()
	for _, f := range runFiles {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s left in run dir", f)
		}
	}
	if p := processesIn(dir); len(p) > 0 {
		t.Errorf("processes left: %v", p)
	}
}

// TestStartFailuresUndo makes steps after the QEMU launch fail and checks
// that what was started is gone.
func TestStartFailuresUndo(t *testing.T) {
	d, newSpec := vmFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("missing tap is refused", func(t *testing.T) {
		spec := newSpec(t)
		spec.Net = &hypervisor.NetIface{TAP: "mqnosuchtap0", MAC: "52:54:00:00:00:01"}
		if h, err := d.Start(ctx, spec); !errors.Is(err, errs.FailedPrecondition) {
			if err == nil {
				d.Kill(ctx, h)
			}
			t.Fatalf("err = %v, want FailedPrecondition", err)
		}
		wantNothingLeft(t, spec.RunDir)
	})
	t.Run("qemu exits (not a qcow2 disk)", func(t *testing.T) {
		spec := newSpec(t)
		disk := filepath.Join(spec.RunDir, "bad.qcow2")
		if err := os.WriteFile(disk, []byte("not a qcow2 image"), 0o600); err != nil {
			t.Fatal(err)
		}
		spec.Disks = []hypervisor.Disk{{Path: disk, Format: "qcow2"}}
		h, err := d.Start(ctx, spec)
		if err == nil {
			d.Kill(ctx, h)
		}
		if err == nil || !strings.Contains(err.Error(), "connect qmp") || !strings.Contains(err.Error(), "qcow") {
			t.Fatalf("err = %v, want a connect qmp failure quoting QEMU's complaint", err)
		}
		wantNothingLeft(t, spec.RunDir)
	})
	t.Run("relay exits", func(t *testing.T) {
		cfg := d.cfg
		cfg.RelayCommand = []string{"/bin/sh", "-c", "echo relay refuses >&2; exit 3", "relay"}
		bad, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		bad.tapExists = d.tapExists
		spec := newSpec(t)
		_, err = bad.Start(ctx, spec)
		if err == nil || !strings.Contains(err.Error(), "wait for agent relay") || !strings.Contains(err.Error(), "relay refuses") {
			t.Fatalf("err = %v", err)
		}
		wantNothingLeft(t, spec.RunDir)
	})
}

func TestGuestRebootAndPowerOff(t *testing.T) {
	d, newSpec := vmFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("reboot ends the process", func(t *testing.T) {
		spec := newSpec(t, "tinyvm.reboot")
		h, err := d.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Kill(context.Background(), h)
		if err := procfs.WaitGone(ctx, h.PID, h.StartTime, 20*time.Millisecond); err != nil {
			t.Fatalf("qemu still runs after guest reboot: %v", err)
		}
		if n := strings.Count(readFile(t, spec.ConsoleLog), tinyvm.ReadyMarker); n != 1 {
			t.Fatalf("guest booted %d times, want once (-no-reboot)", n)
		}
		if r, line := consolelog.LastExit(spec.ConsoleLog); r != consolelog.ExitReboot {
			t.Fatalf("exit reason %q (%q), want reboot; console:\n%s", r, line, readFile(t, spec.ConsoleLog))
		}
		if err := d.Shutdown(ctx, h, time.Second); err != nil {
			t.Fatal(err)
		}
		wantNothingLeft(t, spec.RunDir)
	})
	t.Run("poweroff stops", func(t *testing.T) {
		spec := newSpec(t, "tinyvm.poweroff")
		h, err := d.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Kill(context.Background(), h)
		if err := procfs.WaitGone(ctx, h.PID, h.StartTime, 20*time.Millisecond); err != nil {
			t.Fatalf("qemu still runs after guest power-off: %v", err)
		}
		if info, err := d.Info(ctx, h); err != nil || info.State != hypervisor.StateStopped {
			t.Fatalf("Info = %+v, %v", info, err)
		}
		if r, _ := consolelog.LastExit(spec.ConsoleLog); r != consolelog.ExitPoweroff {
			t.Fatalf("exit reason %q, want poweroff", r)
		}
		// The relay outlives QEMU until Shutdown stops it.
		if err := d.Shutdown(ctx, h, time.Second); err != nil {
			t.Fatal(err)
		}
		wantNothingLeft(t, spec.RunDir)
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestAgentRelay(t *testing.T) {
	d, newSpec := vmFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec := newSpec(t)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), h)
	if h.Agent.Kind != "hybrid-vsock" || h.Agent.Port != AgentPort || len(h.Helpers) != 1 {
		t.Fatalf("handle = %+v", h)
	}
	// QEMU runs under its seccomp sandbox (filter mode), all threads.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.PID))
	if err != nil || !strings.Contains(string(status), "\nSeccomp:\t2\n") {
		t.Errorf("qemu is not in seccomp filter mode (%v):\n%s", err, status)
	}
	c, err := net.Dial("unix", h.Agent.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT %d\n", h.Agent.Port)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "OK 1\n" {
		t.Fatalf("relay answered %q, %v", line, err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	if procfs.Alive(h.Helpers[0].PID, h.Helpers[0].StartTime) {
		t.Fatal("relay survived Kill")
	}
}

// TestMeasure reports boot and snapshot times (run with -measure).
func TestMeasure(t *testing.T) {
	if !*measure {
		t.Skip("run with -measure")
	}
	d, newSpec := vmFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var boots []time.Duration
	for range 5 {
		spec := newSpec(t)
		start := time.Now()
		h, err := d.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		started := time.Since(start)
		if err := tinyvm.WaitFor(ctx, spec.ConsoleLog, tinyvm.ReadyMarker, 1); err != nil {
			t.Fatal(err)
		}
		boots = append(boots, time.Since(start))
		t.Logf("boot: Start returned after %v, marker after %v", started, boots[len(boots)-1])
		if err := d.Kill(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(boots)
	t.Logf("launch to marker under %s: median %v (min %v, max %v)", d.accel, boots[2], boots[0], boots[4])

	for range 3 {
		spec := newSpec(t)
		h, err := d.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := guestRunning(ctx, spec, h); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		start := time.Now()
		if err := d.SaveState(ctx, h, dir); err != nil {
			t.Fatal(err)
		}
		save := time.Since(start)
		st, _ := os.Stat(filepath.Join(dir, StateMemoryFile))
		if err := d.Kill(ctx, h); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		r, err := d.Restore(ctx, spec, dir)
		if err != nil {
			t.Fatal(err)
		}
		restored := time.Since(start)
		if err := guestRunning(ctx, spec, r); err != nil {
			t.Fatal(err)
		}
		t.Logf("SaveState %v (%d MiB state), Restore returned after %v, guest ticking after %v", save, st.Size()>>20, restored, time.Since(start))
		if err := d.Kill(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRestoreCopyTwice: a VM restored as a copy (a move with memory) is
// saved and restored as a copy again (moved on), and runs. The second
// stream must be loaded with x-ignore-shared as it was saved: the
// restored copy runs on a RAM backend that is not its own file, and
// its state was once recorded as needing x-ignore-shared, which made the
// second restore's QEMU exit at once.
func TestRestoreCopyTwice(t *testing.T) {
	d, newSpec := vmFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec := newSpec(t)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		dir := t.TempDir()
		if err := d.SaveState(ctx, h, dir); err != nil {
			t.Fatalf("save %d: %v", i, err)
		}
		if err := d.Kill(ctx, h); err != nil {
			t.Fatal(err)
		}
		spec = newSpec(t)
		if h, err = d.RestoreCopy(ctx, spec, dir); err != nil {
			t.Fatalf("restore copy %d: %v", i, err)
		}
		if err := ticksAgain(ctx, spec); err != nil {
			t.Fatalf("after restore copy %d: %v", i, err)
		}
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
}

// ticksAgain waits until a restored guest's console (a new file: it does
// not print its ready marker again) shows its tick counter going on.
func ticksAgain(ctx context.Context, spec hypervisor.Spec) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	first := int64(-1)
	for {
		if n := int64(tinyvm.LastTick(spec.ConsoleLog)); n > 0 {
			if first < 0 {
				first = n
			} else if n > first {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("console ticks did not go on (first seen %d): %w", first, ctx.Err())
		case <-t.C:
		}
	}
}
