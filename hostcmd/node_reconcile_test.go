package hostcmd

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm/engine"
)

// countingEngine counts Reconcile calls; nothing else is called.
type countingEngine struct {
	engine.Engine
	n atomic.Int32
}

func (e *countingEngine) Reconcile(context.Context) error { e.n.Add(1); return nil }
func (e *countingEngine) OnExit(engine.ExitFunc)          {}

// TestNodeReconciles: a node reconciles its engine every
// NodeReconcileEvery (so exits reach the control plane), as serve does.
func TestNodeReconciles(t *testing.T) {
	seed, pub, err := fabric.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	fsrv, err := fabric.Start(fabric.Config{Listen: "127.0.0.1:0", StoreDir: t.TempDir(),
		NodeKey: func(p string) (string, bool) { return "node-r", p == pub }})
	if err != nil {
		t.Fatal(err)
	}
	defer fsrv.Close()
	conn, err := nodeagent.Connect(nodeagent.Credential{HostID: "node-r", Name: "r", NATS: []string{fsrv.ClientURL()}, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	old := NodeReconcileEvery
	NodeReconcileEvery = 50 * time.Millisecond
	defer func() { NodeReconcileEvery = old }()
	eng := &countingEngine{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serveNode(ctx, nodeagent.Config{ID: "node-r", Conn: conn, StateDir: t.TempDir(), Version: "v", Interval: time.Second}, eng, nil, nil)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for eng.n.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("reconciled %d times in 10 s", eng.n.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
