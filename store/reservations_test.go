package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// TestAddressReservations: a reservation's IP and CID count as used and
// its memory as allocated (except for its own instance) until released;
// a second reservation of the same address, CID or instance is refused.
func TestAddressReservations(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	if err := InsertUser(ctx, db, User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := InsertVM(ctx, db, VM{ID: "run1", Name: "web", OwnerID: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.0.0.2", MAC: "m1", CID: 3, State: "running", Port: 80, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r := Reservation{VMID: "inc1", IP: "10.0.0.3", CID: 4, MemoryMiB: 512, CreatedAt: time.Now()}
	if err := ReserveAddress(ctx, db, r); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Reservation{
		{VMID: "inc2", IP: "10.0.0.3", CID: 9},
		{VMID: "inc2", IP: "10.0.0.9", CID: 4},
		{VMID: "inc1", IP: "10.0.0.9", CID: 9},
	} {
		if err := ReserveAddress(ctx, db, bad); !errors.Is(err, errs.AlreadyExists) {
			t.Errorf("reserve %+v: %v, want AlreadyExists", bad, err)
		}
	}
	ips, _, cids, err := UsedAddresses(ctx, db)
	if err != nil || len(ips) != 2 || ips[1] != "10.0.0.3" || cids[1] != 4 {
		t.Fatalf("used: %v %v (%v), want the vm's and the reservation's", ips, cids, err)
	}
	if n, _ := AllocatedMemoryMiB(ctx, db, ""); n != 256+512 {
		t.Errorf("allocated %d MiB, want 768 (the reservation counts)", n)
	}
	if n, _ := AllocatedMemoryMiB(ctx, db, "inc1"); n != 256 {
		t.Errorf("allocated except inc1: %d MiB, want 256", n)
	}
	if l, err := ListReservations(ctx, db); err != nil || len(l) != 1 || l[0].VMID != "inc1" || l[0].MemoryMiB != 512 {
		t.Errorf("list %+v, %v", l, err)
	}
	if err := ReleaseAddress(ctx, db, "inc1"); err != nil {
		t.Fatal(err)
	}
	ips, _, _, _ = UsedAddresses(ctx, db)
	if n, _ := AllocatedMemoryMiB(ctx, db, ""); len(ips) != 1 || n != 256 {
		t.Errorf("after release: used %v, allocated %d MiB", ips, n)
	}
	if err := ReleaseAddress(ctx, db, "inc1"); err != nil {
		t.Errorf("release twice: %v", err)
	}
}
