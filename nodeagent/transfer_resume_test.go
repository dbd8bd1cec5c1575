package nodeagent_test

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// cutProxy is a TCP proxy on loopback that drops connections: each of
// the next `cuts` connections is closed (both ways) once `after` bytes
// went from its client to the upstream; every connection after those
// when `every` is set.
type cutProxy struct {
	ln       net.Listener
	upstream atomic.Value // string
	after    atomic.Int64
	cuts     atomic.Int64
	every    atomic.Bool
	conns    atomic.Int64
	cutDone  atomic.Int64
	wg       sync.WaitGroup
	// stall: a cut stops forwarding both ways and leaves both
	// connections open (a silent drop) instead of resetting them.
	stall   atomic.Bool
	stalled atomic.Int64 // unix nanoseconds of the last stall
	// down: `after` counts the bytes from the upstream to the client (a
	// stream the listener's side writes) instead; a cut resets both.
	down atomic.Bool
	quit chan struct{}
}

func newCutProxy(t *testing.T) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, quit: make(chan struct{})}
	t.Cleanup(func() { ln.Close(); close(p.quit); p.wg.Wait() })
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(c) }()
		}
	}()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

// cut arms the next n connections to drop after `after` client bytes.
func (p *cutProxy) cut(n, after int64) { p.after.Store(after); p.cuts.Store(n) }

func (p *cutProxy) serve(c net.Conn) {
	defer c.Close()
	p.conns.Add(1)
	u, err := net.Dial("tcp", p.upstream.Load().(string))
	if err != nil {
		return
	}
	defer u.Close()
	limit := int64(-1)
	if p.every.Load() || p.cuts.Add(-1) >= 0 {
		limit = p.after.Load()
	}
	var stalled atomic.Bool
	down := limit >= 0 && p.down.Load()
	go func() {
		// Upstream to client, until the stall (if any).
		b := make([]byte, 64<<10)
		left := limit
		for {
			n, err := u.Read(b)
			if stalled.Load() {
				<-p.quit
				return
			}
			if down && int64(n) >= left {
				p.cutDone.Add(1)
				c.Write(b[:left])
				if tc, ok := c.(*net.TCPConn); ok {
					tc.SetLinger(0)
				}
				c.Close()
				u.Close()
				return
			}
			left -= int64(n)
			if n > 0 {
				if _, err := c.Write(b[:n]); err != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		c.Close()
	}()
	if limit < 0 || down {
		io.Copy(u, c)
		return
	}
	io.CopyN(u, c, limit)
	p.cutDone.Add(1)
	if p.stall.Load() {
		// The silent drop: nothing moves either way, nothing closes.
		stalled.Store(true)
		p.stalled.Store(time.Now().UnixNano())
		<-p.quit
		return
	}
	// The cut: both ways, at once (a reset link).
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
	u.Close()
}

// directVia is e.direct whose advertised address is proxy's.
func (e *directEnv) directVia(t *testing.T, id string, p *cutProxy) *nodeagent.Direct {
	t.Helper()
	d, err := nodeagent.NewDirect(nodeagent.DirectConfig{ID: id, Listen: "127.0.0.1:0", Advertise: p.addr(), CA: e.caPEM})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	p.upstream.Store(d.BoundAddr())
	return d
}

// stoppedWithData makes a stopped instance on fl (through r) whose disk
// holds 64 MiB of pattern 0x5a, and the length of its whole disk stream.
func stoppedWithData(t *testing.T, ctx context.Context, r *nodeagent.Remote, fl *fakeLocal, name string) (engine.Instance, int64) {
	t.Helper()
	inst, err := r.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: name, Owner: fl.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Stop(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, filepath.Join(fl.dir, "state", "vms", inst.ID, "disk.qcow2"), "write -P 0x5a 0 64M")
	var cw byteCount
	if err := fl.eng.ExportDisk(ctx, inst.ID, &cw); err != nil {
		t.Fatal(err)
	}
	return inst, cw.n
}

type byteCount struct{ n int64 }

func (c *byteCount) Write(b []byte) (int, error) { c.n += int64(len(b)); return len(b), nil }

// nothingOn fails t if fl holds anything of instance id.
func nothingOn(t *testing.T, ctx context.Context, r *nodeagent.Remote, fl *fakeLocal, id string) {
	t.Helper()
	if _, err := r.Get(ctx, id); err == nil {
		t.Error("the target kept an instance of the failed import")
	}
	if _, err := os.Stat(filepath.Join(fl.dir, "state", "vms", id)); !os.IsNotExist(err) {
		t.Errorf("the target kept files of the failed import: %v", err)
	}
}

// TestDiskResumesNodeToNode: a node-to-node disk stream over real mTLS
// whose TCP connection a proxy resets after 20 MiB resumes (the target
// keeps its partial file, a new single-use ticket, the source exports
// from the target's offset): the disk arrives byte-identical (qemu-io),
// the byte count is the stream's once, and the control plane's progress
// says it resumed. A link that drops every connection fails after the
// bounded retries and leaves nothing on the target.
func TestDiskResumesNodeToNode(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("needs qemu-io")
	}
	defer nodeagent.SetResumeTiming(3, 20*time.Millisecond, 3*time.Second)()
	a, b := newFakeLocal(t), newFakeLocal(t)
	e := newDirectEnv(t)
	proxy := newCutProxy(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.direct(t, "node-a"))
	serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.directVia(t, "node-b", proxy))
	ra, rb := e.directRemote(t, "node-a", a), e.directRemote(t, "node-b", b)
	waitServed(t, ra)
	waitServed(t, rb)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	inst, size := stoppedWithData(t, ctx, ra, a, "mover")

	proxy.cut(1, 20<<20)
	var steps []string
	var mu sync.Mutex
	got, n, err := rb.ImportDiskFromPeer(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, ra,
		func(s string) { mu.Lock(); steps = append(steps, s); mu.Unlock() })
	if err != nil {
		t.Fatalf("node-to-node import over a link cut once: %v (steps %q)", err, steps)
	}
	if proxy.cutDone.Load() != 1 || proxy.conns.Load() < 2 {
		t.Fatalf("the proxy cut %d of %d connections, want 1 cut and a new connection", proxy.cutDone.Load(), proxy.conns.Load())
	}
	if n != size {
		t.Errorf("stream of %d bytes reported, want %d (counted once)", n, size)
	}
	if rb.ResumeCount() != 1 || !strings.Contains(strings.Join(steps, "\n"), "transfer resumed at ") {
		t.Errorf("resumed %d times, progress %q; want once, said", rb.ResumeCount(), steps)
	}
	if strings.Contains(strings.Join(steps, ","), "\x00") {
		t.Errorf("progress %q", steps)
	}
	if got.ID != inst.ID || got.State != vm.Stopped {
		t.Fatalf("imported %+v", got)
	}
	qemuIO(t, filepath.Join(b.dir, "state", "vms", got.ID, "disk.qcow2"), "read -P 0x5a 0 64M")
	t.Logf("resumed after a cut at 20 MiB: %d connections, progress %q", proxy.conns.Load(), steps)

	// Permanently bad: every connection drops after 4 MiB.
	if err := rb.Destroy(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	proxy.cut(0, 4<<20)
	proxy.every.Store(true)
	t0 := time.Now()
	_, _, err = rb.ImportDiskFromPeer(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, ra, nil)
	if err == nil {
		t.Fatal("an import over a link that drops every connection succeeded")
	}
	t.Logf("permanent cut: %v after %s", err, time.Since(t0).Round(time.Millisecond))
	if c := rb.ResumeCount(); c != 1+3 {
		t.Errorf("resumed %d times in all, want 1 + 3 (the bound)", c)
	}
	nothingOn(t, ctx, rb, b, inst.ID)
	if _, err := ra.Get(ctx, inst.ID); err != nil {
		t.Errorf("the source lost its instance: %v", err)
	}
}

// TestDiskImportResumesDirect: the control plane's own stream to the
// target (over the direct mTLS path, through a proxy that resets it
// after 20 MiB) resumes from the target's offset with the source's
// export from there; the disk arrives byte-identical. A permanent cut
// fails cleanly.
func TestDiskImportResumesDirect(t *testing.T) { testImportResumes(t, true) }

// TestDiskImportResumesOverNATS is the same over a fabric stream (real
// NATS), which the node drops after 20 MiB.
func TestDiskImportResumesOverNATS(t *testing.T) { testImportResumes(t, false) }

func testImportResumes(t *testing.T, direct bool) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("needs qemu-io")
	}
	defer nodeagent.SetResumeTiming(3, 20*time.Millisecond, 3*time.Second)()
	a, b := newFakeLocal(t), newFakeLocal(t)
	var ra, rb *nodeagent.Remote
	var proxy *cutProxy
	if direct {
		e := newDirectEnv(t)
		proxy = newCutProxy(t)
		serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.direct(t, "node-a"))
		serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.directVia(t, "node-b", proxy))
		ra, rb = e.directRemote(t, "node-a", a), e.directRemote(t, "node-b", b)
	} else {
		c := newCluster(t)
		serve(t, "node-a", c.node(t, "node-a"), a.eng)
		serve(t, "node-b", c.node(t, "node-b"), b.eng)
		ra, rb = c.remote(t, "node-a", a), c.remote(t, "node-b", b)
	}
	waitServed(t, ra)
	waitServed(t, rb)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	inst, _ := stoppedWithData(t, ctx, ra, a, "mover")
	var offsets []int64
	var mu sync.Mutex
	// The source is node-a's export relayed by the control plane, as in
	// a relayed move, resumed on its side too.
	src := func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
		mu.Lock()
		offsets = append(offsets, at.Offset)
		mu.Unlock()
		return engine.ExportResumingFrom(ctx, ra, inst.ID, at.Offset, w, engine.ResumePolicy{Backoff: 10 * time.Millisecond})
	}
	if direct {
		proxy.cut(1, 20<<20)
	} else {
		nodeagent.CutImport(20 << 20)
	}
	var steps []string
	got, err := rb.ImportDiskResuming(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, src,
		func(s string) { mu.Lock(); steps = append(steps, s); mu.Unlock() })
	if err != nil {
		t.Fatalf("import over a stream cut once: %v (steps %q)", err, steps)
	}
	if direct && proxy.cutDone.Load() != 1 {
		t.Errorf("the proxy cut %d connections, want 1", proxy.cutDone.Load())
	}
	if rb.ResumeCount() != 1 || len(offsets) != 2 || offsets[0] != 0 || offsets[1] < 19<<20 || offsets[1] > 20<<20 {
		t.Errorf("resumed %d times, source offsets %v; want once, from 0 then from about 20 MiB", rb.ResumeCount(), offsets)
	}
	if !strings.Contains(strings.Join(steps, "\n"), "transfer resumed at ") || strings.Contains(strings.Join(steps, ","), "\x00") {
		t.Errorf("progress %q", steps)
	}
	qemuIO(t, filepath.Join(b.dir, "state", "vms", got.ID, "disk.qcow2"), "read -P 0x5a 0 64M")

	// A permanent cut: the node gives up after the bound and undoes itself.
	if err := rb.Destroy(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if direct {
		proxy.cut(0, 4<<20)
		proxy.every.Store(true)
	} else {
		// The source's export fails for good after 4 MiB each time.
		ra.CutExport(0)
		src = func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
			return engine.ExportResumingFrom(ctx, ra, inst.ID, at.Offset, &limitWriter{w: w, left: 4 << 20}, engine.ResumePolicy{Tries: -1})
		}
		nodeagent.CutImport(4 << 20)
	}
	before := rb.ResumeCount()
	if _, err := rb.ImportDiskResuming(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, src, nil); err == nil {
		t.Fatal("an import over a stream that always drops succeeded")
	} else {
		t.Logf("permanent cut: %v", err)
	}
	if c := rb.ResumeCount() - before; c != 3 {
		t.Errorf("resumed %d times, want 3 (the bound)", c)
	}
	nothingOn(t, ctx, rb, b, inst.ID)
}

// limitWriter takes left bytes, then fails as a dropped connection.
type limitWriter struct {
	w    io.Writer
	left int64
}

func (l *limitWriter) Write(b []byte) (int, error) {
	if int64(len(b)) > l.left {
		n, _ := l.w.Write(b[:l.left])
		l.left = 0
		return n, io.ErrClosedPipe
	}
	n, err := l.w.Write(b)
	l.left -= int64(n)
	return n, err
}

// TestDiskResumesAfterSilentStall: a node-to-node disk stream whose link
// silently stops moving anything after 20 MiB (a proxy that stops
// forwarding both ways and closes nothing: no reset, no FIN) is found
// stalled by the progress deadline on both ends and resumes, with the
// real stall deadline and resume timing, within 10 s of the stall (it
// took 30 s, the idle deadline, before); the disk arrives byte-identical
// and the byte count is the stream's once.
func TestDiskResumesAfterSilentStall(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("needs qemu-io")
	}
	a, b := newFakeLocal(t), newFakeLocal(t)
	e := newDirectEnv(t)
	proxy := newCutProxy(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.direct(t, "node-a"))
	serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.directVia(t, "node-b", proxy))
	ra, rb := e.directRemote(t, "node-a", a), e.directRemote(t, "node-b", b)
	waitServed(t, ra)
	waitServed(t, rb)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	inst, size := stoppedWithData(t, ctx, ra, a, "mover")

	proxy.stall.Store(true)
	proxy.cut(1, 20<<20)
	var steps []string
	var resumedAt time.Time
	var mu sync.Mutex
	got, n, err := rb.ImportDiskFromPeer(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, ra,
		func(s string) {
			mu.Lock()
			defer mu.Unlock()
			steps = append(steps, s)
			if strings.HasPrefix(s, "transfer resumed at ") && resumedAt.IsZero() {
				resumedAt = time.Now()
			}
		})
	done := time.Now()
	if err != nil {
		t.Fatalf("node-to-node import over a link that stalled once: %v (steps %q)", err, steps)
	}
	if proxy.cutDone.Load() != 1 || proxy.conns.Load() < 2 || proxy.stalled.Load() == 0 {
		t.Fatalf("the proxy stalled %d of %d connections, want 1 stall and a new connection", proxy.cutDone.Load(), proxy.conns.Load())
	}
	stalled := time.Unix(0, proxy.stalled.Load())
	mu.Lock()
	if resumedAt.IsZero() {
		t.Fatalf("no resumption said: %q", steps)
	}
	detect, finish := resumedAt.Sub(stalled), done.Sub(stalled)
	mu.Unlock()
	t.Logf("stall at 20 MiB: resumption asked %s after it, import done %s after it", detect.Round(time.Millisecond), finish.Round(time.Millisecond))
	if detect > 10*time.Second {
		t.Errorf("the stall was found and resumed %s after it happened, want < 10 s", detect)
	}
	if n != size {
		t.Errorf("stream of %d bytes reported, want %d (counted once)", n, size)
	}
	if rb.ResumeCount() != 1 {
		t.Errorf("resumed %d times, want once", rb.ResumeCount())
	}
	if got.ID != inst.ID || got.State != vm.Stopped {
		t.Fatalf("imported %+v", got)
	}
	qemuIO(t, filepath.Join(b.dir, "state", "vms", got.ID, "disk.qcow2"), "read -P 0x5a 0 64M")
}
