package nodeagent_test

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/engine/enginetest"
	"github.com/minionsdev/minions/vsockcli"
)

// cluster is a real embedded fabric with two registered nodes, "node-a"
// and "node-b", and the control plane's connection.
type cluster struct {
	srv     *fabric.Server
	control *fabric.Conn
	seeds   map[string]string
}

func newCluster(t testing.TB) *cluster {
	t.Helper()
	c := &cluster{seeds: map[string]string{}}
	pubs := map[string]string{}
	for _, id := range []string{"node-a", "node-b"} {
		seed, pub, err := fabric.NewNodeKey()
		if err != nil {
			t.Fatal(err)
		}
		c.seeds[id], pubs[pub] = seed, id
	}
	srv, err := fabric.Start(fabric.Config{Listen: "127.0.0.1:0", StoreDir: t.TempDir(),
		NodeKey: func(p string) (string, bool) { id, ok := pubs[p]; return id, ok }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	c.srv = srv
	c.control, err = srv.Control("control")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.control.Close)
	return c
}

// node connects as node id (over TCP, with its own key).
func (c *cluster) node(t testing.TB, id string) *fabric.Conn {
	t.Helper()
	conn, err := fabric.ConnectNode(c.srv.ClientURL(), id, c.seeds[id])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	return conn
}

// serve runs ServeEngine for eng as node id on conn until the test ends.
func serve(t testing.TB, id string, conn *fabric.Conn, eng engine.Engine) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- nodeagent.ServeEngine(ctx, nodeagent.ServeConfig{ID: id, Conn: conn, Engine: eng}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve engine: %v", err)
		}
	})
}

func (c *cluster) remote(t testing.TB, id string, fl *fakeLocal) *nodeagent.Remote {
	t.Helper()
	cfg := nodeagent.RemoteConfig{ID: id, Conn: c.control}
	if fl != nil {
		cfg.Signer = fl.hostKey
	}
	r, err := nodeagent.NewRemote(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// remoteHarness: Remote -> embedded NATS -> ServeEngine on node-a's own
// credential -> engine.Local on the fake hypervisor.
func remoteHarness(t *testing.T) enginetest.Harness {
	fl := newFakeLocal(t)
	c := newCluster(t)
	serve(t, "node-a", c.node(t, "node-a"), fl.eng)
	r := c.remote(t, "node-a", fl)
	waitServed(t, r)
	return enginetest.Harness{
		Engine: r, Image: "minimal", Owner: fl.owner,
		Kill:    func(t *testing.T, inst engine.Instance) { fl.drv.Crash(inst.ID) },
		Timeout: 2 * time.Minute,
	}
}

// waitServed waits until the node answers (ServeEngine runs async).
func waitServed(t testing.TB, r *nodeagent.Remote) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := r.Capacity(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s never served its engine: %v", r.Node(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestConformanceOverNATS runs the engine's conformance suite through
// the fabric.
func TestConformanceOverNATS(t *testing.T) {
	enginetest.Run(t, remoteHarness)
}

// slowEngine is an engine whose Start takes longer than the fabric's
// request timeouts, telling progress on the way.
type slowEngine struct {
	engine.Engine
	d time.Duration
}

func (s slowEngine) Start(ctx context.Context, id string, progress engine.Progress) (engine.Instance, error) {
	for _, step := range []string{"one", "two", "three"} {
		progress.Say(step)
		select {
		case <-time.After(s.d / 3):
		case <-ctx.Done():
			return engine.Instance{}, ctx.Err()
		}
	}
	return engine.Instance{ID: id, Name: "slow"}, nil
}

func (s slowEngine) OnExit(engine.ExitFunc) {}

func (s slowEngine) Capacity(context.Context) (engine.Capacity, error) { return engine.Capacity{}, nil }

// TestLongCallAndCancel: a call longer than the accept timeout completes
// with its progress in order; a caller's deadline ends it on the node too.
func TestLongCallAndCancel(t *testing.T) {
	c := newCluster(t)
	serve(t, "node-a", c.node(t, "node-a"), slowEngine{d: 1500 * time.Millisecond})
	r, err := nodeagent.NewRemote(nodeagent.RemoteConfig{ID: "node-a", Conn: c.control, AcceptTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	waitServed(t, r)
	var steps []string
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inst, err := r.Start(ctx, "x1", func(s string) { steps = append(steps, s) })
	if err != nil || inst.Name != "slow" || strings.Join(steps, " ") != "one two three" {
		t.Fatalf("start = %+v, %v, progress %v", inst, err, steps)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel2()
	if _, err := r.Start(short, "x1", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("start past its deadline = %v", err)
	}
}

// TestNodeGoneMidCall: a node that dies during a call fails it with
// errs.Unavailable soon, not at the caller's deadline.
func TestNodeGoneMidCall(t *testing.T) {
	c := newCluster(t)
	conn := c.node(t, "node-a")
	serve(t, "node-a", conn, slowEngine{d: time.Hour})
	r, err := nodeagent.NewRemote(nodeagent.RemoteConfig{ID: "node-a", Conn: c.control, AcceptTimeout: time.Second, CheckInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	waitServed(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got := make(chan error, 1)
	steps := make(chan string, 8)
	go func() {
		_, err := r.Start(ctx, "x1", func(s string) { steps <- s })
		got <- err
	}()
	<-steps // the call runs on the node
	t0 := time.Now()
	conn.Close()
	select {
	case err := <-got:
		if !errors.Is(err, errs.Unavailable) || time.Since(t0) > 10*time.Second {
			t.Fatalf("start on a node that died = %v after %v, want Unavailable within seconds", err, time.Since(t0))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a call to a dead node still waits after 30 s")
	}
}

// TestNodeCannotServeAnother: node-b's credential cannot serve node-a's
// engine, read its streams, or forge its replies and exits.
func TestNodeCannotServeAnother(t *testing.T) {
	fl := newFakeLocal(t)
	c := newCluster(t)
	b := c.node(t, "node-b")
	serve(t, "node-a", b, fl.eng) // node-b pretends to be node-a
	waitErr(t, b, "permissions violation")
	r := c.remote(t, "node-a", fl)
	var mu sync.Mutex
	var exits []engine.Exit
	r.OnExit(func(_ context.Context, e engine.Exit) { mu.Lock(); exits = append(exits, e); mu.Unlock() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.List(ctx); !errors.Is(err, errs.Unavailable) {
		t.Fatalf("list on node-a served by node-b's credential = %v, want Unavailable", err)
	}
	// Node-b spies on node-a's agent streams and forges its exits.
	if _, err := b.Subscribe("minions.node.node-a.stream.>", func(fabric.Msg) {}); err != nil {
		t.Fatal(err)
	}
	waitErr(t, b, "permissions violation")
	b.Publish("minions.status.node-a.engine.exit", []byte(`{"id":"forged","reason":"crashed"}`))
	waitErr(t, b, "permissions violation")
	b.Flush(ctx)

	// The real node-a serves; its answers reach the control plane after
	// anything node-b's forgery could have delivered.
	serve(t, "node-a", c.node(t, "node-a"), fl.eng)
	waitServed(t, r)
	mu.Lock()
	defer mu.Unlock()
	if len(exits) != 0 {
		t.Fatalf("forged exits reached the control plane: %+v", exits)
	}
}

func waitErr(t testing.TB, c *fabric.Conn, want string) {
	t.Helper()
	select {
	case err := <-c.Errors():
		if !strings.Contains(strings.ToLower(err.Error()), want) {
			t.Fatalf("async error %v, want %q", err, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no %q error", want)
	}
}

// TestAgentBench compares a guest agent reached through engine.Local
// (a unix socket), through Remote over NATS, and through Remote over a
// direct TLS connection brokered over NATS: medians of opening an
// authenticated client, a ping round trip, exec `true`, SFTP write and
// read of 32 MiB, and the CPU the whole process (client, fabric, node
// and agent: all in this process) spends per 32 MiB moved. Set
// NODEAGENT_BENCH=1.
func TestAgentBench(t *testing.T) {
	if os.Getenv("NODEAGENT_BENCH") == "" {
		t.Skip("set NODEAGENT_BENCH=1 to measure")
	}
	fl := newFakeLocal(t)
	e := newDirectEnv(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), fl.eng, e.direct(t, "node-a"))
	viaNATS := e.remote(t, "node-a", fl)
	direct := e.directRemote(t, "node-a", fl)
	waitServed(t, viaNATS)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	inst, err := viaNATS.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "bench", Image: "minimal", CPUs: 1, MemoryMiB: 256, Owner: fl.owner}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer viaNATS.Destroy(context.Background(), inst.ID)
	med := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	data := make([]byte, 32<<20)
	rand.Read(data)
	for _, e := range []struct {
		name string
		eng  engine.Engine
	}{{"local (unix socket)", fl.eng}, {"remote over NATS", viaNATS}, {"remote direct TLS", direct}} {
		var opens, pings, execs, writes, reads, cpus []time.Duration
		for i := 0; i < 20; i++ {
			t0 := time.Now()
			cl, err := e.eng.Agent(ctx, inst.ID)
			if err != nil {
				t.Fatal(err)
			}
			opens = append(opens, time.Since(t0))
			cl.Close()
		}
		cl, err := e.eng.Agent(ctx, inst.ID)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 200; i++ {
			t0 := time.Now()
			if _, err := cl.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			pings = append(pings, time.Since(t0))
		}
		for i := 0; i < 30; i++ {
			t0 := time.Now()
			if code, err := cl.Exec(ctx, vsockcli.ExecRequest{Command: "true"}); err != nil || code != 0 {
				t.Fatalf("exec true = %d, %v", code, err)
			}
			execs = append(execs, time.Since(t0))
		}
		for i := 0; i < 5; i++ {
			c0, t0 := cpu(), time.Now()
			if err := cl.WriteFile(ctx, "/root/bench", data, 0o644); err != nil {
				t.Fatal(err)
			}
			t1 := time.Now()
			got, err := cl.ReadFile(ctx, "/root/bench")
			if err != nil || len(got) != len(data) {
				t.Fatalf("read back %d bytes: %v", len(got), err)
			}
			writes, reads = append(writes, t1.Sub(t0)), append(reads, time.Since(t1))
			cpus = append(cpus, (cpu()-c0)/2)
		}
		cl.Close()
		t.Logf("%-20s open %7v  ping %7v  exec true %7v  sftp 32 MiB write %4.0f MiB/s read %4.0f MiB/s  cpu/32 MiB %v (medians)",
			e.name, med(opens).Round(time.Microsecond), med(pings).Round(time.Microsecond), med(execs).Round(time.Microsecond),
			32/med(writes).Seconds(), 32/med(reads).Seconds(), med(cpus).Round(time.Millisecond))
	}
	if d, n := direct.StreamCounts(); d == 0 || n != 0 {
		t.Fatalf("the direct remote opened %d direct and %d nats streams", d, n)
	}
}
