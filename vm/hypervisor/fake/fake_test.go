package fake_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/conformance"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

func newSpec(t *testing.T) hypervisor.Spec {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	return hypervisor.Spec{ID: "0123456789ab", Name: "web", CPUs: 2, MemoryMiB: 256, Kernel: kernel, RunDir: run, ConsoleLog: filepath.Join(dir, "console.log"), VsockCID: 3}
}

func TestConformance(t *testing.T) {
	for _, caps := range []hypervisor.Caps{{MemorySnapshot: true}, {LiveResize: true}} {
		conformance.Run(t, conformance.Fixture{Driver: fake.New(fake.Config{Caps: caps}), NewSpec: newSpec})
	}
}

func TestInjectedFailures(t *testing.T) {
	ctx := context.Background()
	d := fake.New(fake.Config{})
	boom := errors.New("boom")
	spec := newSpec(t)

	d.Fail(fake.OpStart, boom, 1)
	if _, err := d.Start(ctx, spec); !errors.Is(err, boom) {
		t.Fatalf("Start err = %v, want boom", err)
	}
	if d.Running() != 0 {
		t.Fatal("failed Start left a VM")
	}
	if _, err := os.Stat(filepath.Join(spec.RunDir, fake.SocketName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("failed Start left a socket: %v", err)
	}
	h, err := d.Start(ctx, spec) // the failure was used up
	if err != nil {
		t.Fatal(err)
	}

	d.Fail(fake.OpPause, boom, -1)
	for range 3 {
		if err := d.Pause(ctx, h); !errors.Is(err, boom) {
			t.Fatalf("Pause err = %v", err)
		}
	}
	d.Fail(fake.OpPause, nil, 0)
	if err := d.Pause(ctx, h); err != nil {
		t.Fatal(err)
	}

	d.Crash(h)
	if d.Alive(h) {
		t.Fatal("alive after Crash")
	}
	if info, _ := d.Info(ctx, h); info.State != hypervisor.StateStopped {
		t.Fatalf("state after Crash = %s", info.State)
	}
	if err := d.Resume(ctx, h); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("Resume after Crash: %v", err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(spec.RunDir, fake.SocketName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Kill left the socket of a crashed VM: %v", err)
	}

	var ops []fake.Op
	for _, c := range d.Calls() {
		ops = append(ops, c.Op)
	}
	want := []fake.Op{"start", "start", "pause", "pause", "pause", "pause", "info", "resume", "kill"}
	if len(ops) != len(want) {
		t.Fatalf("calls = %v, want %v", ops, want)
	}
	for i := range want {
		if ops[i] != want[i] {
			t.Fatalf("calls = %v, want %v", ops, want)
		}
	}
}
