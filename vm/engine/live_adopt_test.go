package engine

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// TestLiveStageAndAdopt: a live move onto the host whose store holds the
// control plane's row of the VM (recorded on another host): the staged
// copy has its disk, TAP and waiting hypervisor but no record (the row
// stays the other host's, and no live-in operation could make Reconcile
// remove anything); its channels dial; aborting it removes everything it
// made and leaves the row; adopting it (the switch) makes the row this
// host's, creating, with the staged address and handle, and
// FinishIncoming runs it. An address taken meanwhile makes the adoption
// fail with nothing changed.
func TestLiveStageAndAdopt(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	lf := &liveFake{Driver: fx.drv, dir: fx.dir}
	fx.eng.Driver = lf
	db := fx.eng.DB
	if err := store.InsertUser(ctx, db, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertHost(ctx, db, store.Host{ID: vm.NewID(), Name: "node-b", State: store.HostReady, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	hb, _ := store.GetHostByName(ctx, db, "node-b")
	row := store.VM{ID: vm.NewID(), Name: "away", OwnerID: "u1", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		State: vm.Running, Port: 80, HostID: hb.ID, NodeIP: "10.9.0.5", CreatedAt: time.Now()}
	if err := store.RemotePlaceholders(ctx, db, &row); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertVM(ctx, db, row); err != nil {
		t.Fatal(err)
	}
	src, _ := json2(t, "agent-key")
	spec := IncomingSpec{ID: row.ID, Name: "away", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Source: src}
	stillRemote := func(what string) {
		t.Helper()
		v, err := store.GetVMByID(ctx, db, row.ID)
		if err != nil || v.HostID != hb.ID || !strings.HasPrefix(v.IP, "@") || v.Handle != "" {
			t.Fatalf("%s: the row is %+v, %v; want node-b's, untouched", what, v, err)
		}
	}
	stage := func() Instance {
		t.Helper()
		inst, err := fx.eng.StageIncoming(ctx, spec, nil)
		if err != nil {
			t.Fatal(err)
		}
		stillRemote("staged")
		if inst.IP == "" || strings.HasPrefix(inst.IP, "@") || fx.ports.len() != 1 || fx.drv.Running() != 1 || liveOps(t, fx.eng, row.ID) != 0 {
			t.Fatalf("staged %+v: ports %d, hypervisors %d, live-in ops %d", inst, fx.ports.len(), fx.drv.Running(), liveOps(t, fx.eng, row.ID))
		}
		if _, err := fx.eng.Get(ctx, row.ID); errs.ClassOf(err) != errs.NotFound {
			t.Fatalf("a staged copy is an instance already: %v", err)
		}
		return inst
	}
	gone := func(what string) {
		t.Helper()
		if _, err := os.Stat(fx.eng.vmDir(row.ID)); err == nil {
			t.Errorf("%s: the vm dir is left", what)
		}
		if fx.ports.len() != 0 || fx.drv.Running() != 0 {
			t.Errorf("%s: ports %d, hypervisors %d left", what, fx.ports.len(), fx.drv.Running())
		}
	}

	if _, err := fx.eng.StageIncoming(ctx, IncomingSpec{ID: "x", Name: "away", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Source: src}, nil); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("stage a bad id: %v", err)
	}
	if err := db.Tx(ctx, func(q store.Q) error { return fx.eng.AdoptIncoming(ctx, q, row.ID) }); errs.ClassOf(err) != errs.FailedPrecondition {
		t.Fatalf("adopt with nothing staged: %v", err)
	}
	stage()
	if _, err := fx.eng.StageIncoming(ctx, spec, nil); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("second stage = %v, want AlreadyExists", err)
	}
	ln, err := net.Listen("unix", filepath.Join(fx.dir, hypervisor.ChannelNBD+".sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := fx.eng.DialIncoming(ctx, row.ID, hypervisor.ChannelNBD)
	if err != nil {
		t.Fatalf("dial a staged copy: %v", err)
	}
	c.Close()
	if err := fx.eng.AbortIncoming(ctx, row.ID); err != nil {
		t.Fatal(err)
	}
	gone("abort")
	stillRemote("aborted")

	// The staged address taken meanwhile: the adoption fails, nothing
	// changes.
	inst := stage()
	other := store.VM{ID: vm.NewID(), Name: "other", OwnerID: "u1", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		State: vm.Stopped, Port: 80, IP: inst.IP, MAC: "02:00:00:00:00:09", CID: 99, CreatedAt: time.Now()}
	if err := store.InsertVM(ctx, db, other); err != nil {
		t.Fatal(err)
	}
	if err := db.Tx(ctx, func(q store.Q) error { return fx.eng.AdoptIncoming(ctx, q, row.ID) }); errs.ClassOf(err) != errs.FailedPrecondition {
		t.Fatalf("adopt onto a taken address: %v", err)
	}
	stillRemote("refused adoption")
	if err := store.DeleteVM(ctx, db, other.ID); err != nil {
		t.Fatal(err)
	}

	// The switch, then the resume.
	if err := db.Tx(ctx, func(q store.Q) error { return fx.eng.AdoptIncoming(ctx, q, row.ID) }); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	v, err := store.GetVMByID(ctx, db, row.ID)
	if err != nil || v.HostID != "" || v.IP != inst.IP || v.State != vm.Creating || v.Handle == "" || v.AgentKey != "agent-key" {
		t.Fatalf("adopted row %+v, %v", v, err)
	}
	got, _, err := fx.eng.FinishIncoming(ctx, row.ID, nil)
	if err != nil || got.State != vm.Running || lf.finished != 1 {
		t.Fatalf("FinishIncoming = %+v, %v (finished %d)", got, err, lf.finished)
	}
	if _, err := os.Stat(filepath.Join(fx.eng.vmDir(row.ID), incomingFile)); !os.IsNotExist(err) {
		t.Errorf("the staged record outlived the finish: %v", err)
	}
	if inst, err := fx.eng.Get(ctx, row.ID); err != nil || inst.State != vm.Running {
		t.Errorf("after the finish: %+v, %v", inst, err)
	}
}
