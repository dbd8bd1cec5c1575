package engine

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// TestStageIncomingAdmitsAndReserves: an incoming live copy staged on the
// control plane's host passes the host's capacity check (here an
// admission of 1 GiB of host memory counted from the store, as the
// service's is) and reserves its address, CID and memory in the store
// while staged. A full host refuses it with a clear error and nothing
// made; while staged, no other allocation gets its address and its memory
// counts; a staging that fails part-way, an abort, a Destroy and the
// adoption each release the reservation (the adoption into the row).
func TestStageIncomingAdmitsAndReserves(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	fx.eng.Driver = &liveFake{Driver: fx.drv, dir: fx.dir}
	db := fx.eng.DB
	const hostMiB = 1024
	fx.eng.SetAdmit(func(ctx context.Context, q store.Q, a Admission) error {
		used, err := store.AllocatedMemoryMiB(ctx, q, a.ID)
		if err != nil {
			return err
		}
		if a.Kind == AdmitStart && used+int64(a.Want.MemoryMiB) > hostMiB {
			return errs.New(errs.ResourceExhausted, "not enough host memory: %d MiB used, %d MiB wanted, %d MiB allowed", used, a.Want.MemoryMiB, hostMiB)
		}
		return nil
	})
	if err := store.InsertUser(ctx, db, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	hostID := vm.NewID()
	if err := store.InsertHost(ctx, db, store.Host{ID: hostID, Name: "node-b", State: store.HostReady, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	row := store.VM{ID: vm.NewID(), Name: "away", OwnerID: "u1", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		State: vm.Running, Port: 80, HostID: hostID, NodeIP: "10.9.0.5", CreatedAt: time.Now()}
	if err := store.RemotePlaceholders(ctx, db, &row); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertVM(ctx, db, row); err != nil {
		t.Fatal(err)
	}
	big := store.VM{ID: vm.NewID(), Name: "big", OwnerID: "u1", Image: "minimal@1", CPUs: 1, MemoryMiB: 900, DiskGiB: 1,
		State: vm.Running, Port: 80, IP: "10.210.0.50", MAC: "02:00:00:00:00:50", CID: 50, CreatedAt: time.Now()}
	if err := store.InsertVM(ctx, db, big); err != nil {
		t.Fatal(err)
	}
	src, _ := json2(t, "agent-key")
	spec := IncomingSpec{ID: row.ID, Name: "away", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Source: src}
	reserved := func() []store.Reservation {
		t.Helper()
		l, err := store.ListReservations(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	nothing := func(what string) {
		t.Helper()
		if l := reserved(); len(l) != 0 {
			t.Errorf("%s: reservations left %+v", what, l)
		}
		if _, err := os.Stat(fx.eng.vmDir(row.ID)); !os.IsNotExist(err) {
			t.Errorf("%s: the vm dir is left (%v)", what, err)
		}
		if fx.ports.len() != 0 || fx.drv.Running() != 0 {
			t.Errorf("%s: ports %d, hypervisors %d left", what, fx.ports.len(), fx.drv.Running())
		}
		if v, err := store.GetVMByID(ctx, db, row.ID); err != nil || v.HostID != hostID || v.IP != row.IP {
			t.Errorf("%s: the row is %+v, %v; want node-b's, untouched", what, v, err)
		}
	}

	// A full host: refused before anything is made.
	_, err := fx.eng.StageIncoming(ctx, spec, nil)
	if errs.ClassOf(err) != errs.ResourceExhausted {
		t.Fatalf("stage onto a full host: %v, want ResourceExhausted", err)
	}
	t.Logf("full host: %v", err)
	nothing("full host")
	if err := store.DeleteVM(ctx, db, big.ID); err != nil {
		t.Fatal(err)
	}

	// A staging that fails part-way (the hypervisor refuses the source).
	bad := spec
	bad.Source = []byte(`{"agent_key":"agent-key","machine":"eyJpZCI6InkifQ=="}`)
	if _, err := fx.eng.StageIncoming(ctx, bad, nil); err == nil {
		t.Fatal("a staging whose hypervisor fails succeeded")
	}
	nothing("failed staging")

	// Staged: reserved.
	inst, err := fx.eng.StageIncoming(ctx, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l := reserved(); len(l) != 1 || l[0].VMID != row.ID || l[0].IP != inst.IP || l[0].MemoryMiB != 256 {
		t.Fatalf("reservations %+v, want the staged copy's %s", l, inst.IP)
	}
	if err := db.Tx(ctx, func(q store.Q) error {
		ip, _, cid, err := fx.eng.allocate(ctx, q, vm.NewID())
		if err == nil && (ip.String() == inst.IP || cid == reserved()[0].CID) {
			t.Errorf("another vm got the staged address %s (cid %d)", ip, cid)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n, _ := store.AllocatedMemoryMiB(ctx, db, ""); n != 256 {
		t.Errorf("allocated %d MiB while staged, want 256", n)
	}
	if err := fx.eng.AbortIncoming(ctx, row.ID); err != nil {
		t.Fatal(err)
	}
	nothing("abort")

	if _, err := fx.eng.StageIncoming(ctx, spec, nil); err != nil {
		t.Fatal(err)
	}
	if err := fx.eng.Destroy(ctx, row.ID); err != nil {
		t.Fatal(err)
	}
	if l := reserved(); len(l) != 0 {
		t.Errorf("destroy of a staged copy left %+v", l)
	}

	// The switch: the reservation becomes the row's address.
	inst, err = fx.eng.StageIncoming(ctx, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Tx(ctx, func(q store.Q) error { return fx.eng.AdoptIncoming(ctx, q, row.ID) }); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	if l := reserved(); len(l) != 0 {
		t.Errorf("reservations after the adoption: %+v", l)
	}
	if v, err := store.GetVMByID(ctx, db, row.ID); err != nil || v.IP != inst.IP || v.HostID != "" {
		t.Errorf("adopted row %+v, %v; want this host's with %s", v, err, inst.IP)
	}
}
