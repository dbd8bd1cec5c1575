package cloudhypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/conformance"
)

// fakeEnv makes Start run the fake VMM (this test binary) and returns the
// driver and the path of the call log.
func fakeEnv(t *testing.T, env ...string) (*Driver, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	calls := filepath.Join(t.TempDir(), "calls.jsonl")
	t.Setenv("MINIONS_FAKE_CH", "1")
	t.Setenv("MINIONS_FAKE_CH_LOG", calls)
	t.Setenv("MINIONS_FAKE_CH_POWER", "")
	t.Setenv("MINIONS_FAKE_CH_FAIL", "")
	t.Setenv("MINIONS_CH_OPENAPI", specPath())
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	d, err := New(Config{Binary: exe, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return d, calls
}

// newSpec returns a spec with a fresh short run dir and a dummy kernel.
func newSpec(t *testing.T) hypervisor.Spec {
	t.Helper()
	run, err := os.MkdirTemp("", "chd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	kernel := filepath.Join(run, "vmlinux")
	if err := os.WriteFile(kernel, []byte("not a kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	return hypervisor.Spec{
		ID: "0123456789ab", Name: "web", CPUs: 1, MemoryMiB: 256,
		Kernel: kernel, Cmdline: "console=ttyS0",
		Disks:      []hypervisor.Disk{{Path: filepath.Join(run, "root.qcow2"), Format: "qcow2"}, {Path: filepath.Join(run, "data.raw"), Format: "raw"}},
		Net:        &hypervisor.NetIface{TAP: "mn0123456789ab", MAC: "52:54:00:12:34:56"},
		RunDir:     run,
		ConsoleLog: filepath.Join(run, "console.log"),
		VsockCID:   42,
	}
}

func endpoints(calls []fakeCall) []string {
	var out []string
	for _, c := range calls {
		if c.Endpoint != "vmm.ping" && c.Endpoint != "vm.info" {
			out = append(out, c.Endpoint)
		}
	}
	return out
}

func noViolations(t *testing.T, calls []fakeCall) {
	t.Helper()
	if len(calls) == 0 {
		t.Fatal("the fake VMM logged no calls")
	}
	for _, c := range calls {
		if c.Violation != "" {
			t.Errorf("%s %s: %s (body %s)", c.Method, c.Endpoint, c.Violation, c.Body)
		}
	}
}

// waitReaped waits until /proc/PID is gone: the child exited and was reaped.
func waitReaped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			t.Fatalf("pid %d not reaped: %s", pid, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBuildVMConfigMatchesSpec(t *testing.T) {
	a := loadAPI(t)
	create, err := a.operation("PUT", "vm.create")
	if err != nil {
		t.Fatal(err)
	}
	schema := jsonSchemaOf(create["requestBody"])
	full := newSpec(t)
	minimal := hypervisor.Spec{ID: "a", CPUs: 2, MemoryMiB: 512, Kernel: "/k", RunDir: "/run/m/a", VsockCID: 3}
	for name, tc := range map[string]struct {
		cfg  Config
		spec hypervisor.Spec
	}{
		"full":       {Config{}, full},
		"minimal":    {Config{}, minimal},
		"no hotplug": {Config{MemoryHotplugMiB: -1, MaxVCPUs: 2}, minimal},
		"initramfs":  {Config{}, func() hypervisor.Spec { s := minimal; s.Initramfs = "/i"; return s }()},
		"readonly disk": {Config{}, func() hypervisor.Spec {
			s := minimal
			s.Disks = []hypervisor.Disk{{Path: "/b", Format: "raw", ReadOnly: true}}
			return s
		}()},
	} {
		t.Run(name, func(t *testing.T) {
			vc := BuildVMConfig(tc.cfg, tc.spec)
			b, _ := json.Marshal(vc)
			if err := a.ValidateJSON(schema, b); err != nil {
				t.Fatalf("%s\n%s", err, b)
			}
		})
	}
	// The contract points of the issue, checked on the full spec.
	vc := BuildVMConfig(Config{}, full)
	if d := vc.Disks[0]; !d.BackingFiles || d.ImageType != "Qcow2" || d.ID != "disk0" {
		t.Errorf("qcow2 disk = %+v, want backing_files on, image_type Qcow2, id disk0", d)
	}
	if d := vc.Disks[1]; d.BackingFiles || d.ImageType != "Raw" {
		t.Errorf("raw disk = %+v, want no backing files", d)
	}
	if vc.Serial.Mode != "File" || vc.Serial.File != full.ConsoleLog || vc.Console.Mode != "Off" {
		t.Errorf("serial %+v console %+v, want serial to the log file and console off", vc.Serial, vc.Console)
	}
	if vc.Vsock.CID != 42 || vc.Vsock.Socket != filepath.Join(full.RunDir, "vsock.sock") {
		t.Errorf("vsock = %+v", vc.Vsock)
	}
	if vc.CPUs.MaxVCPUs < 2 || vc.Memory.HotplugSize == 0 {
		t.Errorf("cpus %+v memory %+v: no room to resize", vc.CPUs, vc.Memory)
	}
	if len(vc.Net) != 1 || vc.Net[0].TAP != full.Net.TAP || vc.Net[0].MAC != full.Net.MAC {
		t.Errorf("net = %+v", vc.Net)
	}
	if vc.RNG == nil || vc.RNG.Src != "/dev/urandom" {
		t.Errorf("rng = %+v", vc.RNG)
	}
}

func TestRequestBodiesMatchSpec(t *testing.T) {
	a := loadAPI(t)
	two, ram := 2, int64(1<<30)
	for _, tc := range []struct {
		endpoint string
		body     any
	}{
		{"vm.resize", VMResize{DesiredVCPUs: &two}},
		{"vm.resize", VMResize{DesiredRAM: &ram}},
		{"vm.resize", VMResize{DesiredVCPUs: &two, DesiredRAM: &ram}},
		{"vm.resize-disk", VMResizeDisk{ID: DiskID(0), DesiredSize: 10 << 30}},
		{"vm.snapshot", VMSnapshotConfig{DestinationURL: "file:///var/lib/minions/snap"}},
		{"vm.restore", RestoreConfig{SourceURL: "file:///var/lib/minions/snap"}},
	} {
		b, _ := json.Marshal(tc.body)
		if err := a.ValidateRequest("PUT", tc.endpoint, b); err != nil {
			t.Errorf("%s %s: %v", tc.endpoint, b, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{}, true},
		{Config{MaxVCPUs: 16, MemoryHotplugMiB: -1}, true},
		{Config{MaxVCPUs: -1}, false},
		{Config{MaxVCPUs: 300}, false},
		{Config{MemoryHotplugMiB: -2}, false},
		{Config{StartTimeout: -time.Second}, false},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, errs.InvalidArgument)) {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.cfg, err, tc.ok)
		}
	}
}

func TestStartRejectsBadSpec(t *testing.T) {
	d, _ := fakeEnv(t)
	good := newSpec(t)
	for name, mutate := range map[string]func(*hypervisor.Spec){
		"no cpus":      func(s *hypervisor.Spec) { s.CPUs = 0 },
		"cid 2":        func(s *hypervisor.Spec) { s.VsockCID = 2 },
		"relative dir": func(s *hypervisor.Spec) { s.RunDir = "run" },
		"long dir":     func(s *hypervisor.Spec) { s.RunDir = "/" + strings.Repeat("x", 100) },
		"bad format":   func(s *hypervisor.Spec) { s.Disks[0].Format = "vmdk" },
		"no kernel":    func(s *hypervisor.Spec) { s.Kernel = "" },
	} {
		s := good
		s.Disks = slices.Clone(good.Disks)
		mutate(&s)
		if _, err := d.Start(context.Background(), s); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("%s: Start = %v, want InvalidArgument", name, err)
		}
	}
}

// TestLifecycleAgainstFakeVMM drives a real process through every
// operation and checks the exact API conversation.
func TestLifecycleAgainstFakeVMM(t *testing.T) {
	d, log := fakeEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := newSpec(t)
	t0 := time.Now()
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("start (spawn, ping, create, boot) took %s", time.Since(t0))
	defer d.Kill(context.Background(), h)
	if !d.Alive(h) || h.Driver != Name || h.Agent.Kind != "hybrid-vsock" || h.Agent.Port != DefaultAgentPort {
		t.Fatalf("handle %+v", h)
	}
	if v, err := d.Ping(ctx, h); err != nil || v != "fake-ch v0" {
		t.Fatalf("Ping = %q, %v", v, err)
	}

	conn, err := d.DialAgent(ctx, h)
	if err != nil {
		t.Fatalf("DialAgent: %v", err)
	}
	fmt.Fprint(conn, "ping\n")
	buf := make([]byte, 5)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("agent echo = %q, %v", buf, err)
	}
	conn.Close()

	for range 2 {
		if err := d.Pause(ctx, h); err != nil {
			t.Fatalf("Pause: %v", err)
		}
	}
	if info, _ := d.Info(ctx, h); info.State != hypervisor.StatePaused {
		t.Fatalf("Info after pause = %+v", info)
	}
	for range 2 {
		if err := d.Resume(ctx, h); err != nil {
			t.Fatalf("Resume: %v", err)
		}
	}
	if err := d.Resize(ctx, h, 2, 512); err != nil {
		t.Fatalf("Resize: %v", err)
	}
	if info, _ := d.Info(ctx, h); info != (hypervisor.Info{State: hypervisor.StateRunning, CPUs: 2, MemoryMiB: 512}) {
		t.Fatalf("Info after resize = %+v", info)
	}
	if err := d.Resize(ctx, h, 64, 0); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("Resize beyond max vcpus = %v, want InvalidArgument (400)", err)
	}
	if err := d.ResizeDisk(ctx, h, DiskID(1), 8<<30); err != nil {
		t.Fatalf("ResizeDisk: %v", err)
	}
	if err := d.ResizeDisk(ctx, h, "disk9", 8<<30); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("ResizeDisk of a missing disk = %v, want FailedPrecondition", err)
	}
	snap := filepath.Join(t.TempDir(), "snap")
	if err := d.SaveState(ctx, h, snap); err != nil {
		t.Fatalf("SaveState: %v", err)
	}
	if info, _ := d.Info(ctx, h); info.State != hypervisor.StatePaused {
		t.Fatalf("Info after SaveState = %+v, want paused", info)
	}
	if err := d.Shutdown(ctx, h, 5*time.Second); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitReaped(t, h.PID)
	if d.Alive(h) {
		t.Fatal("alive after Shutdown")
	}
	if info, err := d.Info(ctx, h); err != nil || info.State != hypervisor.StateStopped {
		t.Fatalf("Info after Shutdown = %+v, %v", info, err)
	}

	calls := readCalls(t, log)
	noViolations(t, calls)
	want := []string{"vm.create", "vm.boot", "vm.pause", "vm.resume", "vm.resize", "vm.resize",
		"vm.resize-disk", "vm.resize-disk", "vm.pause", "vm.snapshot", "vm.power-button", "vm.shutdown", "vmm.shutdown"}
	// The fake VM was paused at shutdown: the power button is refused (405)
	// and the driver escalates to vm.shutdown + vmm.shutdown.
	if got := endpoints(calls); !slices.Equal(got, want) {
		t.Errorf("API calls:\n got %v\nwant %v", got, want)
	}

	// Restore into a new run dir: the snapshot config is adapted.
	spec2 := newSpec(t)
	spec2.CPUs, spec2.MemoryMiB = 2, 512 // the shape it was saved in
	r, err := d.Restore(ctx, spec2, snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	defer d.Kill(context.Background(), r)
	if info, _ := d.Info(ctx, r); info != (hypervisor.Info{State: hypervisor.StateRunning, CPUs: 2, MemoryMiB: 512}) {
		t.Fatalf("Info after Restore = %+v", info)
	}
	if conn, err := d.DialAgent(ctx, r); err != nil {
		t.Fatalf("DialAgent after restore (vsock socket moved to the new run dir?): %v", err)
	} else {
		conn.Close()
	}
	if err := d.Kill(ctx, r); err != nil {
		t.Fatal(err)
	}
	waitReaped(t, r.PID)
	noViolations(t, readCalls(t, log))
}

func TestShutdownPaths(t *testing.T) {
	for _, tc := range []struct {
		power string
		want  []string
	}{
		// The guest powers off and the VMM exits by itself.
		{"exit", []string{"vm.create", "vm.boot", "vm.power-button"}},
		// The VM reaches Shutdown but the VMM stays: the driver sees it in
		// vm.info and sends vmm.shutdown before the timeout.
		{"halt", []string{"vm.create", "vm.boot", "vm.power-button", "vmm.shutdown"}},
		// The guest ignores the button: hard stop after the timeout.
		{"ignore", []string{"vm.create", "vm.boot", "vm.power-button", "vm.shutdown", "vmm.shutdown"}},
	} {
		t.Run(tc.power, func(t *testing.T) {
			d, log := fakeEnv(t, "MINIONS_FAKE_CH_POWER="+tc.power)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			spec := newSpec(t)
			h, err := d.Start(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Kill(context.Background(), h)
			t0 := time.Now()
			// Generous where the guest cooperates (the VMM's exit is what
			// ends the wait; a race-instrumented fake exits slowly), short
			// where it does not.
			timeout := 5 * time.Second
			if tc.power == "ignore" {
				timeout = 500 * time.Millisecond
			}
			if err := d.Shutdown(ctx, h, timeout); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			took := time.Since(t0)
			t.Logf("shutdown took %s", took)
			if tc.power != "ignore" && took >= timeout {
				t.Errorf("shutdown took %s: it waited for the timeout instead of the exit", took)
			}
			waitReaped(t, h.PID)
			calls := readCalls(t, log)
			noViolations(t, calls)
			if got := endpoints(calls); !slices.Equal(got, tc.want) {
				t.Errorf("API calls:\n got %v\nwant %v", got, tc.want)
			}
			for _, name := range []string{"ch.sock", "vsock.sock"} {
				if _, err := os.Stat(filepath.Join(spec.RunDir, name)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s left behind", name)
				}
			}
			// Idempotent.
			if err := d.Shutdown(ctx, h, time.Second); err != nil {
				t.Fatalf("second Shutdown: %v", err)
			}
		})
	}
}

// TestStartUndo makes each API step fail in turn: the VMM must be killed
// and reaped and its sockets removed.
func TestStartUndo(t *testing.T) {
	for _, fail := range []string{"vm.create", "vm.boot", "vmm.ping"} {
		t.Run(fail, func(t *testing.T) {
			d, log := fakeEnv(t, "MINIONS_FAKE_CH_FAIL="+fail)
			d.cfg.StartTimeout = time.Second
			spec := newSpec(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			h, err := d.Start(ctx, spec)
			if err == nil {
				d.Kill(ctx, h)
				t.Fatal("Start succeeded")
			}
			t.Logf("Start: %v", err)
			calls := readCalls(t, log)
			noViolations(t, calls)
			entries, _ := os.ReadDir(spec.RunDir)
			for _, e := range entries {
				if e.Type()&os.ModeSocket != 0 {
					t.Errorf("socket left: %s", e.Name())
				}
			}
			if procs := mentioning(spec.RunDir); len(procs) > 0 {
				t.Errorf("processes left: %v", procs)
			}
		})
	}
}

func TestStartMissingBinary(t *testing.T) {
	d, err := New(Config{Binary: "/nonexistent/cloud-hypervisor"})
	if err != nil {
		t.Fatal(err)
	}
	spec := newSpec(t)
	_, err = d.Start(context.Background(), spec)
	if !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "spawn vmm") {
		t.Fatalf("Start = %v, want FailedPrecondition naming the step", err)
	}
}

func mentioning(s string) []string {
	var out []string
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), s) {
			out = append(out, p)
		}
	}
	return out
}

// TestConformanceFakeVMM runs the shared driver suite against real
// processes of the fake VMM (no guest: the guest-side checks are skipped).
func TestConformanceFakeVMM(t *testing.T) {
	d, log := fakeEnv(t)
	conformance.Run(t, conformance.Fixture{
		Driver:          d,
		NewSpec:         newSpec,
		Timeout:         time.Minute,
		ShutdownTimeout: time.Second,
	})
	noViolations(t, readCalls(t, log))
}

func TestDialAgentHandshake(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer string // what the peer writes after reading CONNECT
		class  *errs.Class
		ok     bool
	}{
		{"ok with data in the same write", "OK 1073741824\nhello", nil, true},
		{"refused (peer closes)", "", errs.Unavailable, false},
		{"garbage", "NO 5\n", nil, false},
		{"bad port number", "OK x\n", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "v.sock")
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				got <- string(buf[:n])
				if tc.answer != "" {
					c.Write([]byte(tc.answer))
					io.Copy(io.Discard, c)
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := DialAgent(ctx, path, 1024)
			if s := <-got; s != "CONNECT 1024\n" {
				t.Errorf("peer read %q", s)
			}
			if !tc.ok {
				if err == nil {
					conn.Close()
					t.Fatal("DialAgent succeeded")
				}
				if tc.class != nil && !errors.Is(err, tc.class) {
					t.Fatalf("err %v, want class %v", err, tc.class)
				}
				return
			}
			if err != nil {
				t.Fatalf("DialAgent: %v", err)
			}
			defer conn.Close()
			buf := make([]byte, 5)
			if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hello" {
				t.Fatalf("data after OK = %q, %v (handshake swallowed it?)", buf, err)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := DialAgent(ctx, "/nonexistent/v.sock", 1024); !errors.Is(err, errs.Unavailable) {
		t.Fatalf("dial of a missing socket = %v, want Unavailable", err)
	}
}
