package service

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// TestMoveLiveOntoFullControlPlaneHost: a live move onto the control
// plane's own host passes the capacity check a node's does: with the host's
// memory taken, it fails with a clear error (ResourceExhausted) and
// nothing changes (the VM runs on node-b, nothing of it on the control
// plane's host, no reservation, no move record). With the memory free
// again the move goes through, and its reservation became the row's.
func TestMoveLiveOntoFullControlPlaneHost(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	liveNode(t, th.cp)
	liveNode(t, th.node)
	shareAgentHostKey(t, th.cp, th.node)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "bigmover", Image: "minimal", Host: "node-b", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	total, err := svc.cfg.HostMemory()
	if err != nil {
		t.Fatal(err)
	}
	hog := store.VM{ID: vm.NewID(), Name: "hog", OwnerID: th.admin.UserID, Image: "minimal@1", CPUs: 1, MemoryMiB: int(2 * total >> 20), DiskGiB: 1,
		IP: "10.210.250.250", MAC: "02:00:00:00:fa:fa", CID: 4000, State: vm.Running, Port: 80, CreatedAt: time.Now()}
	if err := store.InsertVM(ctx, svc.DB, hog); err != nil {
		t.Fatal(err)
	}
	_, err = svc.Move(ctx, th.alice, "bigmover", MoveRequest{Host: "cp", Mode: store.MoveLive}, nil)
	if errs.ClassOf(err) != errs.ResourceExhausted {
		t.Fatalf("move --live onto a full control plane host: %v, want ResourceExhausted", err)
	}
	t.Logf("full host: %v", err)
	g, err := svc.Get(ctx, th.alice, "bigmover")
	if err != nil || g.Host != "node-b" || g.Status != "running" {
		t.Fatalf("after the refused move: %+v, %v; want running on node-b", g, err)
	}
	if _, err := os.Stat(filepath.Join(th.cp.dir, "state", "vms", v.ID)); !os.IsNotExist(err) {
		t.Errorf("the control plane's host kept files of the refused move: %v", err)
	}
	if r, _ := store.ListReservations(ctx, svc.DB); len(r) != 0 {
		t.Errorf("reservations left: %+v", r)
	}
	if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
		t.Errorf("move records left: %+v", moves)
	}
	if n := th.cp.drv.Running() + th.node.drv.Running(); n != 1 {
		t.Errorf("%d hypervisors running, want node-b's 1", n)
	}

	if err := store.DeleteVM(ctx, svc.DB, hog.ID); err != nil {
		t.Fatal(err)
	}
	got, err := svc.Move(ctx, th.alice, "bigmover", MoveRequest{Host: "cp", Mode: store.MoveLive}, nil)
	if err != nil || got.Host != "cp" {
		t.Fatalf("move --live onto the freed host: %+v, %v", got, err)
	}
	if r, _ := store.ListReservations(ctx, svc.DB); len(r) != 0 {
		t.Errorf("reservations after the move: %+v", r)
	}
	row, _ := store.GetVMByID(ctx, svc.DB, v.ID)
	if row.IP != got.IP || row.HostID != "" {
		t.Errorf("the row after the move: %+v, want this host's at %s", row, got.IP)
	}
}
