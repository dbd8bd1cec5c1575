package engine

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

// TestReconcileReadsOnlyAfterACommit: Reconcile queries the store only
// when something was committed since its last read (the change stamp),
// by this process or another; what changes without a commit (a
// hypervisor or an operation's process dying) is still seen on the next
// pass, from the rows it kept.
func TestReconcileReadsOnlyAfterACommit(t *testing.T) {
	l, drv, ids := repairFixture(t, 2)
	ctx := context.Background()
	other, err := store.Open(ctx, l.DB.Path) // as another process
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	pass := func() {
		t.Helper()
		if err := l.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	reads := func(want int64, when string) {
		t.Helper()
		if n := l.reconcileRows.reads.Load(); n != want {
			t.Fatalf("%s: %d reads of the store, want %d", when, n, want)
		}
	}
	for range 3 {
		pass()
	}
	reads(1, "3 passes without a commit")

	// A hypervisor dies: no commit, and the next pass marks it stopped.
	v0, _ := store.GetLocalVMByID(ctx, l.DB, ids[0])
	h0, _ := DecodeHandle(v0.Handle)
	drv.Crash(h0)
	pass()
	if v, _ := store.GetLocalVMByID(ctx, l.DB, ids[0]); v.State != vm.Stopped {
		t.Fatalf("a crashed vm is %s after a pass, want stopped", v.State)
	}
	pass() // marking it stopped was a commit: read again
	pass()
	reads(2, "after the pass that marked a crashed vm stopped")

	// Another process commits: an operation of a live process on the
	// other VM, and a VM recorded running whose hypervisor is gone.
	proc := exec.Command("sleep", "3600")
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { proc.Process.Kill(); proc.Wait() }()
	start, _ := procfs.StartTime(proc.Process.Pid)
	op := store.Operation{ID: "op-rows", VMID: ids[1], Kind: "stop", Step: "shutdown", State: "running",
		PID: proc.Process.Pid, PIDStart: start, CreatedAt: time.Now(), UpdatedAt: time.Now()}
	if err := store.InsertOperation(ctx, other, op); err != nil {
		t.Fatal(err)
	}
	gone := store.VM{ID: vm.NewID(), Name: "gone", OwnerID: "u1", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.99.0.9", MAC: "52:54:00:00:00:09", CID: 909, State: vm.Running, CreatedAt: time.Now(),
		Handle: EncodeHandle(&hypervisor.Handle{Driver: "fake", PID: 1 << 23, StartTime: 1})}
	if err := store.InsertVM(ctx, other, gone); err != nil {
		t.Fatal(err)
	}
	pass()
	if v, _ := store.GetLocalVMByID(ctx, l.DB, gone.ID); v.State != vm.Stopped {
		t.Fatalf("a vm another process recorded running, with no hypervisor, is %s after a pass", v.State)
	}
	pass()
	n := l.reconcileRows.reads.Load()
	pass()
	reads(n, "a pass after the other process's commits were reconciled")

	// The operation's process dies: no commit, and the next pass
	// recovers the operation.
	proc.Process.Kill()
	proc.Wait()
	pass()
	ops, err := store.RunningOperations(ctx, l.DB)
	if err != nil || len(ops) != 0 {
		t.Fatalf("running operations after their process died and a pass: %+v, %v", ops, err)
	}
}
