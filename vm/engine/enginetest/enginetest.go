// Package enginetest is the conformance suite of engine.Engine: the same
// tests run against the local engine on the fake hypervisor (with an
// in-process guest agent, fast), on QEMU (real guests) and, later, against
// the engine over NATS (nodeagent).
package enginetest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// Harness is what the suite needs from an engine's test.
type Harness struct {
	Engine engine.Engine
	// Image is the image reference instances are created from.
	Image string
	// Owner is the owner tag instances get (on a local engine sharing the
	// control plane's store, an existing user's ID).
	Owner string
	// MemoryMiB is each instance's memory; default 256.
	MemoryMiB int
	// Kill makes instance inst's hypervisor die behind the engine's back
	// (a crash). Default: SIGKILL to inst.PID.
	Kill func(t *testing.T, inst engine.Instance)
	// Leaks lists what of instance id is left on the host (files, TAPs,
	// processes, records); the suite requires it empty after a destroy and
	// after a failed create. nil skips these checks.
	Leaks func(t *testing.T, id string) []string
	// RealGuest says the guest's files live on the instance's disk, so a
	// snapshot restore brings back what the disk held (the fake's agent
	// serves a host directory: nil for it).
	RealGuest bool
	// Timeout bounds each subtest; default 5 minutes.
	Timeout time.Duration
}

// Run runs the suite. newHarness is called once per subtest.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, h Harness)
	}{
		{"Validation", validation},
		{"Lifecycle", lifecycle},
		{"SnapshotRestoreCopy", snapshots},
		{"FailedCreateRollsBack", failedCreate},
		{"ReconcileAfterLostProcess", lostProcess},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if h.MemoryMiB == 0 {
				h.MemoryMiB = 256
			}
			if h.Timeout == 0 {
				h.Timeout = 5 * time.Minute
			}
			if h.Kill == nil {
				h.Kill = func(t *testing.T, inst engine.Instance) {
					if inst.PID <= 1 {
						t.Fatalf("instance %s has no pid", inst.Name)
					}
					syscall.Kill(inst.PID, syscall.SIGKILL)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
			defer cancel()
			tc.fn(t, ctx, h)
		})
	}
}

func (h Harness) spec(name string) engine.CreateSpec {
	return engine.CreateSpec{ID: vm.NewID(), Name: name, Image: h.Image, CPUs: 1, MemoryMiB: h.MemoryMiB, Owner: h.Owner}
}

func (h Harness) create(t *testing.T, ctx context.Context, name string) engine.Instance {
	t.Helper()
	var steps []string
	inst, err := h.Engine.Create(ctx, h.spec(name), func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	if inst.State != vm.Running || inst.Name != name || inst.IP == "" || inst.MAC == "" || inst.Owner != h.Owner {
		t.Fatalf("created instance = %+v", inst)
	}
	if !slices.ContainsFunc(steps, func(s string) bool { return strings.HasPrefix(s, "boot") }) {
		t.Errorf("create progress = %v, want a boot step", steps)
	}
	t.Cleanup(func() { h.Engine.Destroy(context.Background(), inst.ID) })
	return inst
}

func (h Harness) noLeaks(t *testing.T, id string) {
	t.Helper()
	if h.Leaks == nil {
		return
	}
	if left := h.Leaks(t, id); len(left) > 0 {
		t.Errorf("instance %s left %v", id, left)
	}
}

func wantState(t *testing.T, ctx context.Context, e engine.Engine, id string, want vm.State) engine.Instance {
	t.Helper()
	inst, err := e.Get(ctx, id)
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	if inst.State != want {
		t.Fatalf("instance %s is %s, want %s", inst.Name, inst.State, want)
	}
	return inst
}

func wantClass(t *testing.T, what string, err error, class *errs.Class) {
	t.Helper()
	if !errors.Is(err, class) {
		t.Errorf("%s = %v, want %v", what, err, class)
	}
}

// ping checks that instance id's agent answers.
func ping(t *testing.T, ctx context.Context, e engine.Engine, id string) {
	t.Helper()
	cl, err := e.Agent(ctx, id)
	if err != nil {
		t.Fatalf("agent of %s: %v", id, err)
	}
	defer cl.Close()
	if _, err := cl.Ping(ctx); err != nil {
		t.Fatalf("ping agent of %s: %v", id, err)
	}
}

func validation(t *testing.T, ctx context.Context, h Harness) {
	e := h.Engine
	bad := h.spec("Bad_Name")
	_, err := e.Create(ctx, bad, nil)
	wantClass(t, "create with a bad name", err, errs.InvalidArgument)
	noImage := h.spec("web")
	noImage.Image = "nosuch"
	_, err = e.Create(ctx, noImage, nil)
	wantClass(t, "create from a missing image", err, errs.NotFound)
	tooBig := h.spec("web")
	tooBig.CPUs = 1000
	_, err = e.Create(ctx, tooBig, nil)
	wantClass(t, "create with 1000 cpus", err, errs.InvalidArgument)
	badID := h.spec("web")
	badID.ID = "../x"
	_, err = e.Create(ctx, badID, nil)
	wantClass(t, "create with a bad id", err, errs.InvalidArgument)
	_, err = e.Start(ctx, vm.NewID(), nil)
	wantClass(t, "start of a missing instance", err, errs.NotFound)
	_, err = e.Get(ctx, vm.NewID())
	wantClass(t, "get of a missing instance", err, errs.NotFound)
	if err := e.Destroy(ctx, vm.NewID()); err != nil {
		t.Errorf("destroy of a missing instance = %v, want nil (idempotent)", err)
	}
	list, err := e.List(ctx)
	if err != nil || len(list) != 0 {
		t.Errorf("after refused creates: list = %+v, %v", list, err)
	}
	for _, s := range []engine.CreateSpec{bad, noImage, tooBig} {
		h.noLeaks(t, s.ID)
	}
}

func lifecycle(t *testing.T, ctx context.Context, h Harness) {
	e := h.Engine
	a := h.create(t, ctx, "alpha")
	ping(t, ctx, e, a.ID)
	conn, err := e.DialAgent(ctx, a.ID)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	conn.Close()
	if _, err := e.Start(ctx, a.ID, nil); !errors.Is(err, errs.FailedPrecondition) {
		t.Errorf("start of a running instance = %v, want FailedPrecondition", err)
	}
	taken := h.spec("other")
	taken.ID = a.ID
	if _, err := e.Create(ctx, taken, nil); !errors.Is(err, errs.AlreadyExists) {
		t.Errorf("create with a taken id = %v, want AlreadyExists", err)
	}
	if got := wantState(t, ctx, e, a.ID, vm.Running); got.Name != "alpha" {
		t.Fatalf("a create with a taken id changed the instance: %+v", got)
	}

	// Stop, start, restart.
	if st, err := e.Stop(ctx, a.ID); err != nil || st.State != vm.Stopped || st.PID != 0 {
		t.Fatalf("stop = %+v, %v", st, err)
	}
	wantState(t, ctx, e, a.ID, vm.Stopped)
	if _, err := e.Agent(ctx, a.ID); !errors.Is(err, errs.FailedPrecondition) {
		t.Errorf("agent of a stopped instance = %v, want FailedPrecondition", err)
	}
	if st, err := e.Start(ctx, a.ID, nil); err != nil || st.State != vm.Running || st.IP != a.IP {
		t.Fatalf("start = %+v, %v (ip was %s)", st, err, a.IP)
	}
	ping(t, ctx, e, a.ID)
	if st, err := e.Restart(ctx, a.ID, nil); err != nil || st.State != vm.Running {
		t.Fatalf("restart = %+v, %v", st, err)
	}
	ping(t, ctx, e, a.ID)

	// Rename: the ID and address stay.
	if r, err := e.Rename(ctx, a.ID, "beta"); err != nil || r.Name != "beta" || r.ID != a.ID || r.IP != a.IP {
		t.Fatalf("rename = %+v, %v", r, err)
	}
	if got := wantState(t, ctx, e, a.ID, vm.Running); got.Name != "beta" {
		t.Fatalf("after rename: %+v", got)
	}
	_, err = e.Rename(ctx, a.ID, "Bad_Name")
	wantClass(t, "rename to a bad name", err, errs.InvalidArgument)

	// Resize: refused while running, applied when stopped.
	_, err = e.Resize(ctx, a.ID, engine.ResizeSpec{DiskGiB: a.DiskGiB + 1})
	wantClass(t, "resize of a running instance", err, errs.FailedPrecondition)
	if _, err := e.Stop(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.Resize(ctx, a.ID, engine.ResizeSpec{DiskGiB: a.DiskGiB - 1})
	if a.DiskGiB > 1 {
		wantClass(t, "shrinking the disk", err, errs.InvalidArgument)
	}
	want := engine.ResizeSpec{CPUs: 2, MemoryMiB: h.MemoryMiB + 128, DiskGiB: a.DiskGiB + 1}
	r, err := e.Resize(ctx, a.ID, want)
	if err != nil || r.CPUs != want.CPUs || r.MemoryMiB != want.MemoryMiB || r.DiskGiB != want.DiskGiB {
		t.Fatalf("resize to %+v = %+v, %v", want, r, err)
	}
	if st, err := e.Start(ctx, a.ID, nil); err != nil || st.CPUs != 2 || st.MemoryMiB != want.MemoryMiB {
		t.Fatalf("start after resize = %+v, %v", st, err)
	}
	ping(t, ctx, e, a.ID)

	// Destroy removes everything.
	if err := e.Destroy(ctx, a.ID); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if _, err := e.Get(ctx, a.ID); !errors.Is(err, errs.NotFound) {
		t.Errorf("get after destroy = %v, want NotFound", err)
	}
	h.noLeaks(t, a.ID)
	if err := e.Destroy(ctx, a.ID); err != nil {
		t.Errorf("second destroy = %v, want nil", err)
	}
}

func snapshots(t *testing.T, ctx context.Context, h Harness) {
	e := h.Engine
	a := h.create(t, ctx, "alpha")
	marker := "/root/enginetest-marker"
	write := func(s string) {
		t.Helper()
		cl, err := e.Agent(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if err := cl.WriteFile(ctx, marker, []byte(s), 0o644); err != nil {
			t.Fatalf("write marker: %v", err)
		}
	}
	read := func() string {
		t.Helper()
		cl, err := e.Agent(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		b, err := cl.ReadFile(ctx, marker)
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	write("one")

	// A disk snapshot of a running instance.
	var steps []string
	s1, err := e.Snapshot(ctx, a.ID, engine.SnapshotSpec{Name: "s1"}, func(s string) { steps = append(steps, s) })
	if err != nil || s1.Name != "s1" || s1.Memory || s1.SizeBytes <= 0 || s1.ID == "" {
		t.Fatalf("snapshot = %+v, %v", s1, err)
	}
	if !slices.Contains(steps, "copy disk") {
		t.Errorf("snapshot progress = %v", steps)
	}
	wantState(t, ctx, e, a.ID, vm.Running)
	ping(t, ctx, e, a.ID)
	_, err = e.Snapshot(ctx, a.ID, engine.SnapshotSpec{Name: "s1"}, nil)
	wantClass(t, "a second snapshot named s1", err, errs.AlreadyExists)
	_, err = e.Snapshot(ctx, a.ID, engine.SnapshotSpec{Name: "Bad Name"}, nil)
	wantClass(t, "a snapshot with a bad name", err, errs.InvalidArgument)

	write("two")
	if got, err := e.RestoreSnapshot(ctx, a.ID, "s1", nil); err != nil || got.State != vm.Running {
		t.Fatalf("restore s1 = %+v, %v", got, err)
	}
	ping(t, ctx, e, a.ID)
	if h.RealGuest {
		if got := read(); got != "one" {
			t.Errorf("after restoring s1 the marker is %q, want %q", got, "one")
		}
	}
	_, err = e.RestoreSnapshot(ctx, a.ID, "nosuch", nil)
	wantClass(t, "restore of a missing snapshot", err, errs.NotFound)

	// A memory snapshot where the host can.
	c, err := e.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.MemorySnapshot {
		write("three")
		m1, err := e.Snapshot(ctx, a.ID, engine.SnapshotSpec{Name: "m1", Memory: true}, nil)
		if err != nil || !m1.Memory {
			t.Fatalf("memory snapshot = %+v, %v", m1, err)
		}
		if _, err := e.Stop(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		if got, err := e.RestoreSnapshot(ctx, a.ID, "m1", nil); err != nil || got.State != vm.Running {
			t.Fatalf("restore m1 on a stopped instance = %+v, %v", got, err)
		}
		ping(t, ctx, e, a.ID)
		if h.RealGuest {
			if got := read(); got != "three" {
				t.Errorf("after restoring m1 the marker is %q, want %q", got, "three")
			}
		}
	} else {
		_, err := e.Snapshot(ctx, a.ID, engine.SnapshotSpec{Name: "m1", Memory: true}, nil)
		wantClass(t, "a memory snapshot without the capability", err, errs.FailedPrecondition)
	}

	// Copies: of the running instance, and of a snapshot.
	cp := h.spec("copy")
	cp.CopyFrom = &engine.CopySource{ID: a.ID}
	b, err := e.Create(ctx, cp, nil)
	if err != nil {
		t.Fatalf("copy: %v", err)
	}
	t.Cleanup(func() { e.Destroy(context.Background(), b.ID) })
	if b.ID == a.ID || b.IP == a.IP || b.MAC == a.MAC || b.State != vm.Running || b.Image != a.Image || b.DiskGiB != a.DiskGiB {
		t.Fatalf("copy = %+v of %+v", b, a)
	}
	ping(t, ctx, e, b.ID)
	wantState(t, ctx, e, a.ID, vm.Running)
	cs := h.spec("copy2")
	cs.CopyFrom = &engine.CopySource{ID: a.ID, Snapshot: "s1"}
	b2, err := e.Create(ctx, cs, nil)
	if err != nil {
		t.Fatalf("copy from snapshot: %v", err)
	}
	t.Cleanup(func() { e.Destroy(context.Background(), b2.ID) })
	ping(t, ctx, e, b2.ID)
	if h.RealGuest {
		cl, err := e.Agent(ctx, b2.ID)
		if err != nil {
			t.Fatal(err)
		}
		got, err := cl.ReadFile(ctx, marker)
		cl.Close()
		if err != nil || string(got) != "one" {
			t.Errorf("a copy of s1 holds marker %q, %v; want %q", got, err, "one")
		}
	}

	list, err := e.Snapshots(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list {
		names = append(names, s.Name)
	}
	if want := map[bool]string{true: "s1 m1", false: "s1"}[c.MemorySnapshot]; strings.Join(names, " ") != want {
		t.Errorf("snapshots = %v, want %s", names, want)
	}
	if err := e.DeleteSnapshot(ctx, a.ID, "s1"); err != nil {
		t.Fatalf("delete snapshot: %v", err)
	}
	wantClass(t, "delete of a deleted snapshot", e.DeleteSnapshot(ctx, a.ID, "s1"), errs.NotFound)
	for _, id := range []string{b.ID, b2.ID, a.ID} {
		if err := e.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
		h.noLeaks(t, id)
	}
}

func failedCreate(t *testing.T, ctx context.Context, h Harness) {
	e := h.Engine
	before, err := e.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A copy of a snapshot that does not exist fails after the instance
	// was allocated and its directory made: all of it must go.
	src := h.create(t, ctx, "src")
	mid, err := e.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spec := h.spec("broken")
	spec.CopyFrom = &engine.CopySource{ID: src.ID, Snapshot: "nosuch"}
	var steps []string
	_, err = e.Create(ctx, spec, func(s string) { steps = append(steps, s) })
	wantClass(t, "copy of a missing snapshot", err, errs.NotFound)
	if !slices.Contains(steps, "allocate") {
		t.Errorf("the failed copy never allocated (steps %v): it proves nothing", steps)
	}
	if _, err := e.Get(ctx, spec.ID); !errors.Is(err, errs.NotFound) {
		t.Errorf("after a failed create: get = %v, want NotFound", err)
	}
	h.noLeaks(t, spec.ID)
	after, err := e.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.AllocatedMemoryMiB != mid.AllocatedMemoryMiB || after.Instances != mid.Instances {
		t.Errorf("after a failed create: capacity %+v, before it %+v", after, mid)
	}
	// The source is untouched.
	wantState(t, ctx, e, src.ID, vm.Running)
	ping(t, ctx, e, src.ID)
	if err := e.Destroy(ctx, src.ID); err != nil {
		t.Fatal(err)
	}
	end, err := e.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if end.AllocatedMemoryMiB != before.AllocatedMemoryMiB || end.Instances != before.Instances {
		t.Errorf("after destroying everything: capacity %+v, at the start %+v", end, before)
	}
}

func lostProcess(t *testing.T, ctx context.Context, h Harness) {
	e := h.Engine
	var mu sync.Mutex
	var exits []engine.Exit
	e.OnExit(func(_ context.Context, x engine.Exit) {
		mu.Lock()
		defer mu.Unlock()
		exits = append(exits, x)
	})
	defer e.OnExit(nil)
	a := h.create(t, ctx, "alpha")
	h.Kill(t, a)
	// Wait until the process is really gone, then reconcile.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := e.Reconcile(ctx); err != nil {
			t.Fatalf("reconcile: %v", err)
		}
		inst, err := e.Get(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if inst.State == vm.Stopped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a killed instance is still %s after reconcile", inst.State)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := append([]engine.Exit(nil), exits...)
	mu.Unlock()
	if len(got) != 1 || got[0].ID != a.ID || got[0].Reason != engine.ExitCrashed || got[0].Owner != h.Owner {
		t.Errorf("exits reported = %+v, want one crash of %s", got, a.ID)
	}
	// It starts again, with the same address.
	if st, err := e.Start(ctx, a.ID, nil); err != nil || st.State != vm.Running || st.IP != a.IP {
		t.Fatalf("start after the crash = %+v, %v", st, err)
	}
	ping(t, ctx, e, a.ID)
	if err := e.Destroy(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	h.noLeaks(t, a.ID)
}
