package nodeagent_test

import (
	"context"
	"net"
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

// TestCancelMovesEndsAStuckMigration: a live migration whose relay (the
// control plane splicing its two channels) died holds the source's
// instance for ever (e2e TestMultiHostMoveCrash live/mirrored/cp: the
// source's QEMU kept writing into streams nobody read, the resume of
// the restarted control plane's settling timed out, never settled).
// CancelMoves ends it at once.
func TestCancelMovesEndsAStuckMigration(t *testing.T) {
	a := newFakeLocal(t)
	data := make([]byte, 8<<20)
	ea := &liveEngine{Engine: a.eng, want: len(data), data: data, got: make(chan string, 4), ended: make(chan error, 1)}
	c := newCluster(t)
	serve(t, "node-a", c.node(t, "node-a"), ea)
	dead, fresh := c.remote(t, "node-a", a), c.remote(t, "node-a", a)
	waitServed(t, dead)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id := "0123456789ab"
	// The relay's ends of both channels: never read (it died).
	nbd, nbdPeer := net.Pipe()
	mig, migPeer := net.Pipe()
	defer nbdPeer.Close()
	defer migPeer.Close()
	go dead.MigrateOut(context.Background(), id, "", nbd, mig, nil)
	time.Sleep(time.Second) // the node's writes now wait on the window
	select {
	case err := <-ea.ended:
		t.Fatalf("the migration ended by itself: %v", err)
	default:
	}
	n, err := fresh.CancelMoves(ctx, id)
	if err != nil || n != 1 {
		t.Fatalf("cancel moves: %d, %v; want 1 call cancelled", n, err)
	}
	select {
	case err := <-ea.ended:
		if err == nil {
			t.Fatal("the cancelled migration succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the migration still runs 10 s after its call was cancelled")
	}
}
