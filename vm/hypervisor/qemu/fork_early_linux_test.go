package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// TestForkEarlyCopy (real QEMU, jailed): a copy's QEMU started before the
// source's save (StartCopy) gets the source's RAM in its own RAM file
// (SaveCopy copies into it) and runs on from the saved instant once
// FinishCopy loaded the device state; a copy never finished ends with
// Kill, leaving no RAM file; FinishCopy refuses a state that is not a
// fork's.
func TestForkEarlyCopy(t *testing.T) {
	d, newSpec := vmFixture(t)
	if d.memDir == "" {
		t.Skip("no tmpfs memory dir")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
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

	c := newSpec(t)
	c.ID = "e1" + spec.ID[2:]
	dir := t.TempDir()
	// The ticks go on from the source's (the copy's console log is its
	// own once its QEMU runs).
	if b, err := os.ReadFile(spec.ConsoleLog); err == nil {
		os.WriteFile(c.ConsoleLog, b, 0o600)
	}
	wait, err := d.StartCopy(ctx, c, dir)
	if err != nil {
		t.Fatal(err)
	}
	// The save runs while the copy's QEMU starts.
	if err := d.SaveCopy(ctx, h, dir); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	r, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), r)
	if err := d.FinishCopy(ctx, r, dir); err != nil {
		b, _ := os.ReadFile(filepath.Join(c.RunDir, qemuLog))
		t.Fatalf("%v\nqemu.log:\n%s", err, b)
	}
	if _, err := os.Lstat(filepath.Join(dir, copyRAMFile)); err == nil {
		t.Error("FinishCopy left the link to the copy's ram file")
	}
	if err := guestRunning(ctx, c, r); err != nil {
		t.Fatalf("early copy: %v", err)
	}
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatalf("source after the fork: %v", err)
	}
	m, err := readMachine(r.RunDir)
	if err != nil || !m.MemOwn || m.MemFile != d.memPath(c.ID) {
		t.Fatalf("copy's machine %+v, %v", m, err)
	}
	// The copy forks in turn, the usual way.
	dir2 := t.TempDir()
	if err := d.SaveCopy(ctx, r, dir2); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctx, r); err != nil {
		t.Fatal(err)
	}
	c2 := newSpec(t)
	c2.ID = "e2" + spec.ID[2:]
	if b, err := os.ReadFile(c.ConsoleLog); err == nil {
		os.WriteFile(c2.ConsoleLog, b, 0o600)
	}
	r2, err := d.RestoreCopy(ctx, c2, dir2)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), r2)
	if err := guestRunning(ctx, c2, r2); err != nil {
		t.Fatalf("copy of the early copy: %v", err)
	}

	// A copy started and never finished: Kill removes it whole.
	c3 := newSpec(t)
	c3.ID = "e3" + spec.ID[2:]
	dir3 := t.TempDir()
	wait, err = d.StartCopy(ctx, c3, dir3)
	if err != nil {
		t.Fatal(err)
	}
	r3, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	// No state yet: FinishCopy refuses and leaves the copy as it is.
	if err := d.FinishCopy(ctx, r3, dir3); !errors.Is(err, errs.NotFound) {
		t.Fatalf("FinishCopy without a state = %v, want NotFound", err)
	}
	// A snapshot is not a fork's state.
	if err := d.SaveState(ctx, r2, dir3); err != nil {
		t.Fatal(err)
	}
	d.Resume(ctx, r2)
	if err := d.FinishCopy(ctx, r3, dir3); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("FinishCopy of a snapshot = %v, want FailedPrecondition", err)
	}
	if err := d.Kill(ctx, r3); err != nil {
		t.Fatal(err)
	}
	if got := memFiles(t, d, c3.ID); len(got) > 0 {
		t.Fatalf("Kill of an unfinished copy left %v", got)
	}
	for _, x := range []*hypervisor.Handle{r2, r, h} {
		if err := d.Kill(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	if got := memFiles(t, d, spec.ID, c.ID, c2.ID); len(got) > 0 {
		t.Fatalf("ram files left: %v", got)
	}
}
