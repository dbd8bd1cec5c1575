package nodeagent_test

import (
	"context"
	"io"
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

// TestBundleResumesDirect: a memory move's bundle, node-a's export relayed
// by the control plane into node-b's import over the direct mTLS path,
// through a proxy that resets the connection after 20 MiB, resumes: node-b
// keeps its partial file and checksum and asks for the rest from its
// offset, node-a exports from there, and the instance runs on node-b from
// its memory with its disk intact (qemu-io). A link that drops every
// connection fails after the bounded tries with nothing left on node-b,
// and node-a's suspended copy resumes.
func TestBundleResumesDirect(t *testing.T) { testBundleResumes(t, true) }

// TestBundleResumesOverNATS is the same over a fabric stream (real NATS),
// which node-b drops after 20 MiB.
func TestBundleResumesOverNATS(t *testing.T) { testBundleResumes(t, false) }

func testBundleResumes(t *testing.T, direct bool) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("needs qemu-io")
	}
	defer nodeagent.SetResumeTiming(3, 20*time.Millisecond, 3*time.Second)()
	a, b := newFakeLocal(t), newFakeLocal(t)
	b.drv.SetServer(a.drv.Server()) // one guest, wherever it runs
	var ra, rb *nodeagent.Remote
	var proxy *cutProxy
	if direct {
		e := newDirectEnv(t)
		proxy = newCutProxy(t)
		serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.direct(t, "node-a"))
		serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.directVia(t, "node-b", proxy))
		ra, rb = e.directRemote(t, "node-a", a), e.directRemote(t, "node-b", b)
	} else {
		c := newCluster(t)
		serve(t, "node-a", c.node(t, "node-a"), a.eng)
		serve(t, "node-b", c.node(t, "node-b"), b.eng)
		ra, rb = c.remote(t, "node-a", a), c.remote(t, "node-b", b)
	}
	waitServed(t, ra)
	waitServed(t, rb)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	inst, err := ra.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "mover", Owner: a.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	qemuIO(t, filepath.Join(a.dir, "state", "vms", inst.ID, "disk.qcow2"), "write -P 0x5a 0 64M")
	trust, err := rb.AgentTrustKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ra.Suspend(ctx, inst.ID, trust); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	// A permanent cut first: node-b gives up after the bound and undoes
	// itself; node-a's copy is still suspended and resumes.
	spec := engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}
	src := func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
		return ra.ExportBundleFrom(ctx, inst.ID, at.Offset, w)
	}
	if direct {
		proxy.cut(0, 4<<20)
		proxy.every.Store(true)
	} else {
		src = func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
			return ra.ExportBundleFrom(ctx, inst.ID, at.Offset, &limitWriter{w: w, left: 4 << 20})
		}
		nodeagent.CutImport(4 << 20)
	}
	if _, err := rb.ImportBundleResuming(ctx, spec, src, nil); err == nil {
		t.Fatal("a bundle import over a stream that always drops succeeded")
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
	var offsets []int64
	var mu sync.Mutex
	src = func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
		mu.Lock()
		offsets = append(offsets, at.Offset)
		mu.Unlock()
		return ra.ExportBundleFrom(ctx, inst.ID, at.Offset, w)
	}
	before := rb.ResumeCount()
	if direct {
		proxy.every.Store(false)
		proxy.cutDone.Store(0)
		proxy.conns.Store(0)
		proxy.cut(1, 20<<20)
	} else {
		nodeagent.CutImport(20 << 20)
	}
	var steps []string
	got, err := rb.ImportBundleResuming(ctx, spec, src, func(s string) { mu.Lock(); steps = append(steps, s); mu.Unlock() })
	if err != nil {
		t.Fatalf("bundle import over a stream cut once: %v (steps %q)", err, steps)
	}
	if direct && (proxy.cutDone.Load() != 1 || proxy.conns.Load() < 2) {
		t.Errorf("the proxy cut %d of %d connections, want 1 cut and a new connection", proxy.cutDone.Load(), proxy.conns.Load())
	}
	if rb.ResumeCount()-before != 1 || len(offsets) != 2 || offsets[0] != 0 || offsets[1] < 19<<20 || offsets[1] > 20<<20 {
		t.Errorf("resumed %d times, source offsets %v; want once, from 0 then from about 20 MiB", rb.ResumeCount()-before, offsets)
	}
	joined := strings.Join(steps, "\n")
	if !strings.Contains(joined, "transfer resumed at ") || strings.Contains(joined, "\x00") || !strings.Contains(joined, "restore memory") {
		t.Errorf("progress %q", steps)
	}
	if got.State != vm.Running || got.ID != inst.ID {
		t.Fatalf("imported %+v", got)
	}
	qemuIO(t, filepath.Join(b.dir, "state", "vms", got.ID, "disk.qcow2"), "read -P 0x5a 0 64M")
	t.Logf("bundle resumed after a cut at 20 MiB: offsets %v, steps %q", offsets, steps)
}
