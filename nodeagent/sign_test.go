package nodeagent_test

import (
	"context"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// TestAgentLoginSignedByNode: a Remote holding no key logs in to a
// node's guest agent, the node signing the login with its own key.
func TestAgentLoginSignedByNode(t *testing.T) {
	fl := newFakeLocal(t)
	c := newCluster(t)
	conn := c.node(t, "node-a")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- nodeagent.ServeEngine(sctx, nodeagent.ServeConfig{ID: "node-a", Conn: conn, Engine: fl.eng, Signer: fl.hostKey})
	}()
	defer func() { stop(); <-done }()
	r := c.remote(t, "node-a", nil) // no signer
	waitServed(t, r)
	inst, err := r.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "signed", Image: "minimal", CPUs: 1, MemoryMiB: 256, Owner: fl.owner}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Destroy(context.Background(), inst.ID)
	cl, err := r.Agent(ctx, inst.ID)
	if err != nil {
		t.Fatalf("agent login signed by the node: %v", err)
	}
	defer cl.Close()
	if _, err := cl.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestNodeSignsNoAgentLoginWithoutKey: a node that has no agent key
// refuses, and the login fails with a clear error.
func TestNodeSignsNoAgentLoginWithoutKey(t *testing.T) {
	fl := newFakeLocal(t)
	c := newCluster(t)
	serve(t, "node-a", c.node(t, "node-a"), fl.eng) // no signer, and engine.Local offers none
	r := c.remote(t, "node-a", nil)
	waitServed(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	inst, err := r.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "unsigned", Image: "minimal", CPUs: 1, MemoryMiB: 256, Owner: fl.owner}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Destroy(context.Background(), inst.ID)
	if _, err := r.Agent(ctx, inst.ID); errs.ClassOf(err) != errs.FailedPrecondition {
		t.Fatalf("agent without a key anywhere: %v", err)
	}
}
