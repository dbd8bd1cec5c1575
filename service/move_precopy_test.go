package service

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

// TestPreCopyWindowIsClaimed: while a move with memory pre-copies (the
// step before the suspend, which may take long: the whole RAM goes), the
// target's vCPUs and memory are already claimed for the moving VM, so a
// create onto that room is refused; the claim goes with the move.
func TestPreCopyWindowIsClaimed(t *testing.T) {
	th := newTwoHosts(t)
	oneGuest(th)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v, err := svc.Create(ctx, th.admin, CreateRequest{Name: "big", Image: "minimal", Host: "cp", CPUs: 12, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	th.heartbeat(t)
	var during error
	ran := false
	svc.moving.crash = func(step string) bool {
		if step == "precopy" {
			ran = true
			// node-b has 16 vCPUs: 12 are the moving VM's.
			_, during = svc.Create(ctx, th.admin, CreateRequest{Name: "late", Image: "minimal", CPUs: 8, MemoryMiB: 128, Host: "node-b"}, nil)
			if cl, ok, err := store.GetClaim(ctx, svc.DB, v.ID); err != nil || !ok || cl.HostID != th.nodeID || cl.MemoryMiB != 256 {
				t.Errorf("claim during the pre-copy: %+v %v %v; want 256 MiB on node-b", cl, ok, err)
			}
		}
		return false
	}
	defer func() { svc.moving.crash = nil }()
	if _, err := svc.Move(ctx, th.admin, "big", MoveRequest{Host: "node-b", Mode: "memory"}, nil); err != nil {
		t.Fatalf("move: %v", err)
	}
	if !ran {
		t.Fatal("the move never reached its pre-copy step")
	}
	if errs.ClassOf(during) != errs.ResourceExhausted || !strings.Contains(during.Error(), "vCPUs free") {
		t.Fatalf("create onto the room of a move's pre-copy: %v, want ResourceExhausted (vCPUs)", during)
	}
	if _, ok, _ := store.GetClaim(ctx, svc.DB, v.ID); ok {
		t.Error("the move's claim is left after it ended")
	}
}
