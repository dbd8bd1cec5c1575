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
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm/engine"
)

// droppingNode is node-b's Remote whose streams to the node (real fabric
// streams over the embedded NATS) the control plane closes after `after`
// bytes: the first one only, or every one.
type droppingNode struct {
	*nodeagent.Remote
	after   int64
	every   bool
	streams atomic.Int32
}

func (d *droppingNode) ImportDiskResuming(ctx context.Context, spec engine.ImportSpec, src engine.StreamSource, progress engine.Progress) (engine.Instance, error) {
	return d.Remote.ImportDiskResuming(ctx, spec, func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
		if d.streams.Add(1) == 1 || d.every {
			w = &closeAfter{c: w.(net.Conn), left: d.after}
		}
		return src(ctx, at, w)
	}, progress)
}

// closeAfter writes left bytes to c, then closes c: the stream drops.
type closeAfter struct {
	c    net.Conn
	left int64
}

func (c *closeAfter) Write(b []byte) (int, error) {
	if int64(len(b)) >= c.left {
		n, _ := c.c.Write(b[:c.left])
		c.left = 0
		c.c.Close()
		return n, net.ErrClosed
	}
	n, err := c.c.Write(b)
	c.left -= int64(n)
	return n, err
}

// TestMoveResumesDroppedStream: a cold move from the control plane's host
// to node-b whose stream to node-b drops half-way completes: node-b asks
// for the rest from the byte it had, the disk arrives byte-identical,
// the answer says it resumed once and counts the stream's bytes once.
// A stream that drops every time fails the move after the bounded
// retries: the VM stays on the control plane's host and node-b has
// nothing of it.
func TestMoveResumesDroppedStream(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	mk := func(name string) (string, []byte, int64) {
		v, err := svc.Create(ctx, th.alice, CreateRequest{Name: name, Image: "minimal", Host: "cp", MemoryMiB: 256}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Stop(ctx, th.alice, name); err != nil {
			t.Fatal(err)
		}
		src := diskOf(th.cp, v.ID)
		f, err := os.OpenFile(src, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(bytes.Repeat([]byte("data to carry across a dropped link;"), 200000))
		f.Close()
		want, _ := os.ReadFile(src)
		var n countingWriter
		if err := svc.Engine.(engine.Transferer).ExportDisk(ctx, v.ID, &n); err != nil {
			t.Fatal(err)
		}
		return v.ID, want, int64(n)
	}
	id, want, size := mk("mover")
	drop := &droppingNode{Remote: th.remote, after: size / 2}
	svc.SetRemoteEngine(th.nodeID, drop)

	th.heartbeat(t)
	var steps []string
	var mu sync.Mutex
	m, err := svc.Move(ctx, th.alice, "mover", MoveRequest{Host: "node-b"}, func(s string) { mu.Lock(); steps = append(steps, s); mu.Unlock() })
	if err != nil {
		t.Fatalf("move over a stream dropped once: %v (steps %q)", err, steps)
	}
	if m.Host != "node-b" || m.Transfer == nil {
		t.Fatalf("moved %+v", m)
	}
	if m.Transfer.Resumed != 1 || drop.streams.Load() != 2 {
		t.Errorf("resumed %d (streams %d), want 1 (2)", m.Transfer.Resumed, drop.streams.Load())
	}
	if m.Transfer.Bytes != size {
		t.Errorf("transfer counted %d bytes, want the stream's %d once", m.Transfer.Bytes, size)
	}
	if !strings.Contains(strings.Join(steps, "\n"), "transfer resumed at ") {
		t.Errorf("progress %q does not say it resumed", steps)
	}
	if got, err := os.ReadFile(diskOf(th.node, id)); err != nil || len(got) != len(want) || !bytes.Equal(got[len(got)-1<<20:], want[len(want)-1<<20:]) {
		// The header (backing file path) differs after the rebase; the
		// data after it must not.
		t.Errorf("moved disk differs: %d bytes, want %d (%v)", len(got), len(want), err)
	}
	t.Logf("resumed move: %+v, steps %q", *m.Transfer, steps)

	// Dropped every time: the move fails and rolls back.
	_, _, _ = mk("stuck")
	drop.every, drop.after = true, 256<<10
	th.heartbeat(t)
	t0 := time.Now()
	if _, err := svc.Move(ctx, th.alice, "stuck", MoveRequest{Host: "node-b"}, nil); err == nil {
		t.Fatal("move over a stream that always drops succeeded")
	} else {
		t.Logf("permanent drop: %v after %s", err, time.Since(t0).Round(time.Millisecond))
	}
	g, err := svc.Get(ctx, th.alice, "stuck")
	if err != nil || g.Host != "cp" || g.Status != "stopped" {
		t.Fatalf("after the failed move: %+v, %v; want stopped on cp", g, err)
	}
	sid := mustID(t, svc, th.alice, "stuck")
	if _, err := th.node.svc.Engine.Get(ctx, sid); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("node-b kept a copy: %v", err)
	}
	if _, err := os.Stat(filepath.Join(th.node.dir, "state", "vms", sid)); !os.IsNotExist(err) {
		t.Errorf("node-b kept files: %v", err)
	}
	if svc.moveRecorded(ctx, sid) {
		t.Error("the failed move is still recorded")
	}
}

type countingWriter int64

func (c *countingWriter) Write(b []byte) (int, error) {
	*c += countingWriter(len(b))
	return len(b), nil
}
