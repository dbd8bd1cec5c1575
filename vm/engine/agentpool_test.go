package engine_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/engine/enginetest"
	"github.com/minionsdev/minions/vsockcli"
)

func poolCreate(t *testing.T, ctx context.Context, h enginetest.Harness, name string) engine.Instance {
	t.Helper()
	inst, err := h.Engine.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: name, Image: h.Image,
		CPUs: 1, MemoryMiB: 256, Owner: h.Owner}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

// execOnce runs `echo hi` through a client lent by the engine.
func execOnce(ctx context.Context, e engine.Engine, id string) error {
	cl, err := e.Agent(ctx, id)
	if err != nil {
		return err
	}
	defer cl.Close()
	var out bytes.Buffer
	code, err := cl.Exec(ctx, vsockcli.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo hi"}, Stdout: &out})
	if err != nil {
		return err
	}
	if code != 0 || out.String() != "hi\n" {
		return &execError{code, out.String()}
	}
	return nil
}

type execError struct {
	code int
	out  string
}

func (e *execError) Error() string { return fmt.Sprintf("exec: exit %d, output %q", e.code, e.out) }

// Many Exec, Status and forward calls share one agent connection: the one
// create waited for the agent on (so the first call, such as the first
// `ssh vm@host`, dials nothing); a restarted instance gets a fresh one,
// the one its start waited on; a stopped one keeps none.
func TestAgentPoolReusesOneConnection(t *testing.T) {
	h, drv := fakeHarnessWith(t, engine.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := poolCreate(t, ctx, h, "web")
	before := drv.Dials()
	for i := 0; i < 20; i++ {
		if err := execOnce(ctx, h.Engine, a.ID); err != nil {
			t.Fatal(err)
		}
		cl, err := h.Engine.Agent(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Status(ctx); err != nil {
			t.Fatal(err)
		}
		cl.Close()
		cl.Close() // a second Close of a loan is harmless
	}
	if got := drv.Dials() - before; got != 0 {
		t.Fatalf("40 agent calls dialed %d connections, want 0 (create's)", got)
	}

	// The old connection is dropped with the process: a restarted
	// instance's agent is dialed afresh and answers.
	if _, err := h.Engine.Restart(ctx, a.ID, nil); err != nil {
		t.Fatal(err)
	}
	before = drv.Dials()
	for i := 0; i < 5; i++ {
		if err := execOnce(ctx, h.Engine, a.ID); err != nil {
			t.Fatalf("exec after restart: %v", err)
		}
	}
	if got := drv.Dials() - before; got != 0 {
		t.Fatalf("after restart 5 execs dialed %d connections, want 0 (restart's)", got)
	}

	if _, err := h.Engine.Stop(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Engine.Agent(ctx, a.ID); err == nil {
		t.Fatal("Agent of a stopped instance succeeded")
	}
}

// A connection that dies (the guest went away under it) is not lent again.
func TestAgentPoolReplacesADeadConnection(t *testing.T) {
	h, drv := fakeHarnessWith(t, engine.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := poolCreate(t, ctx, h, "web")
	cl, err := h.Engine.Agent(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	cl.SSH().Close() // the connection under every loan dies
	cl.Close()
	before := drv.Dials()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := execOnce(ctx, h.Engine, a.ID)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("exec after the connection died: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := drv.Dials() - before; got != 1 {
		t.Fatalf("dialed %d connections after one died, want 1", got)
	}
}

// Concurrent loans of one instance share its connection (run with -race),
// and the pool never holds more than AgentPoolMax connections.
func TestAgentPoolConcurrentAndBounded(t *testing.T) {
	h, drv := fakeHarnessWith(t, engine.Config{AgentPoolMax: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := poolCreate(t, ctx, h, "a")
	b := poolCreate(t, ctx, h, "b")
	if err := execOnce(ctx, h.Engine, a.ID); err != nil {
		t.Fatal(err)
	}
	before := drv.Dials()
	var wg sync.WaitGroup
	errc := make(chan error, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				if err := execOnce(ctx, h.Engine, a.ID); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if got := drv.Dials() - before; got != 0 {
		t.Fatalf("40 concurrent execs on a pooled connection dialed %d more, want 0", got)
	}

	// b takes the only slot from idle a; a then comes back with a dial.
	if err := execOnce(ctx, h.Engine, b.ID); err != nil {
		t.Fatal(err)
	}
	before = drv.Dials()
	if err := execOnce(ctx, h.Engine, a.ID); err != nil {
		t.Fatal(err)
	}
	if err := execOnce(ctx, h.Engine, a.ID); err != nil {
		t.Fatal(err)
	}
	if got := drv.Dials() - before; got != 1 {
		t.Fatalf("a evicted from a pool of one: %d dials for two execs, want 1", got)
	}

	// While a's loan is held, b cannot take its slot: b gets a connection
	// of its own each time, closed on release, and both keep working.
	held, err := h.Engine.Agent(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	before = drv.Dials()
	for i := 0; i < 2; i++ {
		if err := execOnce(ctx, h.Engine, b.ID); err != nil {
			t.Fatal(err)
		}
	}
	if got := drv.Dials() - before; got != 2 {
		t.Fatalf("b with the pool full of busy connections dialed %d times for 2 execs, want 2", got)
	}
	if _, err := held.Ping(ctx); err != nil {
		t.Fatalf("the held loan stopped working: %v", err)
	}
	held.Close()
}
