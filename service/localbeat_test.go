package service

import (
	"context"
	"testing"
	"time"

	"github.com/minionsdev/minions/store"
)

// TestLocalHeartbeatWrittenWhenChanged: the local host's unchanged
// heartbeats are not written to the store (no commit, so the store's
// stamp and every cache keyed on it stay), its view still shows the last
// one received, and a change, a minute's age, or another host's beat is
// written.
func TestLocalHeartbeatWrittenWhenChanged(t *testing.T) {
	ctx := context.Background()
	fx, clk, root := hostFixture(t)
	s := fx.svc
	localID, err := s.EnsureLocalHost(ctx, "cp", "", "v1")
	if err != nil {
		t.Fatal(err)
	}
	stamp := func() store.WALStamp {
		t.Helper()
		st, ok := s.DB.ChangeStamp()
		if !ok {
			t.Fatal("no change stamp")
		}
		return st
	}
	beat := func(hb Heartbeat) (written bool) {
		t.Helper()
		before := stamp()
		if err := s.RecordHeartbeat(ctx, localID, hb); err != nil {
			t.Fatal(err)
		}
		return stamp() != before
	}
	hb := Heartbeat{CPUs: 2, MemoryMiB: 24576, DiskMiB: 100000, MemoryFreeMiB: 20000, DiskFreeMiB: 80000, Version: "v1"}
	if !beat(hb) {
		t.Fatal("the first heartbeat was not written")
	}
	written := clk.Now()
	clk.Add(2 * time.Second)
	same := hb
	same.MemoryFreeMiB -= 100 // under 1/64 of 24 GiB
	if beat(same) {
		t.Fatal("an unchanged heartbeat 2 s later was written")
	}
	h := hostState(t, s, root, "cp")
	if !h.LastHeartbeat.Equal(clk.Now()) || h.State == HostUnreachable {
		t.Fatalf("the view's heartbeat %v (state %s), want the last received %v", h.LastHeartbeat, h.State, clk.Now())
	}
	if row, err := store.GetLocalHost(ctx, s.DB); err != nil || !row.LastHeartbeat.Equal(written) || row.MemoryFreeMiB != hb.MemoryFreeMiB {
		t.Fatalf("stored %+v %v, want the first heartbeat's", row, err)
	}
	clk.Add(20 * time.Second)
	if h := hostState(t, s, root, "cp"); h.State != HostUnreachable {
		t.Fatalf("22 s without a heartbeat: state %s", h.State)
	}
	moved := hb
	moved.MemoryFreeMiB -= 1000 // over 1/64 of 24 GiB
	if !beat(moved) {
		t.Fatal("a heartbeat with 1000 MiB less free memory was not written")
	}
	for _, change := range []func(*Heartbeat){
		func(h *Heartbeat) { h.Version = "v2" },
		func(h *Heartbeat) { h.CPUs = 4 },
		func(h *Heartbeat) { h.DiskFreeMiB -= 5000 },
	} {
		next := moved
		change(&next)
		clk.Add(2 * time.Second)
		if !beat(next) {
			t.Fatalf("a changed heartbeat %+v was not written", next)
		}
		moved = next
	}
	clk.Add(30 * time.Second)
	if beat(moved) {
		t.Fatal("an unchanged heartbeat 30 s after the last write was written")
	}
	clk.Add(31 * time.Second)
	if !beat(moved) {
		t.Fatal("an unchanged heartbeat a minute after the last write was not written")
	}

	// Another host's heartbeats are all written: its liveness is read
	// from the store.
	inv, err := s.HostAdd(ctx, root, "node1")
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: testNKey, Version: "v1", Address: "198.51.100.2"})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		before := stamp()
		clk.Add(2 * time.Second)
		if err := s.RecordHeartbeat(ctx, res.HostID, hb); err != nil {
			t.Fatal(err)
		}
		if stamp() == before {
			t.Fatal("a remote host's heartbeat was not written")
		}
	}
}
