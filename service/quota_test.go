package service

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
	"golang.org/x/crypto/ssh"
)

// withConfig rebuilds fx.svc over the same store and dependencies with
// change applied to its configuration.
func (fx *fixture) withConfig(t *testing.T, change func(*Config)) {
	t.Helper()
	cfg := fx.svc.cfg
	change(&cfg)
	svc, err := New(cfg, fx.svc.Deps)
	if err != nil {
		t.Fatal(err)
	}
	fx.svc = svc
}

// hostGiB makes the service see a host with n GiB of memory and a 1.5
// overcommit ratio.
func (fx *fixture) hostGiB(t *testing.T, n int64) {
	fx.withConfig(t, func(c *Config) {
		c.HostMemory = func() (int64, error) { return n << 30, nil }
		c.MemoryOvercommit = 1.5
	})
}

var vmSeq int

// putVM inserts a VM row of the given memory and state owned by owner,
// with a disk file, and returns its ID.
func (fx *fixture) putVM(t *testing.T, owner, name, state string, memMiB, diskGiB int) string {
	t.Helper()
	vmSeq++
	id := strings.Repeat(string(rune('a'+vmSeq)), 12)
	err := store.InsertVM(context.Background(), fx.svc.DB, store.VM{ID: id, Name: name, OwnerID: owner, Image: "minimal@1", CPUs: 1,
		MemoryMiB: memMiB, DiskGiB: diskGiB, IP: "10.210.0." + string(rune('0'+vmSeq)) + "0", MAC: "02:00:00:00:00:" + string(rune('0'+vmSeq)) + "0",
		CID: uint32(10 + vmSeq), State: vm.State(state), CreatedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(fx.eng().VMDir(id), 0o700)
	if err := os.WriteFile(fx.eng().DiskPath(id), []byte("disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	return id
}

func setQuota(t *testing.T, fx *fixture, name string, q Quota) {
	t.Helper()
	admin, _ := fx.svc.EnsureUser(context.Background(), "root", true)
	if _, err := fx.svc.SetQuota(context.Background(), admin, name, q); err != nil {
		t.Fatal(err)
	}
}

// Users who sign up through the SSH front door (and users an admin adds)
// get the configured default quota, not "unlimited".
func TestSignupGetsDefaultQuota(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	fx.withConfig(t, func(c *Config) { c.DefaultQuota = Quota{MaxVMs: 1, MaxCPUs: 2, MaxMemoryMiB: 1024, MaxDiskGiB: 10} })
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	c, err := fx.svc.RegisterUser(ctx, "carol", signer.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	u, err := store.GetUserByName(ctx, fx.svc.DB, "carol")
	if err != nil {
		t.Fatal(err)
	}
	if u.MaxVMs != 1 || u.MaxCPUs != 2 || u.MaxMemoryMiB != 1024 || u.MaxDiskGiB != 10 {
		t.Fatalf("signed-up user's quota = %+v", u)
	}
	fx.putVM(t, c.UserID, "first", store.StateStopped, 256, 1)
	if _, err := fx.svc.Create(ctx, c, CreateRequest{Name: "second"}, nil); !errors.Is(err, errs.ResourceExhausted) || errs.ExitCode(err) != 8 {
		t.Fatalf("second create = %v (exit %d)", err, errs.ExitCode(err))
	}
	admin, _ := fx.svc.EnsureUser(ctx, "root", true)
	added, err := fx.svc.AddUser(ctx, admin, "dave", false, KeyProof{})
	if err != nil || added.Quota != (Quota{MaxVMs: 1, MaxCPUs: 2, MaxMemoryMiB: 1024, MaxDiskGiB: 10}) {
		t.Fatalf("added user = %+v, %v", added, err)
	}
	boss, err := fx.svc.AddUser(ctx, admin, "boss", true, KeyProof{})
	if err != nil || boss.Quota != (Quota{}) {
		t.Fatalf("added admin = %+v, %v", boss, err)
	}
}

func TestDefaultQuotaValidated(t *testing.T) {
	fx := newFixture(t)
	cfg := fx.svc.cfg
	cfg.DefaultQuota.MaxVMs = -1
	if _, err := New(cfg, fx.svc.Deps); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("negative default quota: %v", err)
	}
	cfg = fx.svc.cfg
	cfg.MemoryOvercommit = -1
	if _, err := New(cfg, fx.svc.Deps); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("negative overcommit: %v", err)
	}
}

// Snapshot bytes count against the disk quota: a new snapshot that would
// go over it is refused, and existing snapshots leave less room for disks.
func TestSnapshotsCountAgainstDiskQuota(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	id := fx.putVM(t, fx.user.UserID, "web", store.StateStopped, 256, 2)
	setQuota(t, fx, "alice", Quota{MaxDiskGiB: 2})
	_, err := fx.svc.CreateSnapshot(ctx, fx.user, "web", SnapshotRequest{Name: "s1"}, nil)
	if !errors.Is(err, errs.ResourceExhausted) || !strings.Contains(err.Error(), "at most 2 GiB of disk") {
		t.Fatalf("snapshot over the disk quota = %v", err)
	}
	if snaps, _ := store.ListSnapshots(ctx, fx.svc.DB, id); len(snaps) != 0 {
		t.Fatalf("a refused snapshot left %+v", snaps)
	}
	if entries, _ := os.ReadDir(filepath.Join(fx.eng().VMDir(id), "snapshots")); len(entries) != 0 {
		t.Fatalf("a refused snapshot left files %v", entries)
	}
	// With room it works, and its bytes show in the usage.
	setQuota(t, fx, "alice", Quota{MaxDiskGiB: 3})
	if _, err := fx.svc.CreateSnapshot(ctx, fx.user, "web", SnapshotRequest{Name: "s1"}, nil); err != nil {
		t.Fatal(err)
	}
	// A 1 GiB snapshot (say, with memory) leaves no room for a 1 GiB disk.
	store.InsertSnapshot(ctx, fx.svc.DB, store.Snapshot{ID: "snapbig00000", VMID: id, Name: "big", Memory: true, SizeBytes: 1 << 30, CreatedAt: time.Now()})
	_, err = fx.svc.Create(ctx, fx.user, CreateRequest{Name: "db", DiskGiB: 1}, nil)
	if !errors.Is(err, errs.ResourceExhausted) || !strings.Contains(err.Error(), "for snapshots") {
		t.Fatalf("create with snapshots filling the disk quota = %v", err)
	}
	admin, _ := fx.svc.EnsureUser(ctx, "root", true)
	users, _ := fx.svc.ListUsers(ctx, admin)
	for _, u := range users {
		if u.Name == "alice" && u.Usage.SnapshotBytes < 1<<30 {
			t.Errorf("usage = %+v", u.Usage)
		}
	}
}

// Creates beyond host memory × overcommit are refused with a clear message
// (exit 8), stopped VMs do not count, and nothing is left behind.
func TestCreateRefusedBeyondHostMemory(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	fx.hostGiB(t, 2) // 3 GiB allowed
	fx.putVM(t, fx.user.UserID, "big", store.StateRunning, 2048, 1)
	fx.putVM(t, fx.user.UserID, "parked", store.StateStopped, 4096, 1)
	_, err := fx.svc.Create(ctx, fx.user, CreateRequest{Name: "web", MemoryMiB: 1536}, nil)
	want := "not enough host memory: 3.5 GiB of 3.0 GiB allowed (host 2.0 GiB × overcommit 1.5) would be allocated"
	if !errors.Is(err, errs.ResourceExhausted) || errs.ExitCode(err) != 8 || !strings.Contains(err.Error(), want) {
		t.Fatalf("create beyond host memory = %v (exit %d)", err, errs.ExitCode(err))
	}
	if _, err := store.GetVMByName(ctx, fx.svc.DB, "web"); !errors.Is(err, errs.NotFound) {
		t.Fatal("a refused create left a row")
	}
	// Exactly at the limit is allowed (it then fails later: the fake
	// hypervisor has no agent).
	_, err = fx.svc.Create(ctx, fx.user, CreateRequest{Name: "web", MemoryMiB: 1024}, nil)
	if errors.Is(err, errs.ResourceExhausted) {
		t.Fatalf("create within host memory = %v", err)
	}
	// A VM that another process is starting holds its memory already.
	parked, _ := store.GetVMByName(ctx, fx.svc.DB, "parked")
	pid := os.Getpid()
	pst, _ := procfs.StartTime(pid)
	now := time.Now()
	store.InsertOperation(ctx, fx.svc.DB, store.Operation{ID: vm.NewID(), VMID: parked.ID, Kind: "start", State: store.OpRunning,
		PID: pid, PIDStart: pst, Data: "{}", CreatedAt: now, UpdatedAt: now})
	_, err = fx.svc.Create(ctx, fx.user, CreateRequest{Name: "web", MemoryMiB: 256}, nil)
	if !errors.Is(err, errs.ResourceExhausted) {
		t.Fatalf("create while a 4 GiB vm starts = %v", err)
	}
}

// Starting a stopped VM is checked the same way; so is growing a stopped
// VM's memory past what the host could ever give it.
func TestStartAndResizeRefusedBeyondHostMemory(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	fx.hostGiB(t, 2)
	fx.putVM(t, fx.user.UserID, "big", store.StateRunning, 2048, 1)
	fx.putVM(t, fx.user.UserID, "web", store.StateStopped, 1536, 1)
	_, err := fx.svc.Start(ctx, fx.user, "web", nil)
	if !errors.Is(err, errs.ResourceExhausted) || !strings.Contains(err.Error(), "not enough host memory: 3.5 GiB") {
		t.Fatalf("start beyond host memory = %v", err)
	}
	v, _ := store.GetVMByName(ctx, fx.svc.DB, "web")
	if v.State != store.StateStopped {
		t.Fatalf("refused start left state %s", v.State)
	}
	if ops, _ := store.RunningOperations(ctx, fx.svc.DB); len(ops) != 0 {
		t.Fatalf("refused start left operations %+v", ops)
	}
	if fx.drv.Running() != 0 {
		t.Fatal("a refused start started a hypervisor")
	}
	_, err = fx.svc.Resize(ctx, fx.user, "web", ResizeRequest{MemoryMiB: 4096})
	if !errors.Is(err, errs.ResourceExhausted) || !strings.Contains(err.Error(), "more than the 3.0 GiB allowed") {
		t.Fatalf("resize beyond host memory = %v", err)
	}
	if v, _ := store.GetVMByName(ctx, fx.svc.DB, "web"); v.MemoryMiB != 1536 {
		t.Fatalf("refused resize changed memory to %d", v.MemoryMiB)
	}
	if _, err := fx.svc.Resize(ctx, fx.user, "web", ResizeRequest{MemoryMiB: 3072}); err != nil {
		t.Fatalf("resize within what the host allows: %v", err)
	}
}

// A user at their VM limit may still grow a VM within the other limits.
func TestResizeAtVMLimit(t *testing.T) {
	fx := newFixture(t)
	fx.putVM(t, fx.user.UserID, "web", store.StateStopped, 256, 1)
	setQuota(t, fx, "alice", Quota{MaxVMs: 1, MaxMemoryMiB: 1024})
	if _, err := fx.svc.Resize(context.Background(), fx.user, "web", ResizeRequest{MemoryMiB: 512}); err != nil {
		t.Fatalf("resize at the vm limit: %v", err)
	}
	if _, err := fx.svc.Resize(context.Background(), fx.user, "web", ResizeRequest{MemoryMiB: 2048}); !errors.Is(err, errs.ResourceExhausted) {
		t.Fatalf("resize over the memory quota: %v", err)
	}
}

func TestMemTotal(t *testing.T) {
	n, err := MemTotal()
	if err != nil || n < 64<<20 {
		t.Fatalf("MemTotal = %d, %v", n, err)
	}
}
