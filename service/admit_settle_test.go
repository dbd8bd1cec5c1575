package service

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

// TestInterruptedMoveKeepsItsClaim: a move whose control plane died
// mid-transfer (kill -9: its claim names a dead process) leaves a copy
// being imported on the target until SettleMoves removes it, so its
// claim on the target keeps counting until then: a create that would
// take the same room is refused. Once SettleMoves rolled the move back
// (the record gone), the claim is gone too and the create fits.
func TestInterruptedMoveKeepsItsClaim(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := svc.Create(ctx, th.admin, CreateRequest{Name: "mv", Image: "minimal", CPUs: 12, MemoryMiB: 256, Host: "cp"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Stop(ctx, th.admin, "mv"); err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	err = svc.DB.Tx(ctx, func(q store.Q) error {
		if err := store.InsertMove(ctx, q, store.Move{VMID: v.ID, ToHost: th.nodeID, Step: store.MoveTransfer, CreatedAt: now}); err != nil {
			return err
		}
		return store.InsertClaim(ctx, q, store.Claim{VMID: v.ID, HostID: th.nodeID, Kind: "move", CPUs: 12, MemoryMiB: 256, DiskGiB: 1,
			PID: dead.Process.Pid, CreatedAt: now})
	})
	if err != nil {
		t.Fatal(err)
	}
	// node-b has 16 vCPUs: 12 are held by the interrupted move.
	_, err = svc.Create(ctx, th.admin, CreateRequest{Name: "late", Image: "minimal", CPUs: 8, MemoryMiB: 128, Host: "node-b"}, nil)
	if errs.ClassOf(err) != errs.ResourceExhausted || !strings.Contains(err.Error(), "vCPUs free") {
		t.Fatalf("create onto the room of an interrupted move: %v, want ResourceExhausted (vCPUs)", err)
	}
	if cl, ok, err := store.GetClaim(ctx, svc.DB, v.ID); err != nil || !ok {
		t.Fatalf("the interrupted move's claim was swept: %v", err)
	} else if cl.HostID != th.nodeID {
		t.Fatalf("claim on %s", cl.HostID)
	}
	if err := svc.SettleMoves(ctx); err != nil {
		t.Fatal(err)
	}
	if m, _ := store.ListMoves(ctx, svc.DB); len(m) != 0 {
		t.Fatalf("move records after settling: %+v", m)
	}
	if _, ok, _ := store.GetClaim(ctx, svc.DB, v.ID); ok {
		t.Error("the settled move's claim is left")
	}
	if _, err := svc.Create(ctx, th.admin, CreateRequest{Name: "late", Image: "minimal", CPUs: 8, MemoryMiB: 128, Host: "node-b"}, nil); err != nil {
		t.Errorf("create after the move was settled: %v", err)
	}
}
