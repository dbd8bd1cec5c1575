package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake/fakeagent"
)

// TestMoveLiveRefusals: a live move that cannot happen is refused with a
// clear error before anything changes (no move record, the VM running
// where it was): bob cannot learn of alice's VM; a stopped VM moves only
// cold; engines whose driver cannot migrate (the fake hypervisor, like
// Cloud Hypervisor) say so, the control plane's own host's as the source
// or the target too.
func TestMoveLiveRefusals(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	th.addNode(t, "node-c", "10.0.0.3")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, name := range []string{"oncp", "onb"} {
		host := map[string]string{"oncp": "cp", "onb": "node-b"}[name]
		if _, err := svc.Create(ctx, th.alice, CreateRequest{Name: name, Image: "minimal", Host: host, MemoryMiB: 256}, nil); err != nil {
			t.Fatal(err)
		}
	}
	live := func(who Caller, name, host string) error {
		_, err := svc.Move(ctx, who, name, MoveRequest{Host: host, Mode: store.MoveLive}, nil)
		return err
	}
	for _, tc := range []struct {
		who        Caller
		name, host string
		class      *errs.Class
		says       string
	}{
		{th.bob, "onb", "node-c", errs.NotFound, ""},
		{th.bob, "oncp", "node-b", errs.NotFound, ""},
		{th.alice, "oncp", "node-b", errs.FailedPrecondition, "live move is not supported by the fake hypervisor driver"},
		{th.alice, "onb", "cp", errs.FailedPrecondition, "live move is not supported by the fake hypervisor driver"},
		{th.alice, "onb", "node-c", errs.FailedPrecondition, "live move is not supported by the fake hypervisor driver"},
	} {
		err := live(tc.who, tc.name, tc.host)
		if errs.ClassOf(err) != tc.class || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("move %s --host %s --live: %v, want %v saying %q", tc.name, tc.host, err, tc.class, tc.says)
		}
	}
	if _, err := svc.Stop(ctx, th.alice, "onb"); err != nil {
		t.Fatal(err)
	}
	if err := live(th.alice, "onb", "node-c"); errs.ClassOf(err) != errs.FailedPrecondition || !strings.Contains(err.Error(), "only a running vm") {
		t.Errorf("live move of a stopped vm: %v", err)
	}
	if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
		t.Errorf("move records after refusals: %+v", moves)
	}
	for name, host := range map[string]string{"oncp": "cp", "onb": "node-b"} {
		if g, err := svc.Get(ctx, th.alice, name); err != nil || g.Host != host {
			t.Errorf("%s after the refusals: %+v %v, want on %s", name, g, err, host)
		}
	}
}

// liveAgentDriver is the fake hypervisor with its guest agent and a
// pretend live migration: an incoming VM drains its two channels.
type liveAgentDriver struct {
	*fakeagent.AgentDriver
	// endless: MigrateOut sends until a channel breaks (a migration that
	// does not end by itself); migrating hears its first bytes sent.
	endless   bool
	migrating chan struct{}
	mu        sync.Mutex
	lns       map[string][]net.Listener     // by run dir
	runs      map[string]*hypervisor.Handle // by run dir
}

func (d *liveAgentDriver) Start(ctx context.Context, spec hypervisor.Spec) (*hypervisor.Handle, error) {
	h, err := d.AgentDriver.Start(ctx, spec)
	if err == nil {
		d.mu.Lock()
		d.runs[h.RunDir] = h
		d.mu.Unlock()
	}
	return h, err
}

// ForgetRunDir stands for the engine's kill by run dir (the pid files a
// QEMU leaves there) when no record holds the handle: it kills the fake
// VM started with that run dir.
func (d *liveAgentDriver) ForgetRunDir(dir string) {
	d.mu.Lock()
	h := d.runs[dir]
	d.mu.Unlock()
	if h != nil {
		d.Kill(context.Background(), h)
	}
}

func liveNode(t *testing.T, m *machine) {
	t.Helper()
	l, ok := m.svc.Engine.(*engine.Local)
	if !ok {
		t.Fatalf("engine %T", m.svc.Engine)
	}
	l.Driver = &liveAgentDriver{AgentDriver: m.drv, lns: map[string][]net.Listener{}, runs: map[string]*hypervisor.Handle{}}
}

func (d *liveAgentDriver) DescribeOut(h *hypervisor.Handle) ([]byte, error) {
	return []byte(`{"id":"fake"}`), nil
}

func (d *liveAgentDriver) StartIncoming(ctx context.Context, spec hypervisor.Spec, src []byte) (*hypervisor.Handle, error) {
	h, err := d.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	for _, ch := range []string{hypervisor.ChannelNBD, hypervisor.ChannelMigration} {
		p, _ := d.IncomingSocket(h, ch)
		ln, err := net.Listen("unix", p)
		if err != nil {
			d.Kill(ctx, h)
			return nil, err
		}
		d.mu.Lock()
		d.lns[h.RunDir] = append(d.lns[h.RunDir], ln)
		d.mu.Unlock()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(io.Discard, c); c.Close() }()
			}
		}()
	}
	return h, nil
}

func (d *liveAgentDriver) IncomingSocket(h *hypervisor.Handle, ch string) (string, error) {
	return filepath.Join(h.RunDir, "live-"+ch+".sock"), nil
}

func (d *liveAgentDriver) MigrateOut(ctx context.Context, h *hypervisor.Handle, nbd, mig io.ReadWriteCloser, progress func(string)) (hypervisor.MigrationStats, error) {
	defer nbd.Close()
	defer mig.Close()
	progress("mirror disk")
	if d.endless {
		buf := make([]byte, 64<<10)
		for i := 0; ; i++ {
			if _, err := nbd.Write(buf); err != nil {
				return hypervisor.MigrationStats{}, fmt.Errorf("mirror: %w", err)
			}
			if i == 0 && d.migrating != nil {
				close(d.migrating)
			}
			if err := ctx.Err(); err != nil {
				return hypervisor.MigrationStats{}, err
			}
		}
	}
	// As QEMU: the source ends paused.
	if err := d.Pause(ctx, h); err != nil {
		return hypervisor.MigrationStats{}, err
	}
	buf := make([]byte, 256<<10)
	for _, c := range []io.Writer{nbd, mig} {
		if _, err := c.Write(buf); err != nil {
			return hypervisor.MigrationStats{}, err
		}
	}
	return hypervisor.MigrationStats{Downtime: 5 * time.Millisecond, RAMBytes: int64(len(buf))}, nil
}

func (d *liveAgentDriver) FinishIncoming(ctx context.Context, h *hypervisor.Handle) error { return nil }

func (d *liveAgentDriver) Kill(ctx context.Context, h *hypervisor.Handle) error {
	d.mu.Lock()
	for _, ln := range d.lns[h.RunDir] {
		ln.Close()
	}
	delete(d.lns, h.RunDir)
	if d.runs[h.RunDir] == h {
		delete(d.runs, h.RunDir)
	}
	d.mu.Unlock()
	return d.AgentDriver.Kill(ctx, h)
}

// TestMoveLiveCrashSettles moves a VM live between two nodes (node-b,
// node-c) whose drivers pretend to migrate, over the fabric: the VM ends
// on the target, running, with the move's figures, and nothing on the
// source. Then it "kills" the control plane at each step of a live move
// and settles it as a restart would: exactly one copy is left, running,
// where the switch says (before it: the source; after it: the target),
// with no move record.
func TestMoveLiveCrashSettles(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	c := th.addNode(t, "node-c", "10.0.0.3")
	liveNode(t, th.node)
	liveNode(t, c)
	machines := map[string]*machine{"node-b": th.node, "node-c": c}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	only := func(t *testing.T, id, name, host string) {
		t.Helper()
		g, err := svc.Get(ctx, th.alice, name)
		if err != nil || g.Host != host || g.Status != "running" {
			t.Fatalf("%s: %+v, %v; want running on %s", name, g, err, host)
		}
		for h, m := range machines {
			inst, err := m.svc.Engine.Get(ctx, id)
			switch {
			case h == host && (err != nil || inst.State != "running"):
				t.Errorf("on %s: %+v, %v; want running", h, inst, err)
			case h == host:
				row, _ := store.GetVMByID(ctx, m.svc.DB, id)
				hd, _ := engine.DecodeHandle(row.Handle)
				if info, err := m.drv.Info(ctx, hd); err != nil || info.State != hypervisor.StateRunning {
					t.Errorf("on %s: the hypervisor is %+v %v, want running (not paused)", h, info, err)
				}
			case h != host && errs.ClassOf(err) != errs.NotFound:
				t.Errorf("a second copy on %s: %+v %v", h, inst, err)
			}
		}
		if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
			t.Errorf("move records left: %+v", moves)
		}
	}

	v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "flyer", Image: "minimal", Host: "node-b", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	got, err := svc.Move(ctx, th.alice, "flyer", MoveRequest{Host: "node-c", Mode: store.MoveLive}, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	if got.Move == nil || got.Move.Mode != store.MoveLive || got.Move.DowntimeMS != 5 || got.Host != "node-c" || len(got.Warnings) == 0 {
		t.Errorf("move --live answered %+v (move %+v)", got, got.Move)
	}
	for _, want := range []string{"prepare", "migrate", "trust the target", "mirror disk", "switch", "cleanup"} {
		if !slices.Contains(steps, want) {
			t.Errorf("progress %q lacks %q", steps, want)
		}
	}
	only(t, v.ID, "flyer", "node-c")

	for _, step := range []string{"transfer", "switch", "cleanup"} {
		t.Run(step, func(t *testing.T) {
			name := "crash-" + step
			v, err := svc.Create(ctx, th.alice, CreateRequest{Name: name, Image: "minimal", Host: "node-b", MemoryMiB: 256}, nil)
			if err != nil {
				t.Fatal(err)
			}
			svc.moving.crash = func(s string) bool { return s == step }
			if _, err := svc.Move(ctx, th.alice, name, MoveRequest{Host: "node-c", Mode: store.MoveLive}, nil); !errors.Is(err, errMoveCrashed) {
				t.Fatalf("move: %v, want the crash", err)
			}
			svc.moving.crash = nil
			if _, err := svc.Restart(ctx, th.alice, name, nil); errs.ClassOf(err) != errs.FailedPrecondition {
				t.Errorf("restart of an interrupted move: %v", err)
			}
			if err := svc.SettleMoves(ctx); err != nil {
				t.Fatalf("settle: %v", err)
			}
			if err := svc.SettleMoves(ctx); err != nil {
				t.Fatalf("settle again: %v", err)
			}
			want := "node-b"
			if step == "cleanup" {
				want = "node-c"
			}
			only(t, v.ID, name, want)
		})
	}
}

// TestMoveLiveControlPlaneHost moves a VM live from a node to the control
// plane's own host (whose engine shares the control plane's store: its
// copy is staged and adopted at the switch) and back, over the fabric,
// with drivers that pretend to migrate: each time it ends running on the
// target with one copy, no move record, an address of the target's, the
// source's copy gone. Then it "kills" the control plane at each step of
// both directions and settles as a restart would: before the switch the
// source runs on, after it the target, exactly one copy, no record.
func TestMoveLiveControlPlaneHost(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	liveNode(t, th.cp)
	liveNode(t, th.node)
	shareAgentHostKey(t, th.cp, th.node) // one guest agent moving between them
	machines := map[string]*machine{"cp": th.cp, "node-b": th.node}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	only := func(t *testing.T, id, name, host string) {
		t.Helper()
		g, err := svc.Get(ctx, th.alice, name)
		if err != nil || g.Host != host || g.Status != "running" {
			t.Fatalf("%s: %+v, %v; want running on %s", name, g, err, host)
		}
		for h, m := range machines {
			inst, err := m.svc.Engine.Get(ctx, id)
			switch {
			case h == host && (err != nil || inst.State != "running"):
				t.Errorf("on %s: %+v, %v; want running", h, inst, err)
			case h == host:
				row, _ := store.GetVMByID(ctx, m.svc.DB, id)
				hd, _ := engine.DecodeHandle(row.Handle)
				if info, err := m.drv.Info(ctx, hd); err != nil || info.State != hypervisor.StateRunning {
					t.Errorf("on %s: the hypervisor is %+v %v, want running (not paused)", h, info, err)
				}
			case h != host && errs.ClassOf(err) != errs.NotFound:
				t.Errorf("a second copy on %s: %+v %v", h, inst, err)
			}
		}
		if n := th.cp.drv.Running() + th.node.drv.Running(); n != 1 {
			t.Errorf("%d hypervisors running across both hosts, want 1", n)
		}
		if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
			t.Errorf("move records left: %+v", moves)
		}
	}

	v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "boomer", Image: "minimal", Host: "node-b", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"cp", "node-b"} {
		got, err := svc.Move(ctx, th.alice, "boomer", MoveRequest{Host: to, Mode: store.MoveLive}, nil)
		if err != nil {
			t.Fatalf("move --live to %s: %v", to, err)
		}
		if got.Move == nil || got.Move.Mode != store.MoveLive || got.Host != to {
			t.Errorf("move --live to %s answered %+v (move %+v)", to, got, got.Move)
		}
		// The guest's eth0 moved through its agent's network hook to the
		// new address (never by a command run in the guest, which the
		// in-process agent would run on this machine).
		row, _ := store.GetVMByID(ctx, machines[to].svc.DB, v.ID)
		if moved := guestNets.last(); !strings.HasPrefix(moved, row.MAC+" "+got.IP+"/") {
			t.Errorf("move --live to %s: the guest agent's last network move is %q, want %s %s/..", to, moved, row.MAC, got.IP)
		}
		only(t, v.ID, "boomer", to)
	}
	if err := svc.Destroy(ctx, th.alice, "boomer"); err != nil {
		t.Fatal(err)
	}

	for _, dir := range []struct{ from, to string }{{"node-b", "cp"}, {"cp", "node-b"}} {
		for _, step := range []string{"transfer", "switch", "cleanup"} {
			t.Run(dir.from+"-to-"+dir.to+"/"+step, func(t *testing.T) {
				name := "c-" + dir.to + "-" + step
				v, err := svc.Create(ctx, th.alice, CreateRequest{Name: name, Image: "minimal", Host: dir.from, MemoryMiB: 256}, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer svc.Destroy(ctx, th.alice, name)
				svc.moving.crash = func(s string) bool { return s == step }
				if _, err := svc.Move(ctx, th.alice, name, MoveRequest{Host: dir.to, Mode: store.MoveLive}, nil); !errors.Is(err, errMoveCrashed) {
					t.Fatalf("move: %v, want the crash", err)
				}
				svc.moving.crash = nil
				if err := svc.SettleMoves(ctx); err != nil {
					t.Fatalf("settle: %v", err)
				}
				if err := svc.SettleMoves(ctx); err != nil {
					t.Fatalf("settle again: %v", err)
				}
				want := dir.from
				if step == "cleanup" {
					want = dir.to
				}
				only(t, v.ID, name, want)
			})
		}
	}
}

// TestMoveLiveTargetGone: the target's copy disappears mid-migration (its
// node agent restarted and removed the half-made copy, as e2e
// TestMultiHostMoveCrash live/mirrored/dst does), while the streams the
// control plane relays to it stay open but nobody reads them: the move
// fails soon (the control plane closes the target's channels once the
// target no longer has the copy), the VM runs on at its source, no record
// is left. Before, the migration waited on those streams for ever.
func TestMoveLiveTargetGone(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	c := th.addNode(t, "node-c", "10.0.0.3")
	liveNode(t, th.node)
	liveNode(t, c)
	src := th.node.svc.Engine.(*engine.Local).Driver.(*liveAgentDriver)
	src.endless, src.migrating = true, make(chan struct{})
	defer func(d time.Duration) { incomingWatch = d }(incomingWatch)
	incomingWatch = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "stray", Image: "minimal", Host: "node-b", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		<-src.migrating
		// node-c's agent restarted: its engine removed the copy.
		c.svc.Engine.(*engine.Local).AbortIncoming(context.Background(), v.ID)
	}()
	mctx, mcancel := context.WithTimeout(ctx, 20*time.Second)
	defer mcancel()
	t0 := time.Now()
	if _, err := svc.Move(mctx, th.alice, "stray", MoveRequest{Host: "node-c", Mode: store.MoveLive}, nil); err == nil || mctx.Err() != nil {
		t.Fatalf("move with the target gone: %v after %s, want a failure within 20 s", err, time.Since(t0).Round(time.Millisecond))
	}
	t.Logf("the move failed %s after it began", time.Since(t0).Round(time.Millisecond))
	g, err := svc.Get(ctx, th.alice, "stray")
	if err != nil || g.Host != "node-b" || g.Status != "running" {
		t.Fatalf("after the failed move: %+v, %v; want running on node-b", g, err)
	}
	if _, err := c.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("a copy on node-c: %v", err)
	}
	if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
		t.Errorf("move records left: %+v", moves)
	}
}
