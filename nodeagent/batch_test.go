package nodeagent_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/nodeagent"
)

// TestListenBatched: three node agents heartbeating every 50 ms over a
// real fabric reach the control plane as one batch per interval (400 ms)
// holding each node's latest report, with the address each node reaches
// the fabric from; after stop, nothing more is delivered.
func TestListenBatched(t *testing.T) {
	type nodeKey struct{ id, seed, pub string }
	var nodes []nodeKey
	keys := map[string]string{}
	for i := 0; i < 3; i++ {
		seed, pub, _ := fabric.NewNodeKey()
		n := nodeKey{fmt.Sprintf("n%d", i), seed, pub}
		nodes = append(nodes, n)
		keys[pub] = n.id
	}
	srv, err := fabric.Start(fabric.Config{Listen: "127.0.0.1:0", StoreDir: t.TempDir(),
		NodeKey: func(p string) (string, bool) { id, ok := keys[p]; return id, ok }})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	control, err := srv.Control("control")
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()

	var mu sync.Mutex
	var batches []map[string]nodeagent.Heartbeat
	var calls []time.Time
	stop, err := nodeagent.ListenBatched(control, 400*time.Millisecond, func(b map[string]nodeagent.Heartbeat) {
		mu.Lock()
		batches = append(batches, b)
		calls = append(calls, time.Now())
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	control.Flush(context.Background())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for _, n := range nodes {
		conn, err := fabric.ConnectNode(srv.ClientURL(), n.id, n.seed)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			nodeagent.Run(ctx, nodeagent.Config{ID: id, Conn: conn, Version: "v-" + id, Interval: 50 * time.Millisecond,
				Probe: func() (nodeagent.Capacity, error) { return nodeagent.Capacity{CPUs: 2}, nil }})
		}(n.id)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	nAfterStop := len(batches)
	mu.Unlock()
	time.Sleep(600 * time.Millisecond)
	cancel()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if len(batches) != nAfterStop {
		t.Fatalf("%d batches after stop", len(batches)-nAfterStop)
	}
	// ~1.5 s at 400 ms: 3 or 4 batches (the last one at stop), never one
	// per heartbeat (~90 of them).
	if len(batches) < 3 || len(batches) > 5 {
		t.Fatalf("%d batches in 1.5 s at a 400 ms interval", len(batches))
	}
	for i := 1; i < len(calls)-1; i++ {
		if d := calls[i].Sub(calls[i-1]); d < 300*time.Millisecond {
			t.Fatalf("batches %d and %d only %v apart", i-1, i, d)
		}
	}
	full := 0
	for _, b := range batches {
		if len(b) == 3 {
			full++
		}
		for id, hb := range b {
			if hb.Version != "v-"+id || hb.CPUs != 2 {
				t.Fatalf("batch entry %s: %+v", id, hb)
			}
			if hb.Address != "127.0.0.1" {
				t.Fatalf("node %s reported address %q, want 127.0.0.1", id, hb.Address)
			}
		}
	}
	if full < 2 {
		t.Fatalf("only %d of %d batches hold all three nodes: %v", full, len(batches), batches)
	}
}
