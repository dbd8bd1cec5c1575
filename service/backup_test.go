package service

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

func TestBackupDisksAndMissingDisk(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	// The fake driver has no guest agent: a stopped VM's row and disk.
	v := store.VM{ID: "0123456789ab", Name: "web", OwnerID: fx.user.UserID, Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.77.0.9", MAC: "02:00:0a:4d:00:09", CID: 9, State: store.StateStopped, Port: 80, CreatedAt: time.Now()}
	if err := store.InsertVM(ctx, fx.svc.DB, v); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(fx.eng().VMDir(v.ID), 0o700)
	if err := os.WriteFile(fx.eng().DiskPath(v.ID), []byte("qcow2 bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if _, err := fx.svc.BackupDisks(ctx, fx.user, []string{v.ID}, out, nil); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("a user backs up disks: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "vms")); !os.IsNotExist(err) {
		t.Fatal("a refused backup wrote files")
	}
	admin, _ := fx.svc.EnsureUser(ctx, "root", true)
	var steps []string
	got, err := fx.svc.BackupDisks(ctx, admin, []string{v.ID, "gone-vm-id"}, out, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "web" || len(got[0].Files) != 1 {
		t.Fatalf("backed up %+v", got)
	}
	want, _ := os.ReadFile(fx.eng().DiskPath(v.ID))
	b, err := os.ReadFile(filepath.Join(out, got[0].Files[0]))
	if err != nil || string(b) != string(want) {
		t.Fatalf("copy = %q, %v; want %q", b, err, want)
	}
	if len(steps) == 0 || steps[0] != "disk web" {
		t.Fatalf("progress = %v", steps)
	}

	// A VM restored without its disk says so and is never booted.
	if err := store.SetVMNote(ctx, fx.svc.DB, v.ID, store.StateError, store.NoteDiskMissing); err != nil {
		t.Fatal(err)
	}
	os.Remove(fx.eng().DiskPath(v.ID))
	shown, err := fx.svc.Get(ctx, fx.user, "web")
	if err != nil || shown.Note != store.NoteDiskMissing || shown.Status != store.StateError {
		t.Fatalf("get = %+v, %v", shown, err)
	}
	_, err = fx.svc.Start(ctx, fx.user, "web", nil)
	if !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "disk missing: restored without disks") {
		t.Fatalf("start without disk = %v", err)
	}
	if n := fx.drv.Running(); n != 0 {
		t.Fatalf("%d hypervisors started for a vm without disk", n)
	}
}
