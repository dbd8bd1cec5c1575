package store

import (
	"context"
	"testing"
	"time"
)

// A VM on another host has placeholders in the unique columns, its node's
// address beside them, and is invisible to the local engine's listing and
// memory sum; two hosts' VMs with the same node address never collide.
func TestRemoteVMRowsStayOutOfTheLocalEngine(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	now := time.Now()
	if err := InsertUser(ctx, db, User{ID: "u1", Name: "alice", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []Host{{ID: "hl", Name: "cp", Local: true, State: HostReady, CreatedAt: now},
		{ID: "ha", Name: "a", State: HostReady, CreatedAt: now}, {ID: "hb", Name: "b", State: HostReady, CreatedAt: now}} {
		if err := InsertHost(ctx, db, h); err != nil {
			t.Fatal(err)
		}
	}
	local := VM{ID: "v0", Name: "local", OwnerID: "u1", Image: "i", CPUs: 1, MemoryMiB: 100, DiskGiB: 1, IP: "10.0.0.2", MAC: "m0", CID: 3, State: "running", CreatedAt: now}
	if err := InsertVM(ctx, db, local); err != nil {
		t.Fatal(err)
	}
	for i, h := range []string{"ha", "hb"} {
		v := VM{ID: "v" + h, Name: "on-" + h, OwnerID: "u1", Image: "i", CPUs: 1, MemoryMiB: 1000, DiskGiB: 1, State: "running", HostID: h,
			NodeIP: "10.0.0.2", NodeMAC: "02:00:00:00:00:01", CreatedAt: now}
		if err := db.Tx(ctx, func(q Q) error {
			if err := RemotePlaceholders(ctx, q, &v); err != nil {
				return err
			}
			return InsertVM(ctx, q, v)
		}); err != nil {
			t.Fatalf("insert vm %d on %s: %v", i, h, err)
		}
		got, err := GetVMByID(ctx, db, v.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.HostID != h || got.NodeIP != "10.0.0.2" || got.IP != "@"+v.ID || got.CID != uint32(PlaceholderCIDBase+i) {
			t.Errorf("row on %s = %+v", h, got)
		}
	}
	mine, err := ListLocalVMs(ctx, db)
	if err != nil || len(mine) != 1 || mine[0].ID != "v0" {
		t.Errorf("local vms = %+v, %v; want v0 only", mine, err)
	}
	if n, err := AllocatedMemoryMiB(ctx, db, ""); err != nil || n != 100 {
		t.Errorf("allocated memory = %d, %v; want 100 (the local vm's)", n, err)
	}
	if on, err := ListHostVMs(ctx, db, "ha"); err != nil || len(on) != 1 || on[0].ID != "vha" {
		t.Errorf("vms on ha = %+v, %v", on, err)
	}
	// A local VM marked with the local host's ID is still local.
	if err := SetVMHost(ctx, db, "v0", "hl"); err != nil {
		t.Fatal(err)
	}
	if mine, _ := ListLocalVMs(ctx, db); len(mine) != 1 {
		t.Errorf("local vms after host_id = local: %+v", mine)
	}

	// Tombstones: idempotent, per host, gone with their host.
	ts := Tombstone{VMID: "gone1", HostID: "ha", Name: "old", CreatedAt: now}
	for range 2 {
		if err := InsertTombstone(ctx, db, ts); err != nil {
			t.Fatal(err)
		}
	}
	if l, err := ListTombstones(ctx, db, "ha"); err != nil || len(l) != 1 || l[0].Name != "old" {
		t.Errorf("tombstones of ha = %+v, %v", l, err)
	}
	if l, _ := ListTombstones(ctx, db, "hb"); len(l) != 0 {
		t.Errorf("tombstones of hb = %+v", l)
	}
	if err := DeleteVM(ctx, db, "vha"); err != nil {
		t.Fatal(err)
	}
	if err := DeleteHost(ctx, db, "ha"); err != nil {
		t.Fatal(err)
	}
	if l, _ := ListTombstones(ctx, db, ""); len(l) != 0 {
		t.Errorf("tombstones after the host went: %+v", l)
	}
	if err := InsertTombstone(ctx, db, Tombstone{VMID: "x", HostID: "nohost", Name: "x", CreatedAt: now}); err == nil {
		t.Error("a tombstone for an unknown host was accepted")
	}
}
