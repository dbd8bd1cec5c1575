package nodeagent_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// stuckWriter takes the first bytes of a stream and then blocks, as the
// relay of a control plane that died mid-move: its end of the stream is
// never read again, so the node's writes stop at the stream's window.
type stuckWriter struct {
	took  chan struct{}
	block chan struct{}
	n     int
}

func (w *stuckWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	if w.n > 64<<10 {
		select {
		case <-w.took:
		default:
			close(w.took)
		}
		<-w.block
	}
	return len(p), nil
}

// TestCancelMovesEndsAStuckExport: a disk export whose relay stopped
// reading (the control plane that called it died; no cancel came) holds
// the instance's lock until its idle deadline (30 s: e2e
// TestMultiHostMoveCrash memory/transfer/cp waited that long). A restarted
// control plane's CancelMoves ends it at once: the call is cancelled and
// its stream closed, so the instance can be started again within seconds.
func TestCancelMovesEndsAStuckExport(t *testing.T) {
	a := newFakeLocal(t)
	c := newCluster(t)
	serve(t, "node-a", c.node(t, "node-a"), a.eng)
	dead, fresh := c.remote(t, "node-a", a), c.remote(t, "node-a", a)
	waitServed(t, dead)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := fresh.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "stuck", Owner: a.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.Stop(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	// A disk of some MiB, beyond the stream's window.
	f, err := os.OpenFile(filepath.Join(a.dir, "state", "vms", inst.ID, "disk.qcow2"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, 8<<20))
	f.Close()

	if n, err := fresh.CancelMoves(ctx, inst.ID); err != nil || n != 0 {
		t.Fatalf("cancel moves with none running: %d, %v", n, err)
	}
	w := &stuckWriter{took: make(chan struct{}), block: make(chan struct{})}
	defer close(w.block)
	go dead.ExportDisk(context.Background(), inst.ID, w) // its caller never cancels
	select {
	case <-w.took:
	case <-ctx.Done():
		t.Fatal("the export never started")
	}
	time.Sleep(200 * time.Millisecond) // the node's writes now wait on the window
	n, err := fresh.CancelMoves(ctx, inst.ID)
	if err != nil || n != 1 {
		t.Fatalf("cancel moves: %d, %v; want 1 call cancelled", n, err)
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	t0 := time.Now()
	if _, err := fresh.Start(sctx, inst.ID, nil); err != nil {
		t.Fatalf("start after the cancelled export: %v after %s (the export still holds the instance)", err, time.Since(t0).Round(time.Millisecond))
	}
	t.Logf("started %s after cancelling the stuck export", time.Since(t0).Round(time.Millisecond))
	if _, err := fresh.CancelMoves(ctx, "not an id"); err == nil {
		t.Error("cancel moves of a bad id: no error")
	}
}
