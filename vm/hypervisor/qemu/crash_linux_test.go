package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

// TestCrashEvidenceKept: a QEMU that dies on its own (here SIGSEGV from
// outside) leaves a copy of its qemu.log, ending with its exit signal, and
// of its console next to the console log when Kill cleans up after it; a
// second Kill and the Kill of a running VM keep nothing.
func TestCrashEvidenceKept(t *testing.T) {
	d, newSpec := vmFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	spec := newSpec(t)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), h)
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(h.PID, unix.SIGSEGV); err != nil {
		t.Fatal(err)
	}
	if err := procfs.WaitGone(ctx, h.PID, h.StartTime, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(spec.ConsoleLog)
	logs, _ := filepath.Glob(filepath.Join(dir, qemuLog+crashSuffix+"*"))
	cons, _ := filepath.Glob(filepath.Join(dir, "console.log"+crashSuffix+"*"))
	if len(logs) != 1 || len(cons) != 1 {
		t.Fatalf("kept %v and %v, want one qemu.log and one console copy", logs, cons)
	}
	b, _ := os.ReadFile(logs[0])
	if !strings.Contains(string(b), "minions: pid ") || !strings.Contains(string(b), "signal: segmentation fault") {
		t.Errorf("kept qemu.log does not say how qemu ended:\n%s", b)
	}
	c, _ := os.ReadFile(cons[0])
	if len(c) == 0 {
		t.Error("kept console copy is empty")
	}
	wantNothingLeft(t, spec.RunDir)

	// Cleaning up again, and stopping a running VM, keep nothing.
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	spec2 := newSpec(t)
	h2, err := d.Start(ctx, spec2)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Kill(ctx, h2); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{dir, filepath.Dir(spec2.ConsoleLog)} {
		if got, _ := filepath.Glob(filepath.Join(dir, "*"+crashSuffix+"*")); len(got) > 2 || (dir != filepath.Dir(spec.ConsoleLog) && len(got) > 0) {
			t.Errorf("%s: kept %v", dir, got)
		}
	}
}
