package service

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

// ops counts driver operations of kind op recorded by m's fake hypervisor.
func ops(m *machine, op fake.Op) int {
	n := 0
	for _, c := range m.drv.Calls() {
		if c.Op == op && c.Err == nil {
			n++
		}
	}
	return n
}

// oneGuest makes node-b's VMs answer with the control plane host's guest
// agent: a VM moved with its memory is the same guest on both hosts (its
// agent key, and the host keys it trusts, go with it).
func oneGuest(th *twoHosts) { th.node.drv.SetServer(th.cp.drv.Server()) }

func keyLine(k ssh.Signer) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.PublicKey())))
}

func steps(got []string, want ...string) error {
	all := "," + strings.Join(got, ",") + ","
	for _, s := range want {
		if !strings.Contains(all, ","+s+",") {
			return errors.New("no step " + s + " in " + all)
		}
	}
	return nil
}

// TestMoveMemoryToAnotherHost moves a running VM with its memory from the
// control plane's host to a second host over NATS: it resumes there from
// its saved memory (a restore, not a boot), with an address of that host,
// its snapshot with its name and time, the same agent key; the source has
// nothing left. A failed import resumes the source from its memory and
// leaves nothing on the target; another user cannot move it; a move onto
// the control plane's own host with memory is refused.
func TestMoveMemoryToAnotherHost(t *testing.T) {
	th := newTwoHosts(t)
	oneGuest(th)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "warm", Image: "minimal", Host: "cp", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := svc.CreateSnapshot(ctx, th.alice, "warm", SnapshotRequest{Name: "s1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := store.GetVMByID(ctx, svc.DB, v.ID)

	if _, err := svc.Move(ctx, th.bob, "warm", MoveRequest{Host: "node-b", Mode: "memory"}, nil); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("bob moves alice's vm: %v", err)
	}

	// A failing import on the target: the source resumes from its memory.
	th.heartbeat(t)
	restores := ops(th.cp, fake.OpRestore)
	block := filepath.Join(th.node.dir, "state", "vms", v.ID)
	os.MkdirAll(filepath.Dir(block), 0o700)
	os.WriteFile(block, []byte("in the way"), 0o600)
	if _, err := svc.Move(ctx, th.alice, "warm", MoveRequest{Host: "node-b", Mode: "memory"}, nil); err == nil {
		t.Fatal("move with a failing import succeeded")
	}
	os.Remove(block)
	g, err := svc.Get(ctx, th.alice, "warm")
	if err != nil || g.Host != "cp" || g.Status != "running" || g.Note != "" {
		t.Fatalf("after a failed move: %+v, %v", g, err)
	}
	if ops(th.cp, fake.OpRestore) != restores+1 {
		t.Errorf("the source was not resumed from its memory (%d restores, had %d)", ops(th.cp, fake.OpRestore), restores)
	}
	if _, err := th.node.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("the target kept a copy: %v", err)
	}
	if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
		t.Fatalf("move records left: %+v", moves)
	}

	// The move.
	th.heartbeat(t)
	var got []string
	starts, restores := ops(th.node, fake.OpStart), ops(th.node, fake.OpRestore)
	m, err := svc.Move(ctx, th.alice, "warm", MoveRequest{Host: "node-b", Mode: "memory"}, func(s string) { got = append(got, s) })
	if err != nil {
		t.Fatalf("move: %v (steps %v)", err, got)
	}
	t.Logf("move --memory cp -> node-b: %+v, steps %v", *m.Move, got)
	if m.ID != v.ID || m.Host != "node-b" || m.Status != "running" || m.Owner != "alice" || m.Move == nil || m.Move.Mode != "memory" {
		t.Fatalf("moved %+v", m)
	}
	if err := steps(got, "prepare", "suspend", "transfer", "snapshots", "restore memory", "agent", "move network", "switch", "cleanup"); err != nil {
		t.Error(err)
	}
	if ops(th.node, fake.OpStart) != starts || ops(th.node, fake.OpRestore) != restores+1 {
		t.Errorf("the target booted (%d starts) instead of resuming from memory (%d restores)", ops(th.node, fake.OpStart)-starts, ops(th.node, fake.OpRestore)-restores)
	}
	inst, err := th.node.svc.Engine.Get(ctx, v.ID)
	if err != nil || inst.State != vm.Running || inst.IP != m.IP {
		t.Fatalf("on node-b: %+v, %v (result %s)", inst, err, m.IP)
	}
	nodeRow, _ := store.GetVMByID(ctx, th.node.svc.DB, v.ID)
	if nodeRow.AgentKey != before.AgentKey || nodeRow.AgentKey == "" {
		t.Errorf("agent key %q, want the source's %q", nodeRow.AgentKey, before.AgentKey)
	}
	snaps, err := svc.ListSnapshots(ctx, th.alice, "warm")
	if err != nil || len(snaps) != 1 || snaps[0].Name != "s1" || snaps[0].CreatedAt.Sub(snap.CreatedAt).Abs() >= time.Millisecond {
		t.Fatalf("snapshots on node-b: %+v, %v (had %+v)", snaps, err, snap)
	}
	if _, err := th.cp.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("cp's engine still has a copy: %v", err)
	}
	if _, err := os.Stat(filepath.Join(th.cp.dir, "state", "vms", v.ID)); !os.IsNotExist(err) {
		t.Errorf("files left on cp: %v", err)
	}
	if cpSnaps, _ := store.ListSnapshots(ctx, svc.DB, v.ID); len(cpSnaps) != 0 {
		t.Errorf("snapshot rows left on cp: %+v", cpSnaps)
	}
	if out := execOut(t, svc, th.alice, "warm", "echo hi"); strings.TrimSpace(out) != "hi" {
		t.Errorf("exec after the move: %q", out)
	}
	// A moved snapshot restores on the target.
	if _, err := svc.RestoreSnapshot(ctx, th.alice, "warm", "s1", nil); err != nil {
		t.Fatalf("restore the moved snapshot: %v", err)
	}
	// Back onto the control plane's own host (staged, adopted, resumed
	// after the switch).
	th.heartbeat(t)
	got = nil
	starts, restores = ops(th.cp, fake.OpStart), ops(th.cp, fake.OpRestore)
	m, err = svc.Move(ctx, th.alice, "warm", MoveRequest{Host: "cp", Mode: "memory"}, func(s string) { got = append(got, s) })
	if err != nil {
		t.Fatalf("move --memory onto cp: %v (steps %v)", err, got)
	}
	t.Logf("move --memory node-b -> cp: %+v, steps %v", *m.Move, got)
	if m.Host != "cp" || m.Status != "running" || m.Move.DowntimeMS <= 0 {
		t.Fatalf("moved back %+v", m)
	}
	if err := steps(got, "suspend", "transfer", "switch", "resume", "restore memory", "move network", "cleanup"); err != nil {
		t.Error(err)
	}
	if ops(th.cp, fake.OpStart) != starts || ops(th.cp, fake.OpRestore) != restores+1 {
		t.Errorf("cp booted (%d starts) instead of resuming from memory (%d restores)", ops(th.cp, fake.OpStart)-starts, ops(th.cp, fake.OpRestore)-restores)
	}
	if inst, err := th.cp.svc.Engine.Get(ctx, v.ID); err != nil || inst.State != vm.Running || inst.IP != m.IP {
		t.Fatalf("on cp: %+v, %v", inst, err)
	}
	if _, err := th.node.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("node-b kept a copy: %v", err)
	}
	if snaps, err := svc.ListSnapshots(ctx, th.alice, "warm"); err != nil || len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Errorf("snapshots on cp: %+v, %v", snaps, err)
	}
	if out := execOut(t, svc, th.alice, "warm", "echo back"); strings.TrimSpace(out) != "back" {
		t.Errorf("exec after the move back: %q", out)
	}
	if _, err := os.Stat(filepath.Join(th.cp.dir, "state", "vms", v.ID, "move-state")); !os.IsNotExist(err) {
		t.Errorf("the saved state is kept on cp: %v", err)
	}
}

// TestMoveWithSnapshotsCold moves a stopped VM with a snapshot cold: the
// snapshot comes along and restores there. A stopped VM asked to move with
// memory moves cold.
func TestMoveWithSnapshotsCold(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "snappy", Image: "minimal", Host: "cp", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Stop(ctx, th.alice, "snappy"); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateSnapshot(ctx, th.alice, "snappy", SnapshotRequest{Name: "s1"}, nil); err != nil {
		t.Fatal(err)
	}
	th.heartbeat(t)
	m, err := svc.Move(ctx, th.alice, "snappy", MoveRequest{Host: "node-b", Mode: "memory"}, nil)
	if err != nil {
		t.Fatalf("move: %v", err)
	}
	if m.Host != "node-b" || m.Status != "stopped" || m.Move == nil || m.Move.Mode != "cold" {
		t.Fatalf("moved %+v", m)
	}
	snaps, err := svc.ListSnapshots(ctx, th.alice, "snappy")
	if err != nil || len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Fatalf("snapshots on node-b: %+v, %v", snaps, err)
	}
	if _, err := svc.RestoreSnapshot(ctx, th.alice, "snappy", "s1", nil); err != nil {
		t.Fatalf("restore the moved snapshot: %v", err)
	}
	if _, err := os.Stat(filepath.Join(th.cp.dir, "state", "vms", v.ID)); !os.IsNotExist(err) {
		t.Errorf("files left on cp: %v", err)
	}
	// Back onto the control plane's own host, its snapshot with it.
	th.heartbeat(t)
	if m, err := svc.Move(ctx, th.alice, "snappy", MoveRequest{Host: "cp"}, nil); err != nil || m.Host != "cp" || m.Status != "stopped" {
		t.Fatalf("move with snapshots onto cp: %+v, %v", m, err)
	}
	if snaps, err := svc.ListSnapshots(ctx, th.alice, "snappy"); err != nil || len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Fatalf("snapshots on cp: %+v, %v", snaps, err)
	}
	if _, err := svc.RestoreSnapshot(ctx, th.alice, "snappy", "s1", nil); err != nil {
		t.Fatalf("restore the snapshot moved back: %v", err)
	}
	if _, err := svc.Start(ctx, th.alice, "snappy", nil); err != nil {
		t.Fatalf("start on cp: %v", err)
	}
	if _, err := os.Stat(filepath.Join(th.node.dir, "state", "vms", v.ID)); !os.IsNotExist(err) {
		t.Errorf("files left on node-b: %v", err)
	}
}

// TestMoveMemoryCrashSettles "kills" the control plane at each step of a
// move with memory and settles it as a restart would: exactly one copy is
// left, running, where the switch says; before the switch the source is
// resumed from its memory (a restore, not a boot).
func TestMoveMemoryCrashSettles(t *testing.T) {
	for _, step := range []string{"transfer", "switch", "cleanup"} {
		t.Run(step, func(t *testing.T) {
			th := newTwoHosts(t)
			oneGuest(th)
			svc := th.cp.svc
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "crashy", Image: "minimal", Host: "cp", MemoryMiB: 256}, nil)
			if err != nil {
				t.Fatal(err)
			}
			svc.moving.crash = func(s string) bool { return s == step }
			if _, err := svc.Move(ctx, th.alice, "crashy", MoveRequest{Host: "node-b", Mode: "memory"}, nil); !errors.Is(err, errMoveCrashed) {
				t.Fatalf("move: %v, want the crash", err)
			}
			svc.moving.crash = nil
			if _, err := svc.Restart(ctx, th.alice, "crashy", nil); errs.ClassOf(err) != errs.FailedPrecondition {
				t.Errorf("restart of an interrupted move: %v", err)
			}
			if step == "switch" {
				// The target's copy runs and told the agent to trust only
				// node-b. A real source resumes with its own saved agent,
				// which trusts both hosts; the in-process agent is one for
				// both copies, so put that trust back as the saved one has.
				cl, err := th.node.svc.Engine.Agent(ctx, v.ID)
				if err != nil {
					t.Fatal(err)
				}
				err = cl.Configure(ctx, proto.Configure{HostKeys: []string{keyLine(th.cp.key), keyLine(th.node.key)}})
				cl.Close()
				if err != nil {
					t.Fatal(err)
				}
			}
			starts, restores := ops(th.cp, fake.OpStart), ops(th.cp, fake.OpRestore)
			if err := svc.SettleMoves(ctx); err != nil {
				t.Fatalf("settle: %v", err)
			}
			if err := svc.SettleMoves(ctx); err != nil {
				t.Fatalf("settle again: %v", err)
			}
			wantHost, on, off := "cp", th.cp, th.node
			if step == "cleanup" {
				wantHost, on, off = "node-b", th.node, th.cp
			} else if ops(th.cp, fake.OpStart) != starts || ops(th.cp, fake.OpRestore) != restores+1 {
				t.Errorf("the source was not resumed from its memory: %d boots, %d restores", ops(th.cp, fake.OpStart)-starts, ops(th.cp, fake.OpRestore)-restores)
			}
			g, err := svc.Get(ctx, th.alice, "crashy")
			if err != nil || g.Host != wantHost || g.Status != "running" {
				t.Fatalf("after settling: %+v, %v; want running on %s", g, err, wantHost)
			}
			if inst, err := on.svc.Engine.Get(ctx, v.ID); err != nil || inst.State != vm.Running {
				t.Errorf("on %s: %+v, %v", wantHost, inst, err)
			}
			if _, err := off.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
				t.Errorf("a second copy is left: %v", err)
			}
			if _, err := os.Stat(filepath.Join(off.dir, "state", "vms", v.ID)); !os.IsNotExist(err) {
				t.Errorf("files of a second copy are left: %v", err)
			}
			if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
				t.Errorf("move records left: %+v", moves)
			}
			if _, err := svc.Stop(ctx, th.alice, "crashy"); err != nil {
				t.Errorf("stop after settling: %v", err)
			}
		})
	}
}

// TestDrainMovesWithMemoryByDefault drains the control plane's host with
// no mode asked: its running VM moves with its memory (resumed on node-b,
// not booted), its stopped VM moves cold; the result says so. An unknown
// mode is refused and changes nothing.
func TestDrainMovesWithMemoryByDefault(t *testing.T) {
	th := newTwoHosts(t)
	oneGuest(th)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, name := range []string{"runs", "rests"} {
		if _, err := svc.Create(ctx, th.alice, CreateRequest{Name: name, Image: "minimal", Host: "cp", MemoryMiB: 256}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.Stop(ctx, th.alice, "rests"); err != nil {
		t.Fatal(err)
	}
	th.heartbeat(t)
	if _, err := svc.HostDrain(ctx, th.admin, "cp", DrainRequest{Mode: "warp"}, nil); errs.ClassOf(err) != errs.InvalidArgument {
		t.Fatalf("drain with a bad mode: %v", err)
	}
	if h, _ := store.GetHostByName(ctx, svc.DB, "cp"); h.State != store.HostReady {
		t.Fatalf("a refused drain cordoned the host: %s", h.State)
	}
	starts, restores := ops(th.node, fake.OpStart), ops(th.node, fake.OpRestore)
	var mu sync.Mutex
	var lines []string
	res, err := svc.HostDrain(ctx, th.admin, "cp", DrainRequest{}, func(s string) { mu.Lock(); lines = append(lines, s); mu.Unlock() })
	if err != nil || len(res.Moved) != 2 {
		t.Fatalf("drain: %+v, %v (%q)", res, err, lines)
	}
	if ops(th.node, fake.OpStart) != starts || ops(th.node, fake.OpRestore) != restores+1 {
		t.Errorf("node-b booted %d and restored %d vms; want the running one restored from memory", ops(th.node, fake.OpStart)-starts, ops(th.node, fake.OpRestore)-restores)
	}
	all := strings.Join(lines, "\n")
	if !strings.Contains(all, "runs: suspend") || strings.Contains(all, "rests: suspend") || !strings.Contains(all, "rests: transfer") {
		t.Errorf("progress %q", lines)
	}
	for name, want := range map[string]string{"runs": "running", "rests": "stopped"} {
		if g, err := svc.Get(ctx, th.alice, name); err != nil || g.Host != "node-b" || g.Status != want {
			t.Errorf("%s after the drain: %+v, %v", name, g, err)
		}
	}
}

// TestMoveMemoryNodeToNodeCrashSettles moves a running VM with its memory
// from a host reached over NATS (node-b) to another (node-c) and to the
// control plane's own host, and "kills" the control plane at each step:
// settled, exactly one copy runs, where the switch says; before the
// switch node-b resumes it from its memory.
func TestMoveMemoryNodeToNodeCrashSettles(t *testing.T) {
	for _, c := range []struct{ target, step string }{
		{"node-c", ""}, {"node-c", "transfer"}, {"node-c", "switch"}, {"node-c", "cleanup"},
		{"cp", ""}, {"cp", "transfer"}, {"cp", "switch"}, {"cp", "cleanup"},
	} {
		step, target := c.step, c.target
		name := "to-" + target + "-" + step
		if step == "" {
			name = "to-" + target + "-no-crash"
		}
		t.Run(name, func(t *testing.T) {
			th := newTwoHosts(t)
			nodeC := th.addNode(t, "node-c", "127.209.0.3")
			// One guest: it boots on node-b, trusting node-b's key.
			th.cp.drv.SetServer(th.node.drv.Server())
			nodeC.drv.SetServer(th.node.drv.Server())
			dest := map[string]*machine{"node-c": nodeC, "cp": th.cp}[target]
			svc := th.cp.svc
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "hopper", Image: "minimal", Host: "node-b", MemoryMiB: 256}, nil)
			if err != nil {
				t.Fatal(err)
			}
			th.heartbeat(t)
			svc.moving.crash = func(s string) bool { return s == step }
			m, err := svc.Move(ctx, th.alice, "hopper", MoveRequest{Host: target, Mode: "memory"}, nil)
			svc.moving.crash = nil
			if step == "" {
				if err != nil || m.Host != target || m.Status != "running" || m.Move == nil || m.Move.DowntimeMS <= 0 {
					t.Fatalf("move: %+v, %v", m, err)
				}
				// The transfer is part of the downtime after the suspend;
				// node to node without direct listeners: relayed.
				if tm := m.Move.TransferMS; tm < 0 || tm > m.Move.DowntimeMS-m.Move.SuspendMS || (m.Transfer != nil && m.Transfer.NodeToNode) {
					t.Errorf("move figures %+v, transfer %+v", m.Move, m.Transfer)
				}
			} else if !errors.Is(err, errMoveCrashed) {
				t.Fatalf("move: %v, want the crash", err)
			}
			if step == "switch" && target == "node-c" {
				// As in TestMoveMemoryCrashSettles: the saved agent on
				// node-b trusts both hosts. (Onto cp the bundle is only
				// staged at this step: nothing runs there.)
				cl, err := nodeC.svc.Engine.Agent(ctx, v.ID)
				if err != nil {
					t.Fatal(err)
				}
				err = cl.Configure(ctx, proto.Configure{HostKeys: []string{keyLine(th.node.key), keyLine(nodeC.key)}})
				cl.Close()
				if err != nil {
					t.Fatal(err)
				}
			}
			starts, restores := ops(th.node, fake.OpStart), ops(th.node, fake.OpRestore)
			if err := svc.SettleMoves(ctx); err != nil {
				t.Fatalf("settle: %v", err)
			}
			wantHost, on, off := "node-b", th.node, dest
			if step == "" || step == "cleanup" {
				wantHost, on, off = target, dest, th.node
			} else if ops(th.node, fake.OpStart) != starts || ops(th.node, fake.OpRestore) != restores+1 {
				t.Errorf("node-b did not resume it from its memory: %d boots, %d restores", ops(th.node, fake.OpStart)-starts, ops(th.node, fake.OpRestore)-restores)
			}
			g, err := svc.Get(ctx, th.alice, "hopper")
			if err != nil || g.Host != wantHost || g.Status != "running" || g.Note != "" {
				t.Fatalf("after settling: %+v, %v; want running on %s", g, err, wantHost)
			}
			if inst, err := on.svc.Engine.Get(ctx, v.ID); err != nil || inst.State != vm.Running {
				t.Errorf("on %s: %+v, %v", wantHost, inst, err)
			}
			if _, err := off.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
				t.Errorf("a second copy is left: %v", err)
			}
			if _, err := os.Stat(filepath.Join(off.dir, "state", "vms", v.ID)); !os.IsNotExist(err) {
				t.Errorf("files of a second copy are left: %v", err)
			}
			if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
				t.Errorf("move records left: %+v", moves)
			}
			if out := execOut(t, svc, th.alice, "hopper", "echo here"); strings.TrimSpace(out) != "here" {
				t.Errorf("exec after settling: %q", out)
			}
		})
	}
}

// TestMoveMemoryFailedResumeKeepsRecord: a move with memory that fails
// after the suspend, and whose resume of the source fails too (its node
// agent restarting: found by e2e TestMultiHostMoveCrash
// memory/suspended/src), keeps its record, so SettleMoves resumes the
// source from its memory later instead of leaving it suspended for good.
func TestMoveMemoryFailedResumeKeepsRecord(t *testing.T) {
	th := newTwoHosts(t)
	nodeC := th.addNode(t, "node-c", "127.209.0.3")
	th.cp.drv.SetServer(th.node.drv.Server())
	nodeC.drv.SetServer(th.node.drv.Server())
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "hopper", Image: "minimal", Host: "node-b", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	th.heartbeat(t)
	nodeC.drv.Fail(fake.OpRestore, errors.New("injected: the target cannot resume"), 1)
	th.node.drv.Fail(fake.OpRestore, errors.New("injected: the source's agent is restarting"), 1)
	if _, err := svc.Move(ctx, th.alice, "hopper", MoveRequest{Host: "node-c", Mode: "memory"}, nil); err == nil {
		t.Fatal("move succeeded, want the injected failure")
	}
	if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 1 {
		t.Fatalf("move records after a failed move whose source did not resume: %+v, want one", moves)
	}
	restores := ops(th.node, fake.OpRestore)
	if err := svc.SettleMoves(ctx); err != nil {
		t.Fatalf("settle: %v", err)
	}
	if ops(th.node, fake.OpRestore) != restores+1 {
		t.Errorf("node-b did not resume it from its memory")
	}
	g, err := svc.Get(ctx, th.alice, "hopper")
	if err != nil || g.Host != "node-b" || g.Status != "running" {
		t.Fatalf("after settling: %+v, %v; want running on node-b", g, err)
	}
	if _, err := nodeC.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("a second copy is left: %v", err)
	}
	if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
		t.Errorf("move records left: %+v", moves)
	}
}
