package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

func diskOf(m *machine, id string) string {
	return filepath.Join(m.dir, "state", "vms", id, "disk.qcow2")
}

// TestMoveToAnotherHost moves a running VM from the control plane's own
// host to a second host reached over NATS: its disk (with what was
// written to it) arrives, it runs there with an address of that host,
// keeps its name, ID and owner, and the control plane's host has nothing
// left of it. Failures at import and at start keep the source, running.
func TestMoveToAnotherHost(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "mover", Image: "minimal", Host: "cp", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := diskOf(th.cp, v.ID)
	f, err := os.OpenFile(src, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("data the guest wrote;"), 50000)
	f.Write(payload)
	f.Close()
	want, _ := os.ReadFile(src)

	// Refusals change nothing.
	for _, tc := range []struct {
		who  Caller
		host string
		want *errs.Class
	}{
		{th.bob, "node-b", errs.NotFound},         // not bob's: he cannot learn of it
		{th.alice, "", errs.InvalidArgument},      // no target
		{th.alice, "no-such", errs.NotFound},      // no such host
		{th.alice, "cp", errs.FailedPrecondition}, // already there
		{th.alice, "bad name!", errs.InvalidArgument},
	} {
		if _, err := svc.Move(ctx, tc.who, "mover", MoveRequest{Host: tc.host}, nil); errs.ClassOf(err) != tc.want {
			t.Errorf("move by %s to %q: %v, want %v", tc.who.Name, tc.host, err, tc.want)
		}
	}
	// Operations on a VM being moved are refused.
	svc.moving.add(v.ID)
	if _, err := svc.Stop(ctx, th.alice, "mover"); errs.ClassOf(err) != errs.FailedPrecondition {
		t.Errorf("stop during a move: %v", err)
	}
	if _, err := svc.Move(ctx, th.alice, "mover", MoveRequest{Host: "node-b"}, nil); errs.ClassOf(err) != errs.FailedPrecondition {
		t.Errorf("second move during a move: %v", err)
	}
	svc.moving.done(v.ID)

	// Failure at import (the target cannot make the VM's directory):
	// the source runs on, the target has no record.
	th.heartbeat(t)
	block := filepath.Join(th.node.dir, "state", "vms", v.ID)
	os.MkdirAll(filepath.Dir(block), 0o700)
	os.WriteFile(block, []byte("in the way"), 0o600)
	if _, err := svc.Move(ctx, th.alice, "mover", MoveRequest{Host: "node-b"}, nil); err == nil {
		t.Fatal("move with a failing import succeeded")
	}
	os.Remove(block)
	checkSource := func(what string) {
		t.Helper()
		g, err := svc.Get(ctx, th.alice, "mover")
		if err != nil || g.Host != "cp" || g.Status != "running" {
			t.Fatalf("after %s: %+v, %v; want running on cp", what, g, err)
		}
		if inst, err := th.cp.svc.Engine.Get(ctx, v.ID); err != nil || inst.State != vm.Running {
			t.Fatalf("after %s: source %+v, %v", what, inst, err)
		}
		if _, err := th.node.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
			t.Fatalf("after %s: target kept a copy: %v", what, err)
		}
		if got, _ := os.ReadFile(src); !bytes.Equal(got, want) {
			t.Fatalf("after %s: source disk changed", what)
		}
	}
	checkSource("failed import")

	// Failure at start on the target.
	th.heartbeat(t)
	th.node.drv.Fail(fake.OpStart, errors.New("injected"), 1)
	if _, err := svc.Move(ctx, th.alice, "mover", MoveRequest{Host: "node-b"}, nil); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("move with a failing start: %v", err)
	}
	checkSource("failed start")
	if _, err := os.Stat(filepath.Join(th.node.dir, "state", "vms", v.ID)); !os.IsNotExist(err) {
		t.Errorf("target kept files: %v", err)
	}

	// The move.
	th.heartbeat(t)
	var steps []string
	t0 := time.Now()
	m, err := svc.Move(ctx, th.alice, "mover", MoveRequest{Host: "node-b"}, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatalf("move: %v", err)
	}
	t.Logf("move cp -> node-b (running, %d KiB disk): %v, steps %v", len(want)>>10, time.Since(t0).Round(time.Millisecond), steps)
	if m.ID != v.ID || m.Name != "mover" || m.Owner != "alice" || m.Host != "node-b" || m.Status != "running" {
		t.Fatalf("moved %+v", m)
	}
	for _, s := range []string{"stop", "transfer", "disk", "agent", "switch", "cleanup"} {
		if !strings.Contains(","+strings.Join(steps, ",")+",", ","+s+",") {
			t.Errorf("no step %q in %v", s, steps)
		}
	}
	// The transfer's bytes: the result has them, and a progress line.
	if m.Transfer == nil || m.Transfer.Bytes < int64(len(want)) || m.Transfer.Bytes > int64(len(want))+64<<10 || m.Transfer.Seconds <= 0 {
		t.Errorf("move's transfer %+v, want about the %d bytes of the disk", m.Transfer, len(want))
	}
	if last := steps[slices.IndexFunc(steps, func(s string) bool { return strings.HasPrefix(s, "transfer ") })]; !strings.Contains(last, fmt.Sprintf("/%d MiB, ", len(want)>>20)) {
		t.Errorf("transfer progress line %q, want the disk's %d MiB", last, len(want)>>20)
	}
	inst, err := th.node.svc.Engine.Get(ctx, v.ID)
	if err != nil || inst.State != vm.Running {
		t.Fatalf("on node-b: %+v, %v", inst, err)
	}
	if got, _ := os.ReadFile(diskOf(th.node, v.ID)); !bytes.Equal(got, want) {
		t.Errorf("disk on node-b has %d bytes, want the %d of the source", len(got), len(want))
	}
	row, _ := store.GetVMByID(ctx, svc.DB, v.ID)
	if row.HostID != th.nodeID || row.IP != "@"+v.ID || row.NodeIP != inst.IP || m.IP != inst.IP {
		t.Errorf("control plane row %+v, view ip %s; node has %s", row, m.IP, inst.IP)
	}
	// Nothing of it left on the control plane's host; its row stays.
	if _, err := th.cp.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("source engine still has it: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(src)); !os.IsNotExist(err) {
		t.Errorf("source files left: %v", err)
	}
	// Its web route follows at once: the proxy's way in reaches it on node-b.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "web")
			c.Close()
		}
	}()
	dialWeb := func(where string) {
		t.Helper()
		wc, err := svc.DialWeb(ctx, v.ID, ln.Addr().(*net.TCPAddr).Port)
		if err != nil {
			t.Fatalf("dial web %s: %v", where, err)
		}
		got, _ := io.ReadAll(wc)
		wc.Close()
		if string(got) != "web" {
			t.Errorf("dial web %s read %q", where, got)
		}
	}
	dialWeb("on node-b")
	// It works there: exec through the node.
	if out := execOut(t, svc, th.alice, "mover", "echo moved"); !strings.Contains(out, "moved") {
		t.Errorf("exec after move: %q", out)
	}
	// And it is still alice's only.
	if _, err := svc.Get(ctx, th.bob, "mover"); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("bob sees it: %v", err)
	}

	// Back onto the control plane's own host (its engine shares the row).
	th.heartbeat(t)
	steps = nil
	back, err := svc.Move(ctx, th.alice, "mover", MoveRequest{Host: "cp"}, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatalf("move back: %v", err)
	}
	t.Logf("move node-b -> cp: steps %v", steps)
	if back.ID != v.ID || back.Host != "cp" || back.Status != "running" || back.Owner != "alice" {
		t.Fatalf("moved back %+v", back)
	}
	local, err := th.cp.svc.Engine.Get(ctx, v.ID)
	if err != nil || local.State != vm.Running || back.IP != local.IP || strings.HasPrefix(local.IP, "@") {
		t.Fatalf("on cp: %+v, %v (view ip %s)", local, err, back.IP)
	}
	if got, _ := os.ReadFile(src); !bytes.Equal(got, want) {
		t.Errorf("disk back on cp has %d bytes, want %d", len(got), len(want))
	}
	if _, err := th.node.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("node-b kept a copy: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(diskOf(th.node, v.ID))); !os.IsNotExist(err) {
		t.Errorf("node-b kept files: %v", err)
	}
	if out := execOut(t, svc, th.alice, "mover", "echo home"); !strings.Contains(out, "home") {
		t.Errorf("exec after the move back: %q", out)
	}
	// (DialWeb to a VM of this host dials its address on the bridge,
	// which the fake network does not have: the e2e test checks that.)
	// A failed start on the way back switches back: it runs on node-b.
	th.heartbeat(t)
	if _, err := svc.Move(ctx, th.alice, "mover", MoveRequest{Host: "node-b"}, nil); err != nil {
		t.Fatal(err)
	}
	th.heartbeat(t)
	th.cp.drv.Fail(fake.OpStart, errors.New("injected at home"), 1)
	if _, err := svc.Move(ctx, th.alice, "mover", MoveRequest{Host: "cp"}, nil); err == nil || !strings.Contains(err.Error(), "injected at home") {
		t.Fatalf("move back with a failing start: %v", err)
	}
	if g, err := svc.Get(ctx, th.alice, "mover"); err != nil || g.Host != "node-b" || g.Status != "running" {
		t.Fatalf("after a failed move back: %+v, %v", g, err)
	}
	if _, err := th.cp.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("cp kept a copy: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(src)); !os.IsNotExist(err) {
		t.Errorf("cp kept files: %v", err)
	}
	// Destroy after moves removes it from the node.
	if err := svc.Destroy(ctx, th.alice, "mover"); err != nil {
		t.Fatal(err)
	}
	if _, err := th.node.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("node-b kept the destroyed vm: %v", err)
	}
}

// TestMoveCrashSettles "kills" the control plane at each step of a move
// (the move returns at once, undoing nothing) and settles it as a restart
// would: exactly one copy is left, running, where the switch says; until
// then every operation on the VM is refused.
func TestMoveCrashSettles(t *testing.T) {
	for _, c := range []struct{ step, from, to string }{
		{"transfer", "cp", "node-b"}, {"switch", "cp", "node-b"}, {"cleanup", "cp", "node-b"},
		{"transfer", "node-b", "cp"}, {"switch", "node-b", "cp"}, {"cleanup", "node-b", "cp"},
	} {
		step := c.step
		t.Run(c.from+"-to-"+c.to+"-"+step, func(t *testing.T) {
			th := newTwoHosts(t)
			svc := th.cp.svc
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "crashy", Image: "minimal", Host: c.from, MemoryMiB: 256}, nil)
			if err != nil {
				t.Fatal(err)
			}
			svc.moving.crash = func(s string) bool { return s == step }
			if _, err := svc.Move(ctx, th.alice, "crashy", MoveRequest{Host: c.to}, nil); !errors.Is(err, errMoveCrashed) {
				t.Fatalf("move: %v, want the crash", err)
			}
			svc.moving.crash = nil
			if _, err := svc.Restart(ctx, th.alice, "crashy", nil); errs.ClassOf(err) != errs.FailedPrecondition {
				t.Errorf("restart of an interrupted move: %v", err)
			}
			if err := svc.SettleMoves(ctx); err != nil {
				t.Fatalf("settle: %v", err)
			}
			if err := svc.SettleMoves(ctx); err != nil { // idempotent
				t.Fatalf("settle again: %v", err)
			}
			machines := map[string]*machine{"cp": th.cp, "node-b": th.node}
			wantHost, on, off := c.from, machines[c.from], machines[c.to]
			if step == "cleanup" {
				wantHost, on, off = c.to, machines[c.to], machines[c.from]
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
			// Usable again.
			if _, err := svc.Stop(ctx, th.alice, "crashy"); err != nil {
				t.Errorf("stop after settling: %v", err)
			}
		})
	}
}

// addNode joins a third host (name) to th's cluster, serving its engine
// over th's fabric like node-b's, and returns it.
func (th *twoHosts) addNode(t *testing.T, name, addr string) *machine {
	t.Helper()
	ctx := context.Background()
	m := newMachine(t)
	svc := th.cp.svc
	inv, err := svc.HostAdd(ctx, th.admin, name)
	if err != nil {
		t.Fatal(err)
	}
	seed, pub, _ := fabric.NewNodeKey()
	res, err := svc.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: pub, Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	th.heartbeat(t)
	conn, err := fabric.ConnectNode(th.srv.ClientURL(), res.HostID, seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- nodeagent.ServeEngine(sctx, nodeagent.ServeConfig{ID: res.HostID, Conn: conn, Engine: m.svc.NodeEngine()})
	}()
	t.Cleanup(func() { cancel(); <-done })
	control, err := th.srv.Control("control-" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(control.Close)
	r, err := nodeagent.NewRemote(nodeagent.RemoteConfig{ID: res.HostID, Conn: control})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	waitFor(t, name+" to serve its engine", func() bool {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := r.Capacity(cctx)
		return err == nil
	})
	svc.SetRemoteEngine(res.HostID, r)
	return m
}

// TestDrainMovesEveryVMOff: a VM moves node to node (node-b -> node-c);
// drain of node-b (admins only) moves all its VMs, running and stopped,
// to node-c (the control plane's own host is no target), two at a time,
// their disks with them; then node-b can be removed.
func TestDrainMovesEveryVMOff(t *testing.T) {
	th := newTwoHosts(t)
	nodeC := th.addNode(t, "node-c", "127.209.0.3")
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Only node-c takes the drained VMs.
	if _, err := svc.HostCordon(ctx, th.admin, "cp"); err != nil {
		t.Fatal(err)
	}
	// Node to node first.
	if _, err := svc.Create(ctx, th.alice, CreateRequest{Name: "hop", Image: "minimal", Host: "node-b", MemoryMiB: 256}, nil); err != nil {
		t.Fatal(err)
	}
	m, err := svc.Move(ctx, th.alice, "hop", MoveRequest{Host: "node-c"}, nil)
	if err != nil || m.Host != "node-c" || m.Status != "running" {
		t.Fatalf("move node-b -> node-c: %+v, %v", m, err)
	}
	if _, err := th.node.svc.Engine.Get(ctx, m.ID); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("node-b kept a copy: %v", err)
	}
	if out := execOut(t, svc, th.alice, "hop", "echo hopped"); !strings.Contains(out, "hopped") {
		t.Errorf("exec after node-to-node move: %q", out)
	}

	disks := map[string][]byte{}
	for i, name := range []string{"d1", "d2", "d3"} {
		th.heartbeat(t)
		v, err := svc.Create(ctx, th.alice, CreateRequest{Name: name, Image: "minimal", Host: "node-b", MemoryMiB: 256}, nil)
		if err != nil {
			t.Fatal(err)
		}
		p := diskOf(th.node, v.ID)
		os.WriteFile(p, append([]byte("disk of "+name+";"), bytes.Repeat([]byte{byte(i)}, 1<<16)...), 0o600)
		disks[v.ID], _ = os.ReadFile(p)
		if name == "d3" {
			if _, err := svc.Stop(ctx, th.alice, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	th.heartbeat(t)
	if _, err := svc.HostDrain(ctx, th.alice, "node-b", DrainRequest{}, nil); errs.ClassOf(err) != errs.PermissionDenied {
		t.Fatalf("drain by a user: %v", err)
	}
	var mu sync.Mutex
	var lines []string
	// Cold: each test host's fake guest is an agent of its own, so a VM
	// moved with its memory would not be the same guest there (see
	// TestDrainMovesWithMemoryByDefault).
	res, err := svc.HostDrain(ctx, th.admin, "node-b", DrainRequest{Mode: "cold"}, func(s string) { mu.Lock(); lines = append(lines, s); mu.Unlock() })
	if err != nil {
		t.Fatalf("drain: %v (%+v)", err, res)
	}
	if len(res.Moved) != 3 || len(res.Failed) != 0 {
		t.Fatalf("drain result %+v", res)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "d2: moved to node-c") {
		t.Errorf("progress %q", lines)
	}
	for id, want := range disks {
		row, _ := store.GetVMByID(ctx, svc.DB, id)
		wantState := vm.Running
		if row.Name == "d3" {
			wantState = vm.Stopped
		}
		inst, err := nodeC.svc.Engine.Get(ctx, id)
		if err != nil || inst.State != wantState || row.State != wantState {
			t.Errorf("%s on node-c: %+v, %v; row %s", row.Name, inst, err, row.State)
		}
		if got, _ := os.ReadFile(diskOf(nodeC, id)); !bytes.Equal(got, want) {
			t.Errorf("%s: disk on node-c differs", row.Name)
		}
	}
	if l, _ := th.node.svc.Engine.List(ctx); len(l) != 0 {
		t.Errorf("node-b still runs %+v", l)
	}
	if err := svc.HostRemove(ctx, th.admin, "node-b"); err != nil {
		t.Errorf("remove the drained host: %v", err)
	}
}

// TestCopyToAnotherHost: cp VM NEW --host H ships the stopped source's
// disk to H (and back to the control plane's own host): a new VM with its
// own ID and address runs there with the source's data; the source stays
// as it was. A running source is refused.
func TestCopyToAnotherHost(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src, err := svc.Create(ctx, th.alice, CreateRequest{Name: "orig", Image: "minimal", Host: "cp", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Copy(ctx, th.alice, "orig", CopyRequest{Name: "far", Host: "node-b"}, nil); errs.ClassOf(err) != errs.FailedPrecondition {
		t.Fatalf("copy of a running vm to another host: %v", err)
	}
	if _, err := svc.Copy(ctx, th.bob, "orig", CopyRequest{Name: "bobs", Host: "node-b"}, nil); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("copy by bob: %v", err)
	}
	if _, err := svc.Stop(ctx, th.alice, "orig"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(diskOf(th.cp, src.ID), []byte("the original's data"), 0o600)
	var steps []string
	far, err := svc.Copy(ctx, th.alice, "orig", CopyRequest{Name: "far", Host: "node-b"}, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatalf("copy to node-b: %v", err)
	}
	if far.ID == src.ID || far.Host != "node-b" || far.Status != "running" || far.Owner != "alice" {
		t.Fatalf("copy %+v", far)
	}
	if far.Transfer == nil || far.Transfer.Bytes <= 0 || !strings.Contains(strings.Join(steps, ","), " MiB/s") {
		t.Errorf("copy's transfer %+v, steps %q: want its bytes and a progress line", far.Transfer, steps)
	}
	if !strings.Contains(strings.Join(steps, ","), "identity") {
		t.Errorf("the copy got no identity of its own: %v", steps)
	}
	if got, _ := os.ReadFile(diskOf(th.node, far.ID)); string(got) != "the original's data" {
		t.Errorf("copy's disk %q", got)
	}
	if g, err := svc.Get(ctx, th.alice, "orig"); err != nil || g.Host != "cp" || g.Status != "stopped" {
		t.Errorf("source after the copy: %+v, %v", g, err)
	}
	// And back onto the control plane's own host.
	if _, err := svc.Stop(ctx, th.alice, "far"); err != nil {
		t.Fatal(err)
	}
	back, err := svc.Copy(ctx, th.alice, "far", CopyRequest{Name: "back", Host: "cp"}, nil)
	if err != nil || back.Host != "cp" || back.Status != "running" {
		t.Fatalf("copy to cp: %+v, %v", back, err)
	}
	if got, _ := os.ReadFile(diskOf(th.cp, back.ID)); string(got) != "the original's data" {
		t.Errorf("copy back's disk %q", got)
	}
	if out := execOut(t, svc, th.alice, "back", "echo back"); !strings.Contains(out, "back") {
		t.Errorf("exec in the copy: %q", out)
	}
}

// TestMoveModeChecked: an unknown mode is refused before anything is
// looked up or changed, and a drain checks it before it cordons.
func TestMoveModeChecked(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := svc.Create(ctx, th.alice, CreateRequest{Name: "moded", Image: "minimal", Host: "cp", MemoryMiB: 256}, nil); err != nil {
		t.Fatal(err)
	}
	_, err := svc.Move(ctx, th.alice, "moded", MoveRequest{Host: "node-b", Mode: "teleport"}, nil)
	if errs.ClassOf(err) != errs.InvalidArgument || !strings.Contains(err.Error(), "teleport") {
		t.Fatalf("move --mode teleport: %v", err)
	}
	if g, err := svc.Get(ctx, th.alice, "moded"); err != nil || g.Host != "cp" || g.Status != "running" {
		t.Errorf("after refusal: %+v, %v", g, err)
	}
	_, err = svc.HostDrain(ctx, th.admin, "node-b", DrainRequest{Mode: "teleport"}, nil)
	if errs.ClassOf(err) != errs.InvalidArgument {
		t.Fatalf("drain --mode teleport: %v", err)
	}
	if h, err := svc.HostStatus(ctx, th.admin, "node-b"); err != nil || h.State != store.HostReady {
		t.Errorf("node-b after refused drain: %+v, %v", h, err)
	}
}

// TestMoveSourceRestartFailsSettlesLater: a move whose import fails and
// whose source then cannot be started again (its host away, say) keeps
// its record, so settling starts the source later: never no copy running.
func TestMoveSourceRestartFailsSettlesLater(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "stuck", Image: "minimal", Host: "cp", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	th.heartbeat(t)
	block := filepath.Join(th.node.dir, "state", "vms", v.ID)
	os.MkdirAll(filepath.Dir(block), 0o700)
	os.WriteFile(block, []byte("in the way"), 0o600)
	th.cp.drv.Fail(fake.OpStart, errors.New("injected restart"), 1)
	if _, err := svc.Move(ctx, th.alice, "stuck", MoveRequest{Host: "node-b"}, nil); err == nil {
		t.Fatal("move with a failing import succeeded")
	}
	os.Remove(block)
	if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 1 {
		t.Fatalf("move records after a failed restart of the source: %+v, want the move kept for settling", moves)
	}
	if inst, err := th.cp.svc.Engine.Get(ctx, v.ID); err != nil || inst.State != vm.Stopped {
		t.Fatalf("source before settling: %+v, %v", inst, err)
	}
	if err := svc.SettleMoves(ctx); err != nil {
		t.Fatalf("settle: %v", err)
	}
	g, err := svc.Get(ctx, th.alice, "stuck")
	if err != nil || g.Host != "cp" || g.Status != "running" {
		t.Fatalf("after settling: %+v, %v; want running on cp", g, err)
	}
	if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
		t.Errorf("move records left: %+v", moves)
	}
}

// TestSettleKeepsMoveUntilACopyRuns: settling an interrupted move drops
// its record only once a copy runs: a source that cannot start yet (or
// a target, after the switch) keeps the record for the next settle.
func TestSettleKeepsMoveUntilACopyRuns(t *testing.T) {
	for _, step := range []string{"transfer", "cleanup"} {
		t.Run(step, func(t *testing.T) {
			th := newTwoHosts(t)
			svc := th.cp.svc
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if _, err := svc.Create(ctx, th.alice, CreateRequest{Name: "held", Image: "minimal", Host: "cp", MemoryMiB: 256}, nil); err != nil {
				t.Fatal(err)
			}
			th.heartbeat(t)
			svc.moving.crash = func(s string) bool { return s == step }
			if _, err := svc.Move(ctx, th.alice, "held", MoveRequest{Host: "node-b"}, nil); !errors.Is(err, errMoveCrashed) {
				t.Fatalf("move: %v, want the crash", err)
			}
			svc.moving.crash = nil
			wantHost, drv := "cp", th.cp.drv
			if step == "cleanup" {
				wantHost, drv = "node-b", th.node.drv
				// The crash came after the switch but before the start
				// on node-b? Stop it there, so settling must start it.
				if _, err := th.node.svc.Engine.Stop(ctx, mustID(t, svc, th.alice, "held")); err != nil {
					t.Fatal(err)
				}
			}
			drv.Fail(fake.OpStart, errors.New("injected: not yet"), 1)
			if err := svc.SettleMoves(ctx); err == nil {
				t.Fatal("settle with a copy that cannot start: no error")
			}
			if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 1 {
				t.Fatalf("records after a failed settle: %+v, want the move kept", moves)
			}
			if err := svc.SettleMoves(ctx); err != nil {
				t.Fatalf("settle again: %v", err)
			}
			if g, err := svc.Get(ctx, th.alice, "held"); err != nil || g.Host != wantHost || g.Status != "running" {
				t.Fatalf("after settling: %+v, %v; want running on %s", g, err, wantHost)
			}
			if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
				t.Errorf("move records left: %+v", moves)
			}
		})
	}
}

func mustID(t *testing.T, svc *Service, c Caller, name string) string {
	t.Helper()
	v, err := svc.Get(context.Background(), c, name)
	if err != nil {
		t.Fatal(err)
	}
	return v.ID
}
