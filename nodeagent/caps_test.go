package nodeagent_test

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// TestOldSourceNodeGetsTheRelayAtOnce: a source node whose heartbeats
// announce no capabilities (a version older than node-to-node bundles,
// whose export_bundle ignores the target address) is not asked for a
// node-to-node bundle: ErrNoPeerPath at once (the caller relays the
// bundle) and nothing made on the target; nor is an old target.
// Before, the target waited for a stream that never came until the
// move's deadline. Once the node announces the capability, the bundle
// goes node to node.
func TestOldSourceNodeGetsTheRelayAtOnce(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("needs qemu-io")
	}
	a, b := newFakeLocal(t), newFakeLocal(t)
	b.drv.SetServer(a.drv.Server())
	e := newDirectEnv(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.direct(t, "node-a"))
	serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.direct(t, "node-b"))
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

	ra.SetCaps(nil) // heard from, without capabilities: an old node
	t0 := time.Now()
	_, _, err = rb.ImportBundleFromPeer(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, ra, nil)
	took := time.Since(t0)
	if !errors.Is(err, engine.ErrNoPeerPath) || !strings.Contains(err.Error(), nodeagent.CapPeerBundle) {
		t.Fatalf("bundle from an old node: %v, want ErrNoPeerPath naming %s", err, nodeagent.CapPeerBundle)
	}
	if took > time.Second {
		t.Errorf("the old node's refusal took %s", took)
	}
	nothingOn(t, ctx, rb, b, inst.ID)
	if p, f := rb.PeerBundleCounts(); p != 0 || f != 1 {
		t.Errorf("node-to-node bundles %d (no path %d), want 0 (1)", p, f)
	}

	// An old target is not asked either.
	ra.SetCaps(nodeagent.Capabilities)
	rb.SetCaps([]string{"something-else"})
	if _, _, err := rb.ImportBundleFromPeer(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, ra, nil); !errors.Is(err, engine.ErrNoPeerPath) {
		t.Fatalf("bundle to an old node: %v, want ErrNoPeerPath", err)
	}
	nothingOn(t, ctx, rb, b, inst.ID)

	rb.SetCaps(nodeagent.Capabilities)
	got, _, err := rb.ImportBundleFromPeer(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, ra, nil)
	if err != nil || got.State != vm.Running {
		t.Fatalf("bundle from a node with the capability: %+v, %v", got, err)
	}
	if p, _ := rb.PeerBundleCounts(); p != 1 {
		t.Errorf("node-to-node bundles %d, want 1", p)
	}
}
