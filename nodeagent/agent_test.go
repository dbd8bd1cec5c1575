package nodeagent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/store"
)

// TestMain doubles as a fleet of simulated nodes for TestFleetCost: with
// NODEAGENT_FLEET=<url> it runs one node agent per "id seed" line of
// NODEAGENT_FLEET_KEYS until stdin closes.
func TestMain(m *testing.M) {
	if url := os.Getenv("NODEAGENT_FLEET"); url != "" {
		ctx, cancel := context.WithCancel(context.Background())
		ca, err := fabric.WithCA([]byte(os.Getenv("NODEAGENT_FLEET_CA")))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		interval, err := time.ParseDuration(os.Getenv("NODEAGENT_FLEET_INTERVAL"))
		if err != nil {
			interval = 2 * time.Second
		}
		for _, line := range strings.Split(strings.TrimSpace(os.Getenv("NODEAGENT_FLEET_KEYS")), "\n") {
			id, seed, _ := strings.Cut(line, " ")
			conn, err := fabric.ConnectNode(url, id, seed, ca)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			go nodeagent.Run(ctx, nodeagent.Config{ID: id, Conn: conn, Version: "sim", Interval: interval,
				Probe: func() (nodeagent.Capacity, error) {
					return nodeagent.Capacity{CPUs: 32, MemoryMiB: 131072, MemoryFreeMiB: 100000, DiskMiB: 1 << 21, DiskFreeMiB: 1 << 20}, nil
				}})
		}
		fmt.Println("ready")
		buf := make([]byte, 1)
		os.Stdin.Read(buf)
		cancel()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestHeartbeatsReachControlPlane: a node agent with its own credential
// heartbeats its measured capacity over a real embedded server; the
// control plane's Listen gets them under the node's ID, and a ping to
// the node answers.
func TestHeartbeatsReachControlPlane(t *testing.T) {
	seed, pub, _ := fabric.NewNodeKey()
	srv, err := fabric.Start(fabric.Config{Listen: "127.0.0.1:0", StoreDir: t.TempDir(),
		NodeKey: func(p string) (string, bool) { return "n1", p == pub }})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	control, err := srv.Control("control")
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	got := make(chan string, 16)
	var mu sync.Mutex
	var beats []nodeagent.Heartbeat
	stop, err := nodeagent.Listen(control, func(id string, hb nodeagent.Heartbeat) {
		mu.Lock()
		beats = append(beats, hb)
		mu.Unlock()
		got <- id
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	control.Flush(context.Background())

	conn, err := fabric.ConnectNode(srv.ClientURL(), "n1", seed)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- nodeagent.Run(ctx, nodeagent.Config{ID: "n1", Conn: conn, StateDir: t.TempDir(), Version: "v9", Interval: 50 * time.Millisecond,
			Address: "192.0.2.5"})
	}()
	for i := 0; i < 3; i++ {
		select {
		case id := <-got:
			if id != "n1" {
				t.Fatalf("heartbeat from %q", id)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no heartbeat")
		}
	}
	mu.Lock()
	hb := beats[0]
	mu.Unlock()
	// The address given (a node's --address at join) overrides the one
	// it reaches the fabric from.
	if hb.Version != "v9" || hb.Address != "192.0.2.5" || hb.CPUs < 1 || hb.MemoryMiB <= 0 || hb.MemoryFreeMiB <= 0 || hb.DiskMiB <= 0 || hb.DiskFreeMiB <= 0 {
		t.Fatalf("heartbeat %+v", hb)
	}
	if !slices.Equal(hb.Caps, nodeagent.Capabilities) {
		t.Errorf("heartbeat capabilities %q, want %q", hb.Caps, nodeagent.Capabilities)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	reply, err := control.Request(rctx, fabric.NodeSubject("n1")+".ping", nil)
	var p nodeagent.Heartbeat
	if err != nil || json.Unmarshal(reply, &p) != nil || p.Version != "v9" {
		t.Fatalf("ping: %s %v", reply, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCredentialRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := nodeagent.LoadCredential(dir); err == nil || !strings.Contains(err.Error(), "node join") {
		t.Fatalf("no credential: %v", err)
	}
	c := nodeagent.Credential{HostID: "abc", Name: "n", Control: "http://x", NATS: []string{"nats://x:4222"}, Seed: "SUA..."}
	if err := nodeagent.SaveCredential(dir, c); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(dir, nodeagent.CredentialFile))
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	got, err := nodeagent.LoadCredential(dir)
	if err != nil || got.HostID != "abc" || got.Seed != "SUA..." {
		t.Fatalf("%+v %v", got, err)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestFleetCost measures what 100 simulated nodes (another process, 100
// real NATS connections over TLS, each with its own NKey, a heartbeat per
// node every NODEAGENT_FLEET_INTERVAL, default 2 s as in production) cost
// the control plane: the embedded server, the batched listener and one
// SQLite transaction a second with every node's latest heartbeat (as
// serve does), in this process. Set NODEAGENT_FLEET_SECONDS (e.g. 20) to
// run it; the bar is 5% of a core.
func TestFleetCost(t *testing.T) {
	secs := os.Getenv("NODEAGENT_FLEET_SECONDS")
	if secs == "" {
		t.Skip("set NODEAGENT_FLEET_SECONDS to measure")
	}
	dur, _ := time.ParseDuration(secs + "s")
	interval, err := time.ParseDuration(os.Getenv("NODEAGENT_FLEET_INTERVAL"))
	if err != nil {
		interval = 2 * time.Second
	}
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var keys []string
	for i := 0; i < 100; i++ {
		seed, pub, _ := fabric.NewNodeKey()
		id := fmt.Sprintf("node%03d", i)
		if err := store.InsertHost(ctx, db, store.Host{ID: id, Name: id, State: store.HostJoining, NKey: pub, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, id+" "+seed)
	}
	tlsCfg, caPEM, err := fabric.ServerTLS(t.TempDir(), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := fabric.Start(fabric.Config{Listen: "127.0.0.1:0", StoreDir: t.TempDir(), TLS: tlsCfg, NodeKey: func(pub string) (string, bool) {
		h, err := store.GetHostByNKey(ctx, db, pub)
		return h.ID, err == nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	control, _ := srv.Control("control")
	defer control.Close()
	var mu sync.Mutex
	n, failed, txs := 0, 0, 0
	record := func(batch map[string]nodeagent.Heartbeat) {
		recs := make([]store.HeartbeatRecord, 0, len(batch))
		now := time.Now()
		for id, hb := range batch {
			recs = append(recs, store.HeartbeatRecord{ID: id, At: now, CPUs: hb.CPUs, MemoryMiB: hb.MemoryMiB, DiskMiB: hb.DiskMiB,
				MemoryFreeMiB: hb.MemoryFreeMiB, DiskFreeMiB: hb.DiskFreeMiB, Version: hb.Version, Address: hb.Address})
		}
		var gone []string
		err := db.Tx(ctx, func(q store.Q) error {
			var err error
			gone, err = store.RecordHeartbeats(ctx, q, recs)
			return err
		})
		mu.Lock()
		n += len(recs)
		txs++
		if err != nil {
			failed += len(recs)
		}
		failed += len(gone)
		mu.Unlock()
	}
	// NODEAGENT_FLEET_UNBATCHED=1: a transaction per heartbeat as it
	// comes (what serve did before), for comparison.
	unbatched := os.Getenv("NODEAGENT_FLEET_UNBATCHED") != ""
	var stop func() error
	if unbatched {
		stop, _ = nodeagent.Listen(control, func(id string, hb nodeagent.Heartbeat) { record(map[string]nodeagent.Heartbeat{id: hb}) })
	} else {
		stop, _ = nodeagent.ListenBatched(control, time.Second, record)
	}
	defer stop()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "NODEAGENT_FLEET_INTERVAL="+interval.String(), "NODEAGENT_FLEET="+srv.ClientURL(), "NODEAGENT_FLEET_KEYS="+strings.Join(keys, "\n"), "NODEAGENT_FLEET_CA="+string(caPEM))
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("fleet: %q %v", buf, err)
	}
	time.Sleep(3 * time.Second) // let the fleet settle; the measure starts now
	mu.Lock()
	n0, tx0 := n, txs
	mu.Unlock()
	c0, w0 := cpuTime(), time.Now()
	time.Sleep(dur)
	c1, w1 := cpuTime(), time.Now()
	mu.Lock()
	beats, bad, writes := n-n0, failed, txs-tx0
	mu.Unlock()
	share := float64(c1-c0) / float64(w1.Sub(w0))
	t.Logf("100 nodes every %v, %v: %d heartbeats recorded (%.0f/s) in %d transactions, control plane CPU %v = %.2f%% of a core",
		interval, w1.Sub(w0).Round(time.Millisecond), beats, float64(beats)/w1.Sub(w0).Seconds(), writes, (c1 - c0).Round(time.Millisecond), 100*share)
	if bad > 0 {
		t.Fatalf("%d heartbeats failed to record", bad)
	}
	// Each node's latest report is written once per batch: at most one
	// row per node per second, at least 90% of the beats sent.
	if want := int(dur.Seconds() * 100 * 0.9 / max(interval.Seconds(), 1)); beats < want {
		t.Fatalf("only %d heartbeats in %v, want %d", beats, dur, want)
	}
	if !unbatched && writes > int(dur.Seconds())+1 {
		t.Fatalf("%d transactions in %v: not batched once a second", writes, dur)
	}
	if share > 0.05 {
		t.Fatalf("control plane used %.2f%% of a core, want < 5%%", 100*share)
	}
}
