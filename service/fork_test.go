package service

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"golang.org/x/crypto/ssh"
)

// forkFixture is the service over the fake driver that can save memory,
// with alice's VM "web" recorded running on a fake hypervisor process.
// The fake has no guest agent, so a fork gets as far as its agent and is
// rolled back: enough for authorization, validation, quota and rollback
// (the engine's TestForkRunningVM and e2e TestFork cover the rest).
func forkFixture(t *testing.T) (*fixture, store.VM) {
	t.Helper()
	dir, err := os.MkdirTemp("", "svcf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(dir, "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewSignerFromKey(priv)
	base := filepath.Join(dir, "base.raw")
	os.WriteFile(base, []byte("base"), 0o444)
	fx := &fixture{drv: fake.New(fake.Config{Caps: hypervisor.Caps{MemorySnapshot: true}}), ports: &ports{set: map[string]netip.Addr{}}, dir: dir}
	fx.svc, err = New(Config{StateDir: filepath.Join(dir, "state"), ReadyTimeout: 300 * time.Millisecond},
		Deps{DB: db, Driver: fx.drv, Network: fx.ports, Images: oneImage{base}, Disks: fileDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if fx.user, err = fx.svc.EnsureUser(ctx, "alice", false); err != nil {
		t.Fatal(err)
	}
	id := vm.NewID()
	vmDir := filepath.Join(dir, "state", "vms", id)
	run := filepath.Join(dir, "run-"+id)
	os.MkdirAll(vmDir, 0o700)
	os.MkdirAll(run, 0o700)
	os.WriteFile(filepath.Join(vmDir, "disk.qcow2"), []byte("overlay of "+base), 0o600)
	h, err := fx.drv.Start(ctx, hypervisor.Spec{ID: id, CPUs: 1, MemoryMiB: 256, RunDir: run,
		Disks: []hypervisor.Disk{{Path: filepath.Join(vmDir, "disk.qcow2"), Format: "qcow2"}}})
	if err != nil {
		t.Fatal(err)
	}
	src := store.VM{ID: id, Name: "web", OwnerID: fx.user.UserID, Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.210.0.9", MAC: "02:00:00:00:00:09", CID: 9, State: vm.Running, Handle: engine.EncodeHandle(h),
		CreatedAt: time.Now(), StartedAt: time.Now()}
	if err := store.InsertVM(ctx, db, src); err != nil {
		t.Fatal(err)
	}
	return fx, src
}

// assertOnlySource checks that nothing but the source is left and that
// it runs.
func (fx *fixture) assertOnlySource(t *testing.T, src store.VM) {
	t.Helper()
	ctx := context.Background()
	vms, _ := store.ListVMs(ctx, fx.svc.DB, "")
	if len(vms) != 1 || vms[0].ID != src.ID || vms[0].State != vm.Running {
		t.Errorf("vm rows: %+v", vms)
	}
	entries, _ := os.ReadDir(filepath.Join(fx.dir, "state", "vms"))
	if len(entries) != 1 {
		t.Errorf("vm dirs: %v", entries)
	}
	if len(fx.ports.set) != 0 {
		t.Errorf("ports left: %v", fx.ports.set)
	}
	if n := fx.drv.Running(); n != 1 {
		t.Errorf("%d hypervisor processes, want the source's", n)
	}
	h, _ := engine.DecodeHandle(src.Handle)
	if info, _ := fx.drv.Info(ctx, h); info.State != hypervisor.StateRunning {
		t.Errorf("source hypervisor %s", info.State)
	}
	ops, _ := store.RunningOperations(ctx, fx.svc.DB)
	if len(ops) != 0 {
		t.Errorf("operations still marked running: %+v", ops)
	}
}

func TestForkAuthorizationValidationRollback(t *testing.T) {
	fx, src := forkFixture(t)
	ctx := context.Background()
	bob, err := fx.svc.EnsureUser(ctx, "bob", false)
	if err != nil {
		t.Fatal(err)
	}
	root, err := fx.svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	// Another user cannot see it to fork it; nor can nobody.
	if _, err := fx.svc.Fork(ctx, bob, "web", ForkRequest{Name: "mine"}, nil); !errors.Is(err, errs.NotFound) {
		t.Fatalf("bob's fork = %v, want not found", err)
	}
	if _, err := fx.svc.Fork(ctx, Caller{}, "web", ForkRequest{}, nil); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("anonymous fork = %v", err)
	}
	if _, err := fx.svc.Fork(ctx, fx.user, "web", ForkRequest{Name: "Bad_Name"}, nil); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("bad name = %v", err)
	}
	if _, err := fx.svc.Fork(ctx, fx.user, "web", ForkRequest{Name: "web"}, nil); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("taken name = %v", err)
	}
	fx.assertOnlySource(t, src)
	// The owner gets as far as the fork's agent (the fake has none): the
	// fork is rolled back, the source resumed.
	var steps []string
	_, err = fx.svc.Fork(ctx, fx.user, "web", ForkRequest{}, func(s string) { steps = append(steps, s) })
	if !errors.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "did not become ready") {
		t.Fatalf("owner's fork = %v", err)
	}
	if got := strings.Join(steps, ","); !strings.Contains(got, "save memory,copy disk,resume source") || !strings.HasSuffix(got, "agent") {
		t.Fatalf("progress %q", got)
	}
	fx.assertOnlySource(t, src)
	// So does an admin (it is not refused as another user's VM).
	if _, err := fx.svc.Fork(ctx, root, "web", ForkRequest{Name: "admins"}, nil); !errors.Is(err, errs.Unavailable) {
		t.Fatalf("admin's fork = %v", err)
	}
	fx.assertOnlySource(t, src)
	// A stopped VM cannot be forked.
	stopped := src
	stopped.State = vm.Stopped
	stopped.Handle = ""
	if err := store.UpdateVM(ctx, fx.svc.DB, stopped); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.svc.Fork(ctx, fx.user, "web", ForkRequest{}, nil); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("fork of a stopped vm = %v", err)
	}
}

func TestForkCountsQuota(t *testing.T) {
	fx, src := forkFixture(t)
	ctx := context.Background()
	u, _ := store.GetUserByName(ctx, fx.svc.DB, "alice")
	u.MaxVMs = 1
	store.UpdateUser(ctx, fx.svc.DB, u)
	_, err := fx.svc.Fork(ctx, fx.user, "web", ForkRequest{}, nil)
	if !errors.Is(err, errs.ResourceExhausted) || !strings.Contains(err.Error(), "at most 1 vms") {
		t.Fatalf("fork over quota = %v", err)
	}
	fx.assertOnlySource(t, src)
	for _, c := range fx.drv.Calls() {
		if c.Op != fake.OpStart && c.Op != fake.OpInfo {
			t.Errorf("the refused fork touched the hypervisor: %+v", c)
		}
	}
}
