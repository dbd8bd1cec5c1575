package service

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// TestCopyResumesDroppedStream: cp VM NEW --host H whose stream to H (a
// real fabric stream over the embedded NATS) drops half-way completes:
// H keeps its partial file and asks for the rest from the byte it had, the
// copy runs there with the source's data, and the answer says it resumed
// once and counts the stream's bytes once. A stream that drops every time
// fails the copy after the bounded tries, with nothing of it on H or in
// the control plane's store, and the source as it was.
func TestCopyResumesDroppedStream(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	src, err := svc.Create(ctx, th.alice, CreateRequest{Name: "orig", Image: "minimal", Host: "cp", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Stop(ctx, th.alice, "orig"); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(diskOf(th.cp, src.ID), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(bytes.Repeat([]byte("a copy over a dropped link;"), 200000))
	f.Close()
	want, _ := os.ReadFile(diskOf(th.cp, src.ID))
	var size countingWriter
	if err := svc.Engine.(engine.Transferer).ExportDisk(ctx, src.ID, &size); err != nil {
		t.Fatal(err)
	}

	drop := &droppingNode{Remote: th.remote, after: int64(size) / 2}
	svc.SetRemoteEngine(th.nodeID, drop)
	th.heartbeat(t)
	var steps []string
	var mu sync.Mutex
	far, err := svc.Copy(ctx, th.alice, "orig", CopyRequest{Name: "far", Host: "node-b"}, func(s string) { mu.Lock(); steps = append(steps, s); mu.Unlock() })
	if err != nil {
		t.Fatalf("copy over a stream dropped once: %v (steps %q)", err, steps)
	}
	if far.Host != "node-b" || far.Status != "running" || far.ID == src.ID || far.Transfer == nil {
		t.Fatalf("copy %+v", far)
	}
	if far.Transfer.Resumed != 1 || drop.streams.Load() != 2 {
		t.Errorf("resumed %d (streams %d), want 1 (2)", far.Transfer.Resumed, drop.streams.Load())
	}
	if far.Transfer.Bytes != int64(size) {
		t.Errorf("transfer counted %d bytes, want the stream's %d once", far.Transfer.Bytes, size)
	}
	if !strings.Contains(strings.Join(steps, "\n"), "transfer resumed at ") {
		t.Errorf("progress %q does not say it resumed", steps)
	}
	if got, err := os.ReadFile(diskOf(th.node, far.ID)); err != nil || len(got) != len(want) || !bytes.Equal(got[len(got)-1<<20:], want[len(want)-1<<20:]) {
		t.Errorf("copied disk differs: %d bytes, want %d (%v)", len(got), len(want), err)
	}
	t.Logf("resumed copy: %+v, steps %q", *far.Transfer, steps)

	// Dropped every time: the copy fails and leaves nothing.
	drop.every, drop.after = true, 256<<10
	th.heartbeat(t)
	if _, err := svc.Copy(ctx, th.alice, "orig", CopyRequest{Name: "stuck", Host: "node-b"}, nil); err == nil {
		t.Fatal("copy over a stream that always drops succeeded")
	} else {
		t.Logf("permanent drop: %v", err)
	}
	if _, err := svc.Get(ctx, th.alice, "stuck"); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("the failed copy is in the store: %v", err)
	}
	l, err := th.node.svc.Engine.List(ctx)
	if err != nil || len(l) != 1 || l[0].ID != far.ID {
		t.Errorf("node-b has %+v (%v), want only the first copy", l, err)
	}
	ents, _ := os.ReadDir(filepath.Join(th.node.dir, "state", "vms"))
	if len(ents) != 1 {
		t.Errorf("node-b has %d vm directories, want the first copy's only", len(ents))
	}
	if g, err := svc.Get(ctx, th.alice, "orig"); err != nil || g.Host != "cp" || g.Status != "stopped" {
		t.Errorf("source after the copies: %+v, %v", g, err)
	}
}
