package engine

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

// repairFixture is an engine whose fake driver gives every VM a real
// helper process (the agent relay's stand-in), and n running VMs recorded
// in the store.
func repairFixture(t *testing.T, n int) (*Local, *fake.Driver, []string) {
	t.Helper()
	fx := newFixture(t)
	ctx := context.Background()
	drv := fake.New(fake.Config{Helpers: []string{"agent-relay"}})
	t.Cleanup(drv.Close)
	deps := fx.eng.Deps
	deps.Driver = drv
	l, err := NewLocal(fx.eng.Config(), deps)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.InsertUser(ctx, l.DB, store.User{ID: "u1", Name: "user-u1", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range n {
		id := vm.NewID()
		if err := os.MkdirAll(l.runDir(id), 0o700); err != nil {
			t.Fatal(err)
		}
		h, err := drv.Start(ctx, hypervisor.Spec{ID: id, CPUs: 1, MemoryMiB: 256, RunDir: l.runDir(id)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { drv.Kill(context.Background(), h) })
		row := store.VM{ID: id, Name: "vm" + string(rune('a'+i)), OwnerID: "u1", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
			IP: "10.99.0." + string(rune('2'+i)), MAC: "52:54:00:00:00:0" + string(rune('2'+i)), CID: uint32(900 + i),
			State: vm.Running, Handle: EncodeHandle(h), CreatedAt: time.Now(), StartedAt: time.Now()}
		if err := store.InsertVM(ctx, l.DB, row); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return l, drv, ids
}

func repairs(d *fake.Driver) int {
	n := 0
	for _, c := range d.Calls() {
		if c.Op == fake.OpRepair {
			n++
		}
	}
	return n
}

// TestReconcileRepairsOnlyDeadHelpers: Reconcile leaves VMs whose helpers
// all live alone (no lock, no read, no Repair: issue 16, an idle daemon's
// cost per VM), and a VM whose helper died gets Repair and its new handle
// recorded, after which it is left alone again.
func TestReconcileRepairsOnlyDeadHelpers(t *testing.T) {
	l, drv, ids := repairFixture(t, 3)
	ctx := context.Background()
	for range 3 {
		if err := l.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := repairs(drv); n != 0 {
		t.Fatalf("%d Repair calls over 3 passes with 3 healthy vms, want 0", n)
	}

	v, err := store.GetLocalVMByID(ctx, l.DB, ids[1])
	if err != nil {
		t.Fatal(err)
	}
	h, _ := DecodeHandle(v.Handle)
	dead := h.Helpers[0]
	syscall.Kill(dead.PID, syscall.SIGKILL)
	if err := procfs.WaitGone(ctx, dead.PID, dead.StartTime, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := l.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if n := repairs(drv); n != 1 {
		t.Fatalf("%d Repair calls after one helper died, want 1", n)
	}
	v, _ = store.GetLocalVMByID(ctx, l.DB, ids[1])
	nh, _ := DecodeHandle(v.Handle)
	if v.State != vm.Running || len(nh.Helpers) != 1 || nh.Helpers[0].PID == dead.PID || !procfs.Alive(nh.Helpers[0].PID, nh.Helpers[0].StartTime) {
		t.Fatalf("after repair: state %s, helpers %+v (the dead one was %+v)", v.State, nh.Helpers, dead)
	}
	for range 2 {
		l.Reconcile(ctx)
	}
	if n := repairs(drv); n != 1 {
		t.Fatalf("%d Repair calls after the repair, want still 1", n)
	}
}
