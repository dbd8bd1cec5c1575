package service

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

// sent counts the bytes written to node-b's bundle streams, all of them.
var sent atomic.Int64

type sentWriter struct{ w io.Writer }

func (s sentWriter) Write(b []byte) (int, error) {
	n, err := s.w.Write(b)
	sent.Add(int64(n))
	return n, err
}

func (d *droppingNode) ImportBundleResuming(ctx context.Context, spec engine.ImportSpec, src engine.StreamSource, progress engine.Progress) (engine.Instance, error) {
	return d.Remote.ImportBundleResuming(ctx, spec, func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
		if d.streams.Add(1) == 1 || d.every {
			w = &closeAfter{c: w.(net.Conn), left: d.after}
		}
		return src(ctx, at, sentWriter{w})
	}, progress)
}

// TestMoveMemoryResumesDroppedStream: a move with memory from the control
// plane's host to node-b over a bundle stream (a real fabric stream over
// the embedded NATS) that drops every time fails after the bounded tries:
// the VM runs again on the control plane's host from its memory, node-b
// has nothing of it, and no move is recorded. Then the stream drops once,
// half-way: node-b keeps its partial file and asks for the rest from the
// byte it had, the VM resumes there from its memory (a restore, not a
// boot) with its disk intact, and the answer says it resumed once and
// counts the bundle's bytes once.
func TestMoveMemoryResumesDroppedStream(t *testing.T) {
	th := newTwoHosts(t)
	oneGuest(th)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	mk := func(name string) (string, []byte) {
		v, err := svc.Create(ctx, th.alice, CreateRequest{Name: name, Image: "minimal", Host: "cp", MemoryMiB: 256}, nil)
		if err != nil {
			t.Fatal(err)
		}
		src := diskOf(th.cp, v.ID)
		f, err := os.OpenFile(src, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(bytes.Repeat([]byte("memory move over a dropped link;"), 200000))
		f.Close()
		want, _ := os.ReadFile(src)
		return v.ID, want
	}
	id, want := mk("mover")
	// Dropped every time: the move fails and rolls back.
	drop := &droppingNode{Remote: th.remote, every: true, after: 256 << 10}
	svc.SetRemoteEngine(th.nodeID, drop)
	th.heartbeat(t)
	cpRestores := ops(th.cp, fake.OpRestore)
	t0 := time.Now()
	if _, err := svc.Move(ctx, th.alice, "mover", MoveRequest{Host: "node-b", Mode: "memory"}, nil); err == nil {
		t.Fatal("move over a stream that always drops succeeded")
	} else {
		t.Logf("permanent drop: %v after %s", err, time.Since(t0).Round(time.Millisecond))
	}
	g, err := svc.Get(ctx, th.alice, "mover")
	if err != nil || g.Host != "cp" || g.Status != "running" || g.Note != "" {
		t.Fatalf("after the failed move: %+v, %v; want running on cp", g, err)
	}
	if ops(th.cp, fake.OpRestore) != cpRestores+1 {
		t.Errorf("the source was not resumed from its memory")
	}
	if _, err := th.node.svc.Engine.Get(ctx, id); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("node-b kept a copy: %v", err)
	}
	if _, err := os.Stat(filepath.Join(th.node.dir, "state", "vms", id)); !os.IsNotExist(err) {
		t.Errorf("node-b kept files: %v", err)
	}
	if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
		t.Errorf("move records left: %+v", moves)
	}

	// Dropped once: resumed.
	drop = &droppingNode{Remote: th.remote, after: int64(len(want)) / 2}
	sent.Store(0)
	svc.SetRemoteEngine(th.nodeID, drop)

	th.heartbeat(t)
	restores, starts := ops(th.node, fake.OpRestore), ops(th.node, fake.OpStart)
	var steps []string
	var mu sync.Mutex
	m, err := svc.Move(ctx, th.alice, "mover", MoveRequest{Host: "node-b", Mode: "memory"}, func(s string) { mu.Lock(); steps = append(steps, s); mu.Unlock() })
	if err != nil {
		t.Fatalf("move --memory over a stream dropped once: %v (steps %q)", err, steps)
	}
	if m.Host != "node-b" || m.Status != "running" || m.Transfer == nil || m.Move == nil || m.Move.Mode != "memory" {
		t.Fatalf("moved %+v", m)
	}
	if m.Transfer.Resumed != 1 || drop.streams.Load() != 2 {
		t.Errorf("resumed %d (streams %d), want 1 (2)", m.Transfer.Resumed, drop.streams.Load())
	}
	if m.Transfer.Bytes < int64(len(want)) || m.Transfer.Bytes >= sent.Load() {
		t.Errorf("transfer counted %d bytes: want the bundle's once (the disk alone is %d, the streams carried %d)", m.Transfer.Bytes, len(want), sent.Load())
	}
	if !strings.Contains(strings.Join(steps, "\n"), "transfer resumed at ") {
		t.Errorf("progress %q does not say it resumed", steps)
	}
	if ops(th.node, fake.OpRestore) != restores+1 || ops(th.node, fake.OpStart) != starts {
		t.Errorf("node-b restored %d and booted %d times, want a restore", ops(th.node, fake.OpRestore)-restores, ops(th.node, fake.OpStart)-starts)
	}
	if got, err := os.ReadFile(diskOf(th.node, id)); err != nil || len(got) != len(want) || !bytes.Equal(got[len(got)-4<<20:], want[len(want)-4<<20:]) {
		t.Errorf("moved disk differs: %d bytes, want %d (%v)", len(got), len(want), err)
	}
	t.Logf("resumed move --memory: transfer %+v, move %+v, steps %q", *m.Transfer, *m.Move, steps)

}
