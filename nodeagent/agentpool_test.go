package nodeagent_test

import (
	"context"
	"crypto/tls"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vsockcli"
)

// poolEnv is node-a serving fl's engine with a direct listener and
// signing agent logins itself (the production setup: the control plane
// holds no agent key), and the control plane's Remote for it.
func poolEnv(t *testing.T, cfg nodeagent.RemoteConfig) (*fakeLocal, *directEnv, *nodeagent.Remote) {
	t.Helper()
	fl := newFakeLocal(t)
	e := newDirectEnv(t)
	d := e.direct(t, "node-a")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	conn := e.node(t, "node-a")
	go func() {
		done <- nodeagent.ServeEngine(ctx, nodeagent.ServeConfig{ID: "node-a", Conn: conn, Engine: fl.eng, Direct: d, Signer: fl.hostKey})
	}()
	t.Cleanup(func() { cancel(); <-done })
	cfg.ID, cfg.Conn = "node-a", e.control
	cfg.DirectTLS = &tls.Config{Certificates: []tls.Certificate{e.cert}}
	r, err := nodeagent.NewRemote(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	waitServed(t, r)
	return fl, e, r
}

func dials(r *nodeagent.Remote) int64 { d, n := r.StreamCounts(); return d + n }

// execTrue opens an agent client, runs `true` and gives the client back.
func execTrue(t *testing.T, ctx context.Context, r *nodeagent.Remote, id string) {
	t.Helper()
	cl, err := r.Agent(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if code, err := cl.Exec(ctx, vsockcli.ExecRequest{Command: "true"}); err != nil || code != 0 {
		t.Fatalf("exec true = %d, %v", code, err)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestRemoteAgentPool: sessions to a VM on another host share one agent
// connection (one stream, one login), a lease's Close never ends another
// caller's session, and the connection is dropped when the VM stops,
// restarts, crashes or is destroyed, so the next session dials afresh.
func TestRemoteAgentPool(t *testing.T) {
	fl, _, r := poolEnv(t, nodeagent.RemoteConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := r.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "pool", Image: "minimal", CPUs: 1, MemoryMiB: 256, Owner: fl.owner}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		execTrue(t, ctx, r, inst.ID)
	}
	if n := dials(r); n != 1 {
		t.Fatalf("5 sessions dialed %d agent streams; want 1", n)
	}
	if n := r.AgentPoolSize(); n != 1 {
		t.Fatalf("pool size %d; want 1", n)
	}

	// Two callers at once: one's Close leaves the other's client working.
	a, err := r.Agent(ctx, inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Agent(ctx, inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a.Close()
	if _, err := b.Ping(ctx); err != nil {
		t.Fatalf("a lease's Close ended another caller's client: %v", err)
	}
	b.Close()
	if n := dials(r); n != 1 {
		t.Fatalf("concurrent leases dialed %d streams; want 1", n)
	}

	// Stop and Start: the old connection is dropped, a fresh one dialed.
	if _, err := r.Stop(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if n := r.AgentPoolSize(); n != 0 {
		t.Fatalf("pool size %d after stop; want 0", n)
	}
	if _, err := r.Agent(ctx, inst.ID); err == nil {
		t.Fatal("agent of a stopped vm: no error")
	}
	if _, err := r.Start(ctx, inst.ID, nil); err != nil {
		t.Fatal(err)
	}
	execTrue(t, ctx, r, inst.ID)
	execTrue(t, ctx, r, inst.ID)
	if n := dials(r); n != 2 {
		t.Fatalf("after stop/start %d streams dialed; want 2", n)
	}

	// Restart through the Remote drops it too.
	if _, err := r.Restart(ctx, inst.ID, nil); err != nil {
		t.Fatal(err)
	}
	execTrue(t, ctx, r, inst.ID)
	if n := dials(r); n != 3 {
		t.Fatalf("after restart %d streams dialed; want 3", n)
	}

	// A crash on the node (not through this Remote) reaches the pool as
	// the node's exit event.
	fl.drv.Crash(inst.ID)
	waitFor(t, "the crashed vm's connection to leave the pool", func() bool {
		// The fake hypervisor has no process to watch: the node's
		// engine sees the crash when it reconciles.
		if err := fl.eng.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		return r.AgentPoolSize() == 0
	})
	if _, err := r.Start(ctx, inst.ID, nil); err != nil {
		t.Fatal(err)
	}
	execTrue(t, ctx, r, inst.ID)
	if n := dials(r); n != 4 {
		t.Fatalf("after crash and start %d streams dialed; want 4", n)
	}

	// A session in flight when the VM is destroyed is not cut by the
	// pool (its channel ends with the VM), and the entry is gone.
	if err := r.Destroy(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if n := r.AgentPoolSize(); n != 0 {
		t.Fatalf("pool size %d after destroy; want 0", n)
	}
	if _, err := r.Agent(ctx, inst.ID); err == nil {
		t.Fatal("agent of a destroyed vm: no error")
	}
}

// TestRemoteAgentPoolIdleAndOff: an unused connection closes after
// AgentIdle; with the pool off every session dials.
func TestRemoteAgentPoolIdleAndOff(t *testing.T) {
	fl, e, r := poolEnv(t, nodeagent.RemoteConfig{AgentIdle: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := r.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "idle", Image: "minimal", CPUs: 1, MemoryMiB: 256, Owner: fl.owner}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Destroy(context.Background(), inst.ID)
	execTrue(t, ctx, r, inst.ID)
	waitFor(t, "the idle connection to close", func() bool { return r.AgentPoolSize() == 0 })
	execTrue(t, ctx, r, inst.ID)
	if n := dials(r); n != 2 {
		t.Fatalf("%d streams dialed; want 2 (one before, one after the idle close)", n)
	}

	if _, err := nodeagent.NewRemote(nodeagent.RemoteConfig{ID: "node-a", Conn: nil, AgentIdle: -time.Second}); err == nil {
		t.Fatal("negative AgentIdle accepted")
	}
	off, err := nodeagent.NewRemote(nodeagent.RemoteConfig{ID: "node-a", Conn: e.control, AgentPoolMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	for i := 0; i < 3; i++ {
		execTrue(t, ctx, off, inst.ID)
	}
	if n, size := dials(off), off.AgentPoolSize(); n != 3 || size != 0 {
		t.Fatalf("pool off: %d streams dialed, pool size %d; want 3 and 0", n, size)
	}
}

// TestAgentSessionBench measures what one `ssh vm@control-plane true`
// costs the control plane past authorization: Agent, exec `true`, Close,
// for a VM on this host (engine.Local) and on another host (Remote, the
// node signing the login, direct path), pooled and unpooled. Set
// NODEAGENT_BENCH=1.
func TestAgentSessionBench(t *testing.T) {
	if os.Getenv("NODEAGENT_BENCH") == "" {
		t.Skip("set NODEAGENT_BENCH=1 to measure")
	}
	fl, e, pooled := poolEnv(t, nodeagent.RemoteConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	inst, err := pooled.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "sbench", Image: "minimal", CPUs: 1, MemoryMiB: 256, Owner: fl.owner}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pooled.Destroy(context.Background(), inst.ID)
	unpooled, err := nodeagent.NewRemote(nodeagent.RemoteConfig{ID: "node-a", Conn: e.control, AgentPoolMax: -1,
		DirectTLS: &tls.Config{Certificates: []tls.Certificate{e.cert}}})
	if err != nil {
		t.Fatal(err)
	}
	defer unpooled.Close()
	med := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
	for _, c := range []struct {
		name string
		eng  engine.Engine
	}{{"local", fl.eng}, {"remote unpooled", unpooled}, {"remote pooled", pooled}} {
		var ds []time.Duration
		for i := 0; i < 30; i++ {
			t0 := time.Now()
			cl, err := c.eng.Agent(ctx, inst.ID)
			if err != nil {
				t.Fatal(err)
			}
			if code, err := cl.Exec(ctx, vsockcli.ExecRequest{Command: "true"}); err != nil || code != 0 {
				t.Fatalf("exec true = %d, %v", code, err)
			}
			cl.Close()
			ds = append(ds, time.Since(t0))
		}
		t.Logf("%-16s Agent+exec true+Close median %v", c.name, med(ds).Round(time.Microsecond))
	}
}

// TestRemoteAgentWarm: a VM that create, start or restart through the
// Remote left running has its agent connection dialed at once, before
// anyone asks, so the first session dials nothing; a session that comes
// while that dial is under way waits for it instead of dialing another;
// a stop right after create leaves nothing pooled.
func TestRemoteAgentWarm(t *testing.T) {
	fl, _, r := poolEnv(t, nodeagent.RemoteConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := r.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "warm", Image: "minimal", CPUs: 1, MemoryMiB: 256, Owner: fl.owner}, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the created vm's agent connection to be pooled", func() bool { return r.AgentPoolSize() == 1 })
	if n := dials(r); n != 1 {
		t.Fatalf("warm dialed %d streams; want 1", n)
	}
	execTrue(t, ctx, r, inst.ID)
	if n := dials(r); n != 1 {
		t.Fatalf("the first session after create dialed again: %d streams; want 1", n)
	}

	// Restart, then a session at once: it waits for the warm dial.
	if _, err := r.Restart(ctx, inst.ID, nil); err != nil {
		t.Fatal(err)
	}
	execTrue(t, ctx, r, inst.ID)
	if n := dials(r); n != 2 {
		t.Fatalf("restart and a session at once dialed %d streams in all; want 2", n)
	}

	// Stop right after start: the warm dial's client is not pooled.
	if _, err := r.Stop(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Start(ctx, inst.ID, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Stop(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	waitFor(t, "nothing pooled for the stopped vm", func() bool { return r.AgentPoolSize() == 0 })
	if _, err := r.Agent(ctx, inst.ID); err == nil {
		t.Fatal("agent of a stopped vm: no error")
	}
}
