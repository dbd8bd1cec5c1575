package nodeagent_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// TestMemoryMoveBetweenNodesOverNATS moves a running instance with its
// memory and a snapshot from node-a to node-b, both reached over the
// fabric: node-b's agent key is trusted by the guest before node-a
// suspends it, node-a's bundle is piped into node-b's import, and the
// instance runs on node-b from its memory, its snapshot with it. A
// corrupt bundle is refused with nothing left, and Resume brings node-a's
// copy back from its memory.
func TestMemoryMoveBetweenNodesOverNATS(t *testing.T) {
	a, b := newFakeLocal(t), newFakeLocal(t)
	b.drv.SetServer(a.drv.Server()) // one guest, wherever it runs
	c := newCluster(t)
	serve(t, "node-a", c.node(t, "node-a"), a.eng)
	serve(t, "node-b", c.node(t, "node-b"), b.eng)
	ra, rb := c.remote(t, "node-a", a), c.remote(t, "node-b", b)
	waitServed(t, ra)
	waitServed(t, rb)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	inst, err := ra.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "mover", Owner: a.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ra.Snapshot(ctx, inst.ID, engine.SnapshotSpec{Name: "s1"}, nil); err != nil {
		t.Fatal(err)
	}
	trust, err := rb.AgentTrustKey(ctx)
	if err != nil || !strings.HasPrefix(trust, "ssh-ed25519 ") {
		t.Fatalf("node-b's agent key: %q, %v", trust, err)
	}
	if err := rb.PrepareImage(ctx, inst.Image); err != nil {
		t.Fatalf("prepare image %s on node-b: %v", inst.Image, err)
	}
	if err := rb.PrepareImage(ctx, "nope@1"); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("prepare a missing image on node-b: %v, want NotFound", err)
	}
	if err := ra.Suspend(ctx, inst.ID, trust); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	if got, err := ra.Get(ctx, inst.ID); err != nil || got.State != vm.Stopped || got.Note != engine.NoteSuspended {
		t.Fatalf("suspended on node-a: %+v, %v", got, err)
	}
	var bundle bytes.Buffer
	if err := ra.ExportBundle(ctx, inst.ID, &bundle); err != nil {
		t.Fatalf("export: %v", err)
	}
	spec := engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}
	bad := bytes.Clone(bundle.Bytes())
	bad[len(bad)-50] ^= 0xff
	if _, err := rb.ImportBundle(ctx, spec, bytes.NewReader(bad), nil); errs.ClassOf(err) != errs.InvalidArgument {
		t.Fatalf("import of a corrupt bundle: %v", err)
	}
	if _, err := os.Stat(filepath.Join(b.dir, "state", "vms", inst.ID)); !os.IsNotExist(err) {
		t.Fatalf("node-b kept files of the corrupt import: %v", err)
	}
	// A bundle that stops coming (the export failed half-way: its node
	// agent killed) ends node-b's import at once, not at its idle
	// deadline, with nothing left (e2e TestMultiHostMoveCrash
	// memory/suspended/src waited 30 s for it).
	half := io.MultiReader(bytes.NewReader(bundle.Bytes()[:bundle.Len()/2]), iotestErr{})
	t1 := time.Now()
	if _, err := rb.ImportBundle(ctx, spec, half, nil); err == nil || time.Since(t1) > 10*time.Second {
		t.Fatalf("import of a bundle cut half-way: %v after %v, want an error within 10 s", err, time.Since(t1))
	}
	if _, err := os.Stat(filepath.Join(b.dir, "state", "vms", inst.ID)); !os.IsNotExist(err) {
		t.Fatalf("node-b kept files of the cut import: %v", err)
	}
	// A failed move's undo: node-a resumes from its memory.
	if got, err := ra.Resume(ctx, inst.ID); err != nil || got.State != vm.Running {
		t.Fatalf("resume on node-a: %+v, %v", got, err)
	}

	// The move, node-a's export piped into node-b's import.
	if err := ra.Suspend(ctx, inst.ID, trust); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(ra.ExportBundle(ctx, inst.ID, pw)) }()
	var steps []string
	t0 := time.Now()
	got, err := rb.ImportBundle(ctx, spec, pr, func(s string) { steps = append(steps, s) })
	pr.Close()
	if err != nil {
		t.Fatalf("import: %v (steps %v)", err, steps)
	}
	t.Logf("memory move over NATS: %v, steps %v", time.Since(t0).Round(time.Millisecond), steps)
	if got.State != vm.Running || got.ID != inst.ID || !strings.Contains(strings.Join(steps, ","), "restore memory") {
		t.Fatalf("imported %+v, steps %v", got, steps)
	}
	if snaps, err := rb.Snapshots(ctx, inst.ID); err != nil || len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Fatalf("snapshots on node-b: %+v, %v", snaps, err)
	}
	cl, err := rb.Agent(ctx, inst.ID)
	if err != nil {
		t.Fatalf("agent on node-b: %v", err)
	}
	cl.Close()
	if err := ra.Destroy(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(a.dir, "state", "vms", inst.ID)); !os.IsNotExist(err) {
		t.Errorf("node-a kept files: %v", err)
	}
}

// iotestErr is a reader that fails: a bundle's export that broke.
type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) {
	return 0, errs.New(errs.Unavailable, "export broke (test)")
}
