package nodeagent_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// suspendedWithData makes a running instance on fl (through r) whose disk
// holds 64 MiB of pattern 0x5a, and suspends it for a move to the node
// whose agent key is trust.
func suspendedWithData(t *testing.T, ctx context.Context, r *nodeagent.Remote, fl *fakeLocal, name, trust string) engine.Instance {
	t.Helper()
	inst, err := r.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: name, Owner: fl.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	qemuIO(t, filepath.Join(fl.dir, "state", "vms", inst.ID, "disk.qcow2"), "write -P 0x5a 0 64M")
	if err := r.Suspend(ctx, inst.ID, trust); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	return inst
}

// TestBundleMovesNodeToNode: with direct listeners on both nodes, a
// memory move's bundle goes from node-a straight to node-b over mTLS: the
// control plane opens no stream of its own (direct or fabric: it relays
// no byte), the instance resumes on node-b from its memory with its disk
// intact, and the target's byte progress reaches the caller. A source
// without a direct listener is ErrNoPeerPath, leaves nothing on the
// target, and its suspended instance resumes.
func TestBundleMovesNodeToNode(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("needs qemu-io")
	}
	a, b := newFakeLocal(t), newFakeLocal(t)
	b.drv.SetServer(a.drv.Server()) // one guest, wherever it runs
	e := newDirectEnv(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.direct(t, "node-a"))
	serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.direct(t, "node-b"))
	ra, rb := e.directRemote(t, "node-a", a), e.directRemote(t, "node-b", b)
	// A second cluster whose node-a (c) has no direct listener.
	c, d := newFakeLocal(t), newFakeLocal(t)
	e2 := newDirectEnv(t)
	serve(t, "node-a", e2.node(t, "node-a"), c.eng)
	serveDirect(t, "node-b", e2.node(t, "node-b"), d.eng, e2.direct(t, "node-b"))
	rc, rd := e2.directRemote(t, "node-a", c), e2.directRemote(t, "node-b", d)
	for _, r := range []*nodeagent.Remote{ra, rb, rc, rd} {
		waitServed(t, r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// No path: nothing on d, c's copy resumes.
	dtrust, err := rd.AgentTrustKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cinst := suspendedWithData(t, ctx, rc, c, "stay", dtrust)
	if _, _, err := rd.ImportBundleFromPeer(ctx, engine.ImportSpec{ID: cinst.ID, Name: "stay", Owner: d.owner}, rc, nil); !errors.Is(err, engine.ErrNoPeerPath) {
		t.Fatalf("from a node without a direct listener: %v, want ErrNoPeerPath", err)
	}
	nothingOn(t, ctx, rd, d, cinst.ID)
	if got, err := rc.Resume(ctx, cinst.ID); err != nil || got.State != vm.Running {
		t.Fatalf("resume the source after no path: %+v, %v", got, err)
	}
	// Not a node of this control plane at all.
	if _, _, err := rb.ImportBundleFromPeer(ctx, engine.ImportSpec{ID: cinst.ID, Name: "stay", Owner: b.owner}, a.eng, nil); !errors.Is(err, engine.ErrNoPeerPath) {
		t.Fatalf("from a local engine: %v, want ErrNoPeerPath", err)
	}

	trust, err := rb.AgentTrustKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inst := suspendedWithData(t, ctx, ra, a, "mover", trust)
	var steps []string
	var mu sync.Mutex
	t0 := time.Now()
	got, n, err := rb.ImportBundleFromPeer(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, ra,
		func(s string) { mu.Lock(); steps = append(steps, s); mu.Unlock() })
	took := time.Since(t0)
	if err != nil {
		t.Fatalf("node-to-node bundle: %v (steps %q)", err, steps)
	}
	if got.ID != inst.ID || got.State != vm.Running || n < 64<<20 {
		t.Fatalf("imported %+v, %d bytes", got, n)
	}
	joined := strings.Join(steps, ",")
	if !strings.Contains(joined, "restore memory") || strings.Contains(joined, "\x00") {
		t.Errorf("progress %q", steps)
	}
	if last := lastWithPrefix(steps, "transfer "); !strings.HasPrefix(last, fmt.Sprintf("transfer %d MiB", n>>20)) {
		t.Errorf("byte progress: last transfer line %q in %q", last, steps)
	}
	qemuIO(t, filepath.Join(b.dir, "state", "vms", got.ID, "disk.qcow2"), "read -P 0x5a 0 64M")
	if p, f := rb.PeerBundleCounts(); p != 1 || f != 0 {
		t.Errorf("node-to-node bundles %d (no path %d), want 1 (0)", p, f)
	}
	for _, r := range []*nodeagent.Remote{ra, rb} {
		if d, nn := r.DiskStreamCounts(); d != 0 || nn != 0 {
			t.Errorf("the control plane relayed streams: %d direct, %d over NATS", d, nn)
		}
	}
	// The source's copy is still there (suspended) until the caller
	// destroys it after its switch.
	if _, err := ra.Get(ctx, inst.ID); err != nil {
		t.Errorf("the source lost its suspended copy: %v", err)
	}
	t.Logf("bundle node to node: %d MiB in %s (%.0f MiB/s)", n>>20, took.Round(time.Millisecond), float64(n)/(1<<20)/took.Seconds())
}

// TestBundleResumesNodeToNode: a node-to-node bundle whose TCP connection
// a proxy resets after 20 MiB resumes (node-b keeps its partial file and
// checksum, a new single-use ticket, node-a exports from node-b's
// offset); the instance runs on node-b with its disk intact and the byte
// count is the bundle's once. A link that drops every connection fails
// after the bounded tries with nothing left on node-b, and node-a's
// suspended copy resumes.
func TestBundleResumesNodeToNode(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("needs qemu-io")
	}
	defer nodeagent.SetResumeTiming(3, 20*time.Millisecond, 3*time.Second)()
	a, b := newFakeLocal(t), newFakeLocal(t)
	b.drv.SetServer(a.drv.Server())
	e := newDirectEnv(t)
	proxy := newCutProxy(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.direct(t, "node-a"))
	serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.directVia(t, "node-b", proxy))
	ra, rb := e.directRemote(t, "node-a", a), e.directRemote(t, "node-b", b)
	waitServed(t, ra)
	waitServed(t, rb)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	trust, err := rb.AgentTrustKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inst := suspendedWithData(t, ctx, ra, a, "mover", trust)
	spec := engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}

	// Permanently bad first: every connection drops after 4 MiB.
	proxy.cut(0, 4<<20)
	proxy.every.Store(true)
	if _, _, err := rb.ImportBundleFromPeer(ctx, spec, ra, nil); err == nil || errors.Is(err, engine.ErrNoPeerPath) {
		t.Fatalf("a bundle over a link that drops every connection: %v, want the import's failure", err)
	} else {
		t.Logf("permanent cut: %v", err)
	}
	if c := rb.ResumeCount(); c != 3 {
		t.Errorf("resumed %d times, want 3 (the bound)", c)
	}
	nothingOn(t, ctx, rb, b, inst.ID)
	if got, err := ra.Resume(ctx, inst.ID); err != nil || got.State != vm.Running {
		t.Fatalf("resume on node-a after the failed import: %+v, %v", got, err)
	}

	// Cut once: resumed.
	if err := ra.Suspend(ctx, inst.ID, trust); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	var whole byteCount
	if err := a.eng.ExportBundle(ctx, inst.ID, &whole); err != nil {
		t.Fatal(err)
	}
	proxy.every.Store(false)
	proxy.cutDone.Store(0)
	proxy.conns.Store(0)
	proxy.cut(1, 20<<20)
	before := rb.ResumeCount()
	var steps []string
	var mu sync.Mutex
	got, n, err := rb.ImportBundleFromPeer(ctx, spec, ra, func(s string) { mu.Lock(); steps = append(steps, s); mu.Unlock() })
	if err != nil {
		t.Fatalf("bundle over a link cut once: %v (steps %q)", err, steps)
	}
	if proxy.cutDone.Load() != 1 || proxy.conns.Load() < 2 {
		t.Errorf("the proxy cut %d of %d connections, want 1 cut and a new connection", proxy.cutDone.Load(), proxy.conns.Load())
	}
	if rb.ResumeCount()-before != 1 || !strings.Contains(strings.Join(steps, "\n"), "transfer resumed at ") {
		t.Errorf("resumed %d times, progress %q; want once, said", rb.ResumeCount()-before, steps)
	}
	if n != whole.n {
		t.Errorf("bundle of %d bytes reported, want %d (counted once)", n, whole.n)
	}
	if got.State != vm.Running || got.ID != inst.ID {
		t.Fatalf("imported %+v", got)
	}
	qemuIO(t, filepath.Join(b.dir, "state", "vms", got.ID, "disk.qcow2"), "read -P 0x5a 0 64M")
	for _, r := range []*nodeagent.Remote{ra, rb} {
		if d, nn := r.DiskStreamCounts(); d != 0 || nn != 0 {
			t.Errorf("the control plane relayed streams: %d direct, %d over NATS", d, nn)
		}
	}
	t.Logf("bundle resumed node to node after a cut at 20 MiB: %d connections, progress %q", proxy.conns.Load(), steps)
}
