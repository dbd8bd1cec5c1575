package engine

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

// liveFake is the fake driver with a pretend live migration: the target
// "waits" on unix sockets the test reads.
type liveFake struct {
	*fake.Driver
	dir      string
	finished int
}

func (d *liveFake) DescribeOut(h *hypervisor.Handle) ([]byte, error) {
	return []byte(`{"id":"x"}`), nil
}
func (d *liveFake) StartIncoming(ctx context.Context, spec hypervisor.Spec, src []byte) (*hypervisor.Handle, error) {
	if string(src) != `{"id":"x"}` {
		return nil, errs.New(errs.FailedPrecondition, "bad source %q", src)
	}
	return d.Driver.Start(ctx, spec)
}
func (d *liveFake) IncomingSocket(h *hypervisor.Handle, ch string) (string, error) {
	return filepath.Join(d.dir, ch+".sock"), nil
}
func (d *liveFake) MigrateOut(ctx context.Context, h *hypervisor.Handle, nbd, mig io.ReadWriteCloser, progress func(string)) (hypervisor.MigrationStats, error) {
	defer nbd.Close()
	defer mig.Close()
	progress("migrate memory")
	_, err := mig.Write([]byte("memory"))
	return hypervisor.MigrationStats{Downtime: time.Millisecond}, err
}
func (d *liveFake) FinishIncoming(ctx context.Context, h *hypervisor.Handle) error {
	d.finished++
	return nil
}

func liveOps(t *testing.T, l *Local, id string) int {
	t.Helper()
	ops, err := store.RunningOperations(context.Background(), l.DB)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, o := range ops {
		if o.VMID == id && o.Kind == opLiveIn {
			n++
		}
	}
	return n
}

// TestLiveMoveEngine: a driver without live migration is refused with a
// clear error; an incoming instance is recorded "creating" under a live-in
// operation with its address, TAP and disk; the dial reaches the driver's
// socket; finishing runs it; aborting, or a crash of the engine (its
// operation's process gone), removes everything of it.
func TestLiveMoveEngine(t *testing.T) {
	ctx := context.Background()
	t.Run("unsupported", func(t *testing.T) {
		fx := newFixture(t)
		spec := IncomingSpec{ID: vm.NewID(), Name: "in", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Source: []byte(`{}`)}
		if _, err := fx.eng.PrepareIncoming(ctx, spec, nil); !errors.Is(err, errs.FailedPrecondition) || !errors.Is(err, hypervisor.ErrUnsupported) {
			t.Fatalf("PrepareIncoming on the fake driver = %v, want FailedPrecondition (unsupported)", err)
		}
		if _, err := fx.eng.MigrateOut(ctx, vm.NewID(), "", nopConn{}, nopConn{}, nil); !errors.Is(err, errs.FailedPrecondition) {
			t.Fatalf("MigrateOut on the fake driver = %v", err)
		}
	})
	fx := newFixture(t)
	lf := &liveFake{Driver: fx.drv, dir: fx.dir}
	fx.eng.Driver = lf
	if err := store.InsertUser(ctx, fx.eng.DB, store.User{ID: "u1", Name: "user-u1", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	src, _ := json2(t, "agent-key")
	spec := IncomingSpec{ID: vm.NewID(), Name: "in", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Source: src}
	for name, bad := range map[string]func(s *IncomingSpec){
		"no source": func(s *IncomingSpec) { s.Source = nil },
		"bad id":    func(s *IncomingSpec) { s.ID = "x" },
		"bad size":  func(s *IncomingSpec) { s.MemoryMiB = 1 },
	} {
		s := spec
		bad(&s)
		if _, err := fx.eng.PrepareIncoming(ctx, s, nil); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("%s: PrepareIncoming = %v, want InvalidArgument", name, err)
		}
	}
	prepare := func() Instance {
		t.Helper()
		inst, err := fx.eng.PrepareIncoming(ctx, spec, nil)
		if err != nil {
			t.Fatal(err)
		}
		row, err := store.GetVMByID(ctx, fx.eng.DB, spec.ID)
		if err != nil || row.State != vm.Creating || row.Handle == "" || row.AgentKey != "agent-key" || inst.IP == "" {
			t.Fatalf("incoming row %+v %v", row, err)
		}
		if fx.ports.len() != 1 || liveOps(t, fx.eng, spec.ID) != 1 {
			t.Fatalf("ports %d, live-in ops %d: want 1 and 1", fx.ports.len(), liveOps(t, fx.eng, spec.ID))
		}
		return inst
	}
	gone := func(what string) {
		t.Helper()
		if _, err := store.GetVMByID(ctx, fx.eng.DB, spec.ID); err == nil {
			t.Errorf("%s: the row is left", what)
		}
		if _, err := os.Stat(fx.eng.vmDir(spec.ID)); err == nil {
			t.Errorf("%s: the vm dir is left", what)
		}
		if fx.ports.len() != 0 || liveOps(t, fx.eng, spec.ID) != 0 {
			t.Errorf("%s: ports %d, live-in ops %d left", what, fx.ports.len(), liveOps(t, fx.eng, spec.ID))
		}
	}

	prepare()
	if _, err := fx.eng.PrepareIncoming(ctx, spec, nil); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("second PrepareIncoming = %v, want AlreadyExists", err)
	}
	ln, err := net.Listen("unix", filepath.Join(fx.dir, hypervisor.ChannelNBD+".sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := fx.eng.DialIncoming(ctx, spec.ID, hypervisor.ChannelNBD)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := fx.eng.AbortIncoming(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	gone("abort")

	// A crash of this engine's process: its live-in operation is found
	// by Reconcile and the half-made instance removed.
	prepare()
	if _, err := fx.eng.DB.ExecContext(ctx, `UPDATE operations SET pid=999999999 WHERE vm_id=?`, spec.ID); err != nil {
		t.Fatal(err)
	}
	if err := fx.eng.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	gone("crash")

	// Finish: running (the network step needs an agent; the fake has
	// none, which is logged, not fatal).
	prepare()
	inst, resumed, err := fx.eng.FinishIncoming(ctx, spec.ID, nil)
	if err != nil || inst.State != vm.Running || lf.finished != 1 || resumed <= 0 {
		t.Fatalf("FinishIncoming = %+v %v %v (finished %d)", inst, resumed, err, lf.finished)
	}
	if liveOps(t, fx.eng, spec.ID) != 0 {
		t.Errorf("live-in operation still running after finish")
	}
	if _, _, err := fx.eng.FinishIncoming(ctx, spec.ID, nil); !errors.Is(err, errs.FailedPrecondition) {
		t.Errorf("second FinishIncoming = %v, want FailedPrecondition", err)
	}
	if _, err := fx.eng.DescribeOut(ctx, spec.ID); err != nil {
		t.Fatalf("DescribeOut of the running vm = %v", err)
	}
	// A disk that is an overlay of a warm template's does not move live
	// (QEMU would mirror its top layer only; TestTemplateLayer).
	if _, err := exec.LookPath("qemu-img"); err == nil {
		img := filepath.Join(fx.dir, "legacy-image.raw")
		tdisk := filepath.Join(fx.eng.templatesDir(), ".disks", "0123456789abcdef-1.qcow2")
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Truncate(img, 16<<20)
		os.MkdirAll(filepath.Dir(tdisk), 0o700)
		os.Remove(fx.eng.diskPath(spec.ID))
		if err := disk.CreateOverlay(ctx, img, "raw", tdisk, 0); err != nil {
			t.Fatal(err)
		}
		if err := disk.CreateOverlay(ctx, tdisk, "qcow2", fx.eng.diskPath(spec.ID), 0); err != nil {
			t.Fatal(err)
		}
		if _, err := fx.eng.DescribeOut(ctx, spec.ID); !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "without --live") {
			t.Errorf("DescribeOut of a vm whose disk is an overlay of a template's = %v, want FailedPrecondition", err)
		}
	}
}

func json2(t *testing.T, key string) ([]byte, error) {
	t.Helper()
	return []byte(`{"agent_key":"` + key + `","machine":"eyJpZCI6IngifQ=="}`), nil
}

type nopConn struct{}

func (nopConn) Read([]byte) (int, error)    { return 0, io.EOF }
func (nopConn) Write(b []byte) (int, error) { return len(b), nil }
func (nopConn) Close() error                { return nil }
