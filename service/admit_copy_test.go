package service

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

// TestCopiesAndForksClaimTheSourceHost: copies and forks made on their
// source's own host are placed there like creates: the host's free vCPUs
// are checked and claimed until each ends, so concurrent ones cannot
// over-admit. The control plane's host has 16 vCPUs (4 CPUs at
// cpu_overcommit 4); a 4-vCPU source leaves room for three 4-vCPU VMs.
// Six copies at once: exactly three succeed, the rest fail with
// errs.ResourceExhausted and leave no row. Then the host is full: a fork
// is refused the same way. No claim is left.
func TestCopiesAndForksClaimTheSourceHost(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := svc.Create(ctx, th.admin, CreateRequest{Name: "src", Image: "minimal", CPUs: 4, MemoryMiB: 128, Host: "cp"}, nil); err != nil {
		t.Fatal(err)
	}
	const k = 6
	var wg sync.WaitGroup
	out := make([]error, k)
	start := make(chan struct{})
	for i := range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, out[i] = svc.Copy(ctx, th.admin, "src", CopyRequest{Name: fmt.Sprintf("c%d", i)}, nil)
		}()
	}
	close(start)
	wg.Wait()
	// All copies share the fixture's one in-process guest, whose files
	// they may race on while re-identifying: such a failure (rolled back)
	// is not an admission error, but an over-admission is.
	ok, refused := 0, 0
	for i, err := range out {
		switch {
		case err == nil:
			ok++
		case errs.ClassOf(err) == errs.ResourceExhausted:
			refused++
			if !strings.Contains(err.Error(), "vCPUs free") {
				t.Errorf("copy c%d: %v; want vCPUs named", i, err)
			}
			if _, gerr := store.GetVMByName(ctx, svc.DB, fmt.Sprintf("c%d", i)); errs.ClassOf(gerr) != errs.NotFound {
				t.Errorf("refused copy c%d left a row: %v", i, gerr)
			}
		default:
			t.Logf("copy c%d failed past admission (the shared test guest): %v", i, err)
		}
	}
	t.Logf("%d copies made, %d refused", ok, refused)
	if ok > 3 || refused < k-4 {
		t.Errorf("%d of %d concurrent copies succeeded and %d were refused; 3 fit", ok, k, refused)
	}
	local, err := store.GetLocalHost(ctx, svc.DB)
	if err != nil {
		t.Fatal(err)
	}
	use, err := store.HostUsage(ctx, svc.DB, local.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	if use.CPUs > 16 {
		t.Errorf("the control plane's host was given %d vCPUs; it has 16", use.CPUs)
	}
	// Fill what is left, then a fork finds no room.
	for i := 0; use.CPUs+4 <= 16; i++ {
		if _, err := svc.Create(ctx, th.admin, CreateRequest{Name: fmt.Sprintf("fill%d", i), Image: "minimal", CPUs: 4, MemoryMiB: 128, Host: "cp"}, nil); err != nil {
			t.Fatal(err)
		}
		use.CPUs += 4
	}
	_, err = svc.Fork(ctx, th.admin, "src", ForkRequest{Name: "fk"}, nil)
	if errs.ClassOf(err) != errs.ResourceExhausted || !strings.Contains(err.Error(), "vCPUs free") {
		t.Errorf("fork onto a full host: %v, want ResourceExhausted (vCPUs)", err)
	}
	if _, err := store.GetVMByName(ctx, svc.DB, "fk"); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("refused fork left a row: %v", err)
	}
	// A VM destroyed frees its room: a fork fits again.
	vms, err := store.ListVMs(ctx, svc.DB, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		if v.Name != "src" {
			if err := svc.Destroy(ctx, th.admin, v.Name); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if _, err := svc.Fork(ctx, th.admin, "src", ForkRequest{Name: "fk"}, nil); err != nil {
		t.Errorf("fork with room for it: %v", err)
	}
	if cl, err := store.ListClaims(ctx, svc.DB); err != nil || len(cl) != 0 {
		t.Errorf("placement claims left: %+v, %v", cl, err)
	}
}
