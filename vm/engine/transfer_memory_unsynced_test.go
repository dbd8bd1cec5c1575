package engine_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/testenv"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"github.com/minionsdev/minions/vm/hypervisor/fake/fakeagent"
)

// unsyncedDriver is the fake agent driver with an unflushed save.
type unsyncedDriver struct {
	*fakeagent.AgentDriver
	unsynced atomic.Int32
}

func (d *unsyncedDriver) SaveStateUnsynced(ctx context.Context, h *hypervisor.Handle, dir string) error {
	d.unsynced.Add(1)
	return d.AgentDriver.SaveState(ctx, h, dir)
}

// TestSuspendUnflushed: a suspend for a move saves the memory without
// the flush where the driver can, recording this boot beside it (not in
// the bundle); on the same boot the saved memory ships and resumes as
// before. After a reboot (another boot ID) it may be torn: it is dropped,
// the instance is stopped and not suspended (Resume is
// FailedPrecondition, the note cleared), and Start boots it cold.
func TestSuspendUnflushed(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipUnlessCI(t, "needs root (the guest agent runs commands as users)")
	}
	defer engine.SetBootID("boot-1")()
	dir, err := os.MkdirTemp("/tmp", "mvu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	key := newSigner(t)
	guest := moveGuest(t, dir, key.PublicKey(), &guestNet{})
	var ud *unsyncedDriver
	src := newMoveHost(t, dir, "src", key, guest, "10.77.1.0/24", func(d *fakeagent.AgentDriver) hypervisor.Driver {
		ud = &unsyncedDriver{AgentDriver: d}
		return ud
	})
	id := vm.NewID()
	if _, err := src.eng.Create(ctx, engine.CreateSpec{ID: id, Name: "mover", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1}, nil); err != nil {
		t.Fatal(err)
	}
	bootFile := filepath.Join(src.eng.VMDir(id), "move-state.boot")
	if err := src.eng.Suspend(ctx, id, ""); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	if b, err := os.ReadFile(bootFile); ud.unsynced.Load() != 1 || err != nil || strings.TrimSpace(string(b)) != "boot-1" {
		t.Fatalf("suspend: %d unflushed saves, boot record %q (%v); want 1, boot-1", ud.unsynced.Load(), b, err)
	}
	var bundle bytes.Buffer
	if err := src.eng.ExportBundle(ctx, id, &bundle); err != nil {
		t.Fatal(err)
	}
	h, err := engine.ReadBundleHeader(bufio.NewReader(&bundle))
	if err != nil || !h.Memory {
		t.Fatalf("bundle of the suspended vm: %+v, %v; want its memory", h, err)
	}
	for _, f := range h.Files {
		if strings.Contains(f.Path, "boot") {
			t.Errorf("the boot record is shipped: %q", f.Path)
		}
	}
	if got, err := src.eng.Resume(ctx, id); err != nil || got.State != vm.Running {
		t.Fatalf("resume on the same boot: %+v, %v", got, err)
	}
	if _, err := os.Stat(bootFile); !os.IsNotExist(err) {
		t.Errorf("boot record kept after the resume: %v", err)
	}

	// Suspended again, then the host "reboots" before the save reached
	// stable storage.
	if err := src.eng.Suspend(ctx, id, ""); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	engine.SetBootID("boot-2")
	restores, starts := countOps(src.drv, fake.OpRestore), countOps(src.drv, fake.OpStart)
	if _, err := src.eng.Resume(ctx, id); errs.ClassOf(err) != errs.FailedPrecondition {
		t.Fatalf("resume after a reboot: %v, want FailedPrecondition (nothing to resume from)", err)
	}
	for _, p := range []string{bootFile, filepath.Join(src.eng.VMDir(id), "move-state")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s kept after a reboot: %v", filepath.Base(p), err)
		}
	}
	if row, _ := store.GetVMByID(ctx, src.db, id); row.Note != "" || row.State != vm.Stopped {
		t.Errorf("after a reboot: %s, note %q; want stopped, no note", row.State, row.Note)
	}
	if got, err := src.eng.Start(ctx, id, nil); err != nil || got.State != vm.Running {
		t.Fatalf("start after a reboot: %+v, %v", got, err)
	}
	if countOps(src.drv, fake.OpRestore) != restores || countOps(src.drv, fake.OpStart) != starts+1 {
		t.Errorf("start after a reboot: %d restores, %d boots; want a cold boot", countOps(src.drv, fake.OpRestore)-restores, countOps(src.drv, fake.OpStart)-starts)
	}
}

func countOps(d *fakeagent.AgentDriver, op fake.Op) int {
	n := 0
	for _, c := range d.Calls() {
		if c.Op == op && c.Err == nil {
			n++
		}
	}
	return n
}
