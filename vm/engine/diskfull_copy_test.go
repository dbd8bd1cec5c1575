package engine

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// TestCopyRefusedWhenItsDiskCannotFit: on a state filesystem (a 240 MiB
// tmpfs of the test's own) with 140 MiB free, a copy of a VM whose disk
// takes 100 MiB is refused with errs.ResourceExhausted before anything is
// made: no step ran, no row, no operation, no directory. (Before, the
// 64 MiB reserve passed, the copy filled the filesystem, failed part-way
// and was undone.)
func TestCopyRefusedWhenItsDiskCannotFit(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts a small tmpfs")
	}
	fx := newFixture(t)
	ctx := context.Background()
	state := filepath.Join(fx.dir, "small")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", state, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=240m,mode=0700"); err != nil {
		t.Skipf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(state, unix.MNT_DETACH) })
	cfg := fx.eng.Config()
	cfg.StateDir, cfg.RunDir = state, filepath.Join(fx.dir, "smallrun")
	l, err := NewLocal(cfg, fx.eng.Deps)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.InsertUser(ctx, l.DB, store.User{ID: "u1", Name: "user-u1", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	src := store.VM{ID: vm.NewID(), Name: "big", OwnerID: "u1", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.99.0.9", MAC: "52:54:00:00:00:09", CID: 909, State: vm.Stopped, CreatedAt: time.Now()}
	if err := store.InsertVM(ctx, l.DB, src); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(l.vmDir(src.ID), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.diskPath(src.ID), bytes.Repeat([]byte{1}, 100<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	var steps []string
	_, err = l.Create(ctx, CreateSpec{ID: vm.NewID(), Name: "cpy", Owner: "u1", CopyFrom: &CopySource{ID: src.ID}},
		func(s string) { steps = append(steps, s) })
	if errs.ClassOf(err) != errs.ResourceExhausted || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("copy of a disk that cannot fit: %v, want ResourceExhausted (no space left)", err)
	}
	t.Logf("refused: %v", err)
	if len(steps) != 0 {
		t.Errorf("the refused copy ran steps %q", steps)
	}
	if _, err := store.GetVMByName(ctx, l.DB, "cpy"); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("refused copy left a row: %v", err)
	}
	var ops int
	if err := l.DB.QueryRowContext(ctx, `SELECT COUNT(*) FROM operations`).Scan(&ops); err != nil || ops != 0 {
		t.Errorf("operations recorded: %d, %v", ops, err)
	}
	if entries, _ := os.ReadDir(filepath.Join(state, "vms")); len(entries) != 1 {
		t.Errorf("vm dirs: %v, want the source's only", entries)
	}
}
