package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// TestPlacementClaims: a claim counts in its host's usage (and, on the
// local host, as allocated memory) until the VM's row is on that host or
// the claim is released; a second claim of one VM is refused.
func TestPlacementClaims(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	now := time.Now()
	if err := InsertUser(ctx, db, User{ID: "u1", Name: "alice", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []Host{{ID: "hl", Name: "cp", Local: true, State: HostReady, CreatedAt: now}, {ID: "hn", Name: "node", State: HostReady, CreatedAt: now}} {
		if err := InsertHost(ctx, db, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := InsertVM(ctx, db, VM{ID: "run1", Name: "web", OwnerID: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.0.0.2", MAC: "m1", CID: 3, State: "running", Port: 80, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Claim{
		{VMID: "new1", HostID: "hl", Kind: "create", CPUs: 2, MemoryMiB: 512, DiskGiB: 3, PID: 1, CreatedAt: now},
		{VMID: "new2", HostID: "hn", Kind: "create", CPUs: 4, MemoryMiB: 1024, DiskGiB: 5, PID: 1, CreatedAt: now},
		// run1 is on the local host; its claim on the node is a move's.
		{VMID: "run1", HostID: "hn", Kind: "move", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, PID: 1, CreatedAt: now},
	} {
		if err := InsertClaim(ctx, db, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := InsertClaim(ctx, db, Claim{VMID: "new1", HostID: "hn", Kind: "create", CPUs: 1, MemoryMiB: 1}); !errors.Is(err, errs.AlreadyExists) {
		t.Errorf("second claim of new1: %v, want AlreadyExists", err)
	}
	use := func(id string, local bool) HostUse {
		t.Helper()
		u, err := HostUsage(ctx, db, id, local)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	if u := use("hl", true); u.VMs != 1 || u.Claims != 1 || u.CPUs != 3 || u.RunningMemoryMiB != 768 || u.DiskGiB != 4 {
		t.Errorf("local host: %+v, want run1 and new1's claim", u)
	}
	if u := use("hn", false); u.VMs != 0 || u.Claims != 2 || u.CPUs != 5 || u.RunningMemoryMiB != 1280 {
		t.Errorf("node: %+v, want new2's and run1's claims", u)
	}
	if n, _ := AllocatedMemoryMiB(ctx, db, ""); n != 256+512 {
		t.Errorf("allocated %d MiB, want 768 (run1 and the local claim)", n)
	}
	if n, _ := AllocatedMemoryMiB(ctx, db, "new1"); n != 256 {
		t.Errorf("allocated except new1: %d MiB, want 256", n)
	}
	// new1's row is written (the engine's create): the row counts, the
	// claim no longer.
	if err := InsertVM(ctx, db, VM{ID: "new1", Name: "n1", OwnerID: "u1", Image: "minimal", CPUs: 2, MemoryMiB: 512, DiskGiB: 3,
		IP: "10.0.0.3", MAC: "m2", CID: 4, State: "creating", Port: 80, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if u := use("hl", true); u.VMs != 2 || u.Claims != 0 || u.CPUs != 3 || u.RunningMemoryMiB != 768 {
		t.Errorf("local host after new1's row: %+v", u)
	}
	if n, _ := AllocatedMemoryMiB(ctx, db, ""); n != 768 {
		t.Errorf("allocated after new1's row: %d MiB, want 768", n)
	}
	// run1 switched to the node (the move's switch).
	if err := SetVMHost(ctx, db, "run1", "hn"); err != nil {
		t.Fatal(err)
	}
	if u := use("hn", false); u.VMs != 1 || u.Claims != 1 || u.CPUs != 5 {
		t.Errorf("node after the switch: %+v, want run1's row and new2's claim", u)
	}
	for _, id := range []string{"new1", "new2", "run1", "new2"} {
		if err := ReleaseClaim(ctx, db, id); err != nil {
			t.Fatal(err)
		}
	}
	if l, err := ListClaims(ctx, db); err != nil || len(l) != 0 {
		t.Errorf("claims after release: %+v, %v", l, err)
	}
	if u := use("hn", false); u.Claims != 0 || u.CPUs != 1 {
		t.Errorf("node after release: %+v", u)
	}
}

// A live move onto the control plane's host holds both a placement claim
// (the service's) and an address reservation (the engine's staging) for
// the same VM: its memory counts once.
func TestClaimAndReservationCountOnce(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	now := time.Now()
	if err := InsertHost(ctx, db, Host{ID: "hl", Name: "cp", Local: true, State: HostReady, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := InsertClaim(ctx, db, Claim{VMID: "mv1", HostID: "hl", Kind: "move", CPUs: 1, MemoryMiB: 512, DiskGiB: 1, PID: 1, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := ReserveAddress(ctx, db, Reservation{VMID: "mv1", IP: "10.0.0.3", CID: 4, MemoryMiB: 512, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if n, err := AllocatedMemoryMiB(ctx, db, ""); err != nil || n != 512 {
		t.Errorf("allocated %d MiB (%v), want 512: the staged move's memory once", n, err)
	}
	if n, err := AllocatedMemoryMiB(ctx, db, "mv1"); err != nil || n != 0 {
		t.Errorf("allocated except mv1: %d MiB (%v), want 0", n, err)
	}
}

// TestDeleteMoveDropsItsClaim: a move's claim goes with its record; the
// claim of another kind (a create's) on the same VM ID stays.
func TestDeleteMoveDropsItsClaim(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	now := time.Now()
	for _, c := range []Claim{
		{VMID: "mv1", HostID: "hn", Kind: ClaimMove, CPUs: 1, MemoryMiB: 256, PID: 1, CreatedAt: now},
		{VMID: "new1", HostID: "hn", Kind: ClaimCreate, CPUs: 1, MemoryMiB: 256, PID: 1, CreatedAt: now},
	} {
		if err := InsertClaim(ctx, db, c); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"mv1", "new1"} {
		if err := DeleteMove(ctx, db, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, _ := GetClaim(ctx, db, "mv1"); ok {
		t.Error("the move's claim outlived its record")
	}
	if _, ok, _ := GetClaim(ctx, db, "new1"); !ok {
		t.Error("a create's claim went with DeleteMove")
	}
}
