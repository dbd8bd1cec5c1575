package service

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/scheduler"
	"github.com/minionsdev/minions/store"
)

// TestConcurrentCreatesDoNotOverAdmit: creates that run at once cannot
// all pass placement on the same free vCPUs or memory. Both hosts report
// 4 CPUs (16 vCPUs at cpu_overcommit 4) and 8192 MiB (12288 MiB at
// memory_overcommit 1.5); K creates start together. Each host ends
// within its limits, exactly as many creates succeed as fit, and the rest
// fail with errs.ResourceExhausted and leave nothing (no row, no VM on
// the node).
func TestConcurrentCreatesDoNotOverAdmit(t *testing.T) {
	for _, c := range []struct {
		name      string
		k, cpus   int
		memMiB    int
		fit       int // creates that fit on the two hosts together
		limitCPUs int // per host
		limitMem  int64
	}{
		{name: "vcpus", k: 14, cpus: 4, memMiB: 128, fit: 8, limitCPUs: 16, limitMem: 12288},
		{name: "memory", k: 12, cpus: 1, memMiB: 3072, fit: 8, limitCPUs: 16, limitMem: 12288},
	} {
		t.Run(c.name, func(t *testing.T) {
			th := newTwoHosts(t)
			svc := th.cp.svc
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var wg sync.WaitGroup
			errsOut := make([]error, c.k)
			start := make(chan struct{})
			for i := range c.k {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					_, errsOut[i] = svc.Create(ctx, th.admin, CreateRequest{Name: fmt.Sprintf("r%d", i), Image: "minimal", CPUs: c.cpus, MemoryMiB: c.memMiB}, nil)
				}()
			}
			close(start)
			wg.Wait()
			ok := 0
			for i, err := range errsOut {
				switch {
				case err == nil:
					ok++
				case errs.ClassOf(err) != errs.ResourceExhausted:
					t.Errorf("create r%d: %v; want success or ResourceExhausted", i, err)
				default:
					if _, gerr := store.GetVMByName(ctx, svc.DB, fmt.Sprintf("r%d", i)); errs.ClassOf(gerr) != errs.NotFound {
						t.Errorf("refused create r%d left a row: %v", i, gerr)
					}
				}
			}
			hosts, err := store.ListHosts(ctx, svc.DB)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range hosts {
				use, err := store.HostUsage(ctx, svc.DB, h.ID, h.Local)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("host %s: %d vms, %d vCPUs, %d MiB", h.Name, use.VMs, use.CPUs, use.RunningMemoryMiB)
				if use.CPUs > c.limitCPUs || use.RunningMemoryMiB > c.limitMem {
					t.Errorf("host %s admitted %d vCPUs and %d MiB; the limits are %d vCPUs and %d MiB", h.Name, use.CPUs, use.RunningMemoryMiB, c.limitCPUs, c.limitMem)
				}
			}
			if ok != c.fit {
				t.Errorf("%d of %d concurrent creates succeeded; %d fit", ok, c.k, c.fit)
			}
			if l, _ := th.node.svc.Engine.List(ctx); len(l) > c.fit/2 {
				t.Errorf("node-b runs %d vms; %d fit", len(l), c.fit/2)
			}
			if cl, err := store.ListClaims(ctx, svc.DB); err != nil || len(cl) != 0 {
				t.Errorf("placement claims left: %+v, %v", cl, err)
			}
		})
	}
}

// TestPlacementClaimsSwept: a claim counts against its host while its
// process lives (and for at most claimTTL); a refused placement claims
// nothing; the claims of a process that died (kill -9 mid-create) and
// old ones are dropped by the next placement.
func TestPlacementClaimsSwept(t *testing.T) {
	ctx := context.Background()
	fx, clk, root := hostFixture(t)
	s := fx.svc
	inv, err := s.HostAdd(ctx, root, "one")
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: testNKey})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RecordHeartbeat(ctx, res.HostID, Heartbeat{CPUs: 1, MemoryMiB: 8192, DiskFreeMiB: 100000}); err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertClaim(ctx, s.DB, store.Claim{VMID: "ghost", HostID: res.HostID, Kind: "create", CPUs: 4, MemoryMiB: 256,
		PID: dead.Process.Pid, CreatedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	place := func(id string, cpus int) error {
		_, _, err := s.placeClaim(ctx, scheduler.Request{CPUs: cpus, MemoryMiB: 256}, scheduler.Config{}, false, nil, &claim{vmID: id, kind: "create"})
		return err
	}
	// 4 vCPUs (1 CPU × 4): the dead process's claim of all 4 is swept.
	if err := place("a", 2); err != nil {
		t.Fatalf("place with a dead process's claim: %v", err)
	}
	if err := place("b", 3); errs.ClassOf(err) != errs.ResourceExhausted || !strings.Contains(err.Error(), "2 of 4 vCPUs free") {
		t.Fatalf("place over a live claim: %v, want ResourceExhausted (2 of 4 vCPUs free)", err)
	}
	if cl, _ := store.ListClaims(ctx, s.DB); len(cl) != 1 || cl[0].VMID != "a" || cl[0].PID != os.Getpid() {
		t.Fatalf("claims: %+v, want only a's, of this process", cl)
	}
	// A claim older than claimTTL stops holding its host.
	clk.Add(claimTTL + time.Second)
	if err := s.RecordHeartbeat(ctx, res.HostID, Heartbeat{CPUs: 1, MemoryMiB: 8192, DiskFreeMiB: 100000}); err != nil {
		t.Fatal(err)
	}
	if err := place("c", 4); err != nil {
		t.Fatalf("place after a's claim aged out: %v", err)
	}
	s.releaseClaim(ctx, "c")
	if cl, _ := store.ListClaims(ctx, s.DB); len(cl) != 0 {
		t.Fatalf("claims left: %+v", cl)
	}
}

// TestMovesAndCopiesClaimTheirTarget: a move or a copy onto another host
// is placed there like a create: the target's free vCPUs are checked and
// claimed until it ends. node-b (16 vCPUs) has 12 given; two stopped
// 4-vCPU VMs moved there at once: exactly one moves, the other fails
// with errs.ResourceExhausted and stays where it was, with no move record
// and no claim left. A copy onto the full host is refused the same way
// and leaves no row.
func TestMovesAndCopiesClaimTheirTarget(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := svc.Create(ctx, th.admin, CreateRequest{Name: "fat", Image: "minimal", CPUs: 12, MemoryMiB: 256, Host: "node-b"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"ma", "mb"} {
		if _, err := svc.Create(ctx, th.admin, CreateRequest{Name: n, Image: "minimal", CPUs: 4, MemoryMiB: 256, Host: "cp"}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Stop(ctx, th.admin, n); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	moved := make([]error, 2)
	for i, n := range []string{"ma", "mb"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, moved[i] = svc.Move(ctx, th.admin, n, MoveRequest{Host: "node-b"}, nil)
		}()
	}
	wg.Wait()
	ok := 0
	for i, err := range moved {
		n := []string{"ma", "mb"}[i]
		v, gerr := store.GetVMByName(ctx, svc.DB, n)
		if gerr != nil {
			t.Fatal(gerr)
		}
		switch {
		case err == nil:
			ok++
			if v.HostID != th.nodeID {
				t.Errorf("moved %s is on host %q", n, v.HostID)
			}
		case errs.ClassOf(err) != errs.ResourceExhausted || !strings.Contains(err.Error(), "vCPUs free"):
			t.Errorf("move %s: %v; want success or ResourceExhausted (vCPUs)", n, err)
		default:
			if v.HostID == th.nodeID {
				t.Errorf("refused move of %s left it on node-b", n)
			}
			if m, err := store.ListMoves(ctx, svc.DB); err != nil || len(m) != 0 {
				t.Errorf("move records left: %+v, %v", m, err)
			}
		}
	}
	if ok != 1 {
		t.Errorf("%d of 2 concurrent moves onto room for one succeeded (%v)", ok, moved)
	}
	use, _ := store.HostUsage(ctx, svc.DB, th.nodeID, false)
	if use.CPUs > 16 {
		t.Errorf("node-b was given %d vCPUs; it has 16", use.CPUs)
	}
	// node-b is full now: a copy onto it is refused and leaves nothing.
	left := "ma"
	if moved[0] == nil {
		left = "mb"
	}
	_, err := svc.Copy(ctx, th.admin, left, CopyRequest{Name: "cpy", Host: "node-b"}, nil)
	if errs.ClassOf(err) != errs.ResourceExhausted {
		t.Errorf("copy onto a full host: %v, want ResourceExhausted", err)
	}
	if _, err := store.GetVMByName(ctx, svc.DB, "cpy"); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("refused copy left a row: %v", err)
	}
	if cl, err := store.ListClaims(ctx, svc.DB); err != nil || len(cl) != 0 {
		t.Errorf("placement claims left: %+v, %v", cl, err)
	}
}
