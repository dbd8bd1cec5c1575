package nodeagent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake/fakeagent"
)

// ramDriver is the fake driver with a RAM file per VM in dir
// (hypervisor.RAMKeeper), kept as the qemu driver keeps it: a second
// link named from the state dir (memory.ram), adopted on restore.
type ramDriver struct {
	*fakeagent.AgentDriver
	dir  string
	size int64
	mu   sync.Mutex
	ids  map[int]string // pid -> vm id
}

var _ hypervisor.RAMKeeper = (*ramDriver)(nil)

func (d *ramDriver) ramOf(id string) string { return filepath.Join(d.dir, id+".ram") }

// dirty writes into instance id's RAM file, as a running guest would,
// until the returned stop is called (it waits for the writer to end).
func (d *ramDriver) dirty(id string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f, _ := os.OpenFile(d.ramOf(id), os.O_WRONLY, 0)
		defer f.Close()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			f.WriteAt([]byte{byte(i), byte(i >> 8)}, int64(i*7919*4096)%d.size)
			time.Sleep(50 * time.Microsecond)
		}
	}()
	return func() { close(done); wg.Wait() }
}

func (d *ramDriver) note(id string, h *hypervisor.Handle, err error) (*hypervisor.Handle, error) {
	if err == nil {
		d.mu.Lock()
		d.ids[h.PID] = id
		d.mu.Unlock()
	}
	return h, err
}

func (d *ramDriver) id(h *hypervisor.Handle) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ids[h.PID]
}

// Start gives the VM a RAM file of random bytes.
func (d *ramDriver) Start(ctx context.Context, spec hypervisor.Spec) (*hypervisor.Handle, error) {
	b := make([]byte, d.size)
	rand.Read(b[:d.size/2]) // the rest: never touched
	if err := os.WriteFile(d.ramOf(spec.ID), b, 0o600); err != nil {
		return nil, err
	}
	h, err := d.AgentDriver.Start(ctx, spec)
	return d.note(spec.ID, h, err)
}

func (d *ramDriver) adopt(id, dir string) error {
	cp := d.StateRAM(dir)
	if cp == "" {
		return nil // a state that carries its RAM
	}
	os.Remove(d.ramOf(id))
	return os.Link(cp, d.ramOf(id))
}

func (d *ramDriver) Restore(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	if err := d.adopt(spec.ID, dir); err != nil {
		return nil, err
	}
	h, err := d.AgentDriver.Restore(ctx, spec, dir)
	return d.note(spec.ID, h, err)
}

func (d *ramDriver) RestoreCopy(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	if err := d.adopt(spec.ID, dir); err != nil {
		return nil, err
	}
	h, err := d.AgentDriver.RestoreCopy(ctx, spec, dir)
	return d.note(spec.ID, h, err)
}

func (d *ramDriver) Kill(ctx context.Context, h *hypervisor.Handle) error {
	os.Remove(d.ramOf(d.id(h)))
	return d.AgentDriver.Kill(ctx, h)
}

func (d *ramDriver) RAMFile(h *hypervisor.Handle) (string, int64, error) {
	return d.ramOf(d.id(h)), d.size, nil
}

// pausedRAM is set by SaveStateKeepRAM: the RAM as the guest left it.
var pausedRAM atomic.Pointer[[]byte]

func (d *ramDriver) SaveStateKeepRAM(ctx context.Context, h *hypervisor.Handle, dir string) error {
	if err := d.AgentDriver.SaveState(ctx, h, dir); err != nil {
		return err
	}
	ram := d.ramOf(d.id(h))
	b, _ := os.ReadFile(ram)
	pausedRAM.Store(&b)
	cp := filepath.Join(d.dir, "kept-"+filepath.Base(dir)+"-"+d.id(h)+".ram")
	if err := os.Link(ram, cp); err != nil {
		return err
	}
	return os.Symlink(cp, filepath.Join(dir, "memory.ram"))
}

func (d *ramDriver) StateRAM(dir string) string {
	cp, _ := os.Readlink(filepath.Join(dir, "memory.ram"))
	return cp
}

func (d *ramDriver) NewRAMFile(size int64) (string, error) {
	f, err := os.CreateTemp(d.dir, "copy-*.ram")
	if err != nil {
		return "", err
	}
	defer f.Close()
	return f.Name(), f.Truncate(size)
}

func (d *ramDriver) AdoptRAM(dir, path string) error {
	return os.Symlink(path, filepath.Join(dir, "memory.ram"))
}

func (d *ramDriver) DiscardCopy(dir string) error {
	if cp := d.StateRAM(dir); cp != "" {
		os.Remove(cp)
	}
	return os.Remove(filepath.Join(dir, "memory.ram"))
}

func newRAMLocal(t *testing.T) (*fakeLocal, *ramDriver) {
	var rd *ramDriver
	fl := newFakeLocalWith(t, func(d *fakeagent.AgentDriver) hypervisor.Driver {
		rd = &ramDriver{AgentDriver: d, dir: t.TempDir(), size: 16 << 20, ids: map[int]string{}}
		return rd
	})
	return fl, rd
}

// TestPreCopyMovesNodeToNode: the RAM of a running instance on node-a,
// written by its "guest" all through the pre-copy, goes to node-b node to
// node (the control plane opens no stream); after the suspend only what
// changed ships in the bundle, and the instance resumes on node-b on a RAM
// file byte for byte the source's at its pause. A bundle whose pre-copy
// node-b no longer holds (dropped) fails its import and leaves nothing,
// and the source resumes on its kept RAM.
func TestPreCopyMovesNodeToNode(t *testing.T) {
	a, ra0 := newRAMLocal(t)
	b, rb0 := newRAMLocal(t)
	b.drv.SetServer(a.drv.Server())
	e := newDirectEnv(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.direct(t, "node-a"))
	serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.direct(t, "node-b"))
	ra, rb := e.directRemote(t, "node-a", a), e.directRemote(t, "node-b", b)
	waitServed(t, ra)
	waitServed(t, rb)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	trust, err := rb.AgentTrustKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	move := func(name string, drop bool) (engine.Instance, engine.Instance, int64, error) {
		inst, err := ra.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: name, Owner: a.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The guest writes while the pre-copy runs.
		stop := ra0.dirty(inst.ID)
		n, err := rb.PreCopyFromPeer(ctx, inst.ID, ra, nil)
		stop()
		if err != nil || n < ra0.size/2 {
			t.Fatalf("pre-copy: %d bytes, %v", n, err)
		}
		if drop {
			rb.DropPreCopy(ctx, inst.ID)
		}
		if err := ra.Suspend(ctx, inst.ID, trust); err != nil {
			t.Fatalf("suspend: %v", err)
		}
		got, bn, err := rb.ImportBundleFromPeer(ctx, engine.ImportSpec{ID: inst.ID, Name: name, Owner: b.owner}, ra, nil)
		return inst, got, bn, err
	}

	// The target dropped its pre-copy: the import fails, nothing is left
	// on node-b, and node-a resumes on its kept RAM.
	inst, _, _, err := move("dropped", true)
	if err == nil || errors.Is(err, engine.ErrNoPeerPath) || errs.ClassOf(err) != errs.FailedPrecondition || !strings.Contains(err.Error(), "pre-copy") {
		t.Fatalf("bundle whose pre-copy was dropped: %v, want the import's FailedPrecondition", err)
	}
	nothingOn(t, ctx, rb, b, inst.ID)
	if back, err := ra.Resume(ctx, inst.ID); err != nil || back.State != vm.Running {
		t.Fatalf("resume on node-a: %+v, %v", back, err)
	}
	if have, err := os.ReadFile(ra0.ramOf(inst.ID)); err != nil || !bytes.Equal(have, *pausedRAM.Load()) {
		t.Errorf("node-a resumed on other ram than it paused with (%v)", err)
	}
	if ents, _ := os.ReadDir(rb0.dir); len(ents) != 0 {
		t.Errorf("node-b keeps %d ram files after the failed import: %v", len(ents), ents)
	}
	if err := ra.Destroy(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}

	var got engine.Instance
	var n int64
	inst, got, n, err = move("mover", false)
	if err != nil {
		t.Fatalf("bundle after the pre-copy: %v", err)
	}
	if got.State != vm.Running {
		t.Fatalf("imported %+v", got)
	}
	want := *pausedRAM.Load()
	if have, err := os.ReadFile(rb0.ramOf(inst.ID)); err != nil || !bytes.Equal(have, want) {
		t.Fatalf("node-b's ram differs from node-a's at its pause (%v)", err)
	}
	if n >= rb0.size/2 {
		t.Errorf("the bundle after the pre-copy is %d bytes: the ram went again", n)
	}
	if p, f := rb.PeerPreCopyCounts(); p != 2 || f != 0 {
		t.Errorf("node-to-node pre-copies %d (no path %d), want 2 (0)", p, f)
	}
	for _, r := range []interface{ DiskStreamCounts() (int64, int64) }{ra, rb} {
		if d, nn := r.DiskStreamCounts(); d != 0 || nn != 0 {
			t.Errorf("the control plane relayed streams: %d direct, %d over NATS", d, nn)
		}
	}
	if err := ra.Destroy(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	// Only node-b's RAM file is left of it; nothing kept on node-a.
	if ents, _ := os.ReadDir(ra0.dir); len(ents) != 0 {
		t.Errorf("node-a keeps %d ram files after the move: %v", len(ents), ents)
	}
	// node-b runs it on its own RAM file only: the pre-copied file's
	// other name went with the saved state, and its destroy leaves
	// nothing (the kept name used to outlive the VM on the tmpfs).
	if ents, _ := os.ReadDir(rb0.dir); len(ents) != 1 || ents[0].Name() != inst.ID+".ram" {
		t.Errorf("node-b keeps %v after the move, want only %s.ram", ents, inst.ID)
	}
	if err := rb.Destroy(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(rb0.dir); len(ents) != 0 {
		t.Errorf("node-b keeps %d ram files after its destroy: %v", len(ents), ents)
	}

}

// TestPreCopyResumesNodeToNode: a node-to-node pre-copy whose TCP
// connection a proxy resets part-way, while the "guest" writes, resumes
// from the records node-b holds (a new single-use ticket): the bundle
// after the suspend carries only the delta, and node-b's RAM is node-a's
// at its pause. A link that drops every connection fails the pre-copy
// after the bounded retries with nothing left on node-b; the whole
// bundle then moves the instance as before.
func TestPreCopyResumesNodeToNode(t *testing.T) {
	defer nodeagent.SetResumeTiming(3, 20*time.Millisecond, 3*time.Second)()
	t.Run("cut-once", func(t *testing.T) { testPreCopyResumes(t, false) })
	t.Run("cut-always", func(t *testing.T) { testPreCopyResumes(t, true) })
}

func testPreCopyResumes(t *testing.T, always bool) {
	a, ra0 := newRAMLocal(t)
	b, rb0 := newRAMLocal(t)
	b.drv.SetServer(a.drv.Server())
	e := newDirectEnv(t)
	proxy := newCutProxy(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.direct(t, "node-a"))
	serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.directVia(t, "node-b", proxy))
	ra, rb := e.directRemote(t, "node-a", a), e.directRemote(t, "node-b", b)
	waitServed(t, ra)
	waitServed(t, rb)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	trust, err := rb.AgentTrustKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	create := func(name string) (engine.Instance, func()) {
		inst, err := ra.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: name, Owner: a.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return inst, ra0.dirty(inst.ID)
	}
	finish := func(inst engine.Instance, name string) int64 {
		t.Helper()
		if err := ra.Suspend(ctx, inst.ID, trust); err != nil {
			t.Fatalf("suspend: %v", err)
		}
		got, n, err := rb.ImportBundleFromPeer(ctx, engine.ImportSpec{ID: inst.ID, Name: name, Owner: b.owner}, ra, nil)
		if err != nil || got.State != vm.Running {
			t.Fatalf("bundle: %+v, %v", got, err)
		}
		// The fake driver keeps a RAM file of its own only for a pre-copy's.
		if have, err := os.ReadFile(rb0.ramOf(inst.ID)); !always && (err != nil || !bytes.Equal(have, *pausedRAM.Load())) {
			t.Fatalf("node-b's ram differs from node-a's at its pause (%v)", err)
		}
		for _, r := range []*nodeagent.Remote{ra, rb} {
			if err := r.Destroy(ctx, inst.ID); err != nil {
				t.Fatal(err)
			}
		}
		// Nothing of it is left on node-b: not the pre-copied file's own
		// name either (the VM ran on a second name of it).
		if ents, _ := os.ReadDir(rb0.dir); len(ents) != 0 {
			t.Errorf("node-b keeps %d ram files after the vm was destroyed: %v", len(ents), ents)
		}
		return n
	}

	if always {
		testPreCopyCutAlways(t, ctx, create, finish, proxy, ra, rb, ra0, rb0)
		return
	}
	// Cut once, after 3 MiB of the 8 MiB of data.
	inst, stop := create("resumed")
	proxy.cut(1, 3<<20)
	var steps []string
	var mu sync.Mutex
	n, err := rb.PreCopyFromPeer(ctx, inst.ID, ra, func(s string) { mu.Lock(); steps = append(steps, s); mu.Unlock() })
	stop()
	if err != nil {
		t.Fatalf("pre-copy over a link cut once: %v (steps %q)", err, steps)
	}
	if proxy.cutDone.Load() != 1 || rb.ResumeCount() != 1 || !strings.Contains(strings.Join(steps, "\n"), "transfer resumed at ") {
		t.Fatalf("cut %d, resumed %d, progress %q; want one cut, resumed once and said", proxy.cutDone.Load(), rb.ResumeCount(), steps)
	}
	if n < ra0.size/2 {
		t.Errorf("pre-copy of %d bytes reported", n)
	}
	if bn := finish(inst, "resumed"); bn >= rb0.size/2 {
		t.Errorf("the bundle after a resumed pre-copy is %d bytes: the ram went again", bn)
	}
	if ents, _ := os.ReadDir(ra0.dir); len(ents) != 0 {
		t.Errorf("node-a keeps %d ram files after the move: %v", len(ents), ents)
	}
}

// testPreCopyCutAlways: every connection drops after 2 MiB: the pre-copy
// fails after the bound, nothing is left on node-b, and the whole bundle
// moves the instance.
func testPreCopyCutAlways(t *testing.T, ctx context.Context, create func(string) (engine.Instance, func()), finish func(engine.Instance, string) int64,
	proxy *cutProxy, ra, rb *nodeagent.Remote, ra0, rb0 *ramDriver) {
	inst, stop := create("cut")
	proxy.cut(0, 2<<20)
	proxy.every.Store(true)
	_, err := rb.PreCopyFromPeer(ctx, inst.ID, ra, nil)
	stop()
	proxy.every.Store(false)
	if err == nil {
		t.Fatal("a pre-copy over a link that drops every connection succeeded")
	}
	if c := rb.ResumeCount(); c != 3 {
		t.Errorf("resumed %d times, want 3 (the bound)", c)
	}
	if ents, _ := os.ReadDir(rb0.dir); len(ents) != 0 {
		t.Errorf("node-b keeps %d ram files after the failed pre-copy: %v", len(ents), ents)
	}
	rb.DropPreCopy(ctx, inst.ID)
	ra.DropPreCopy(ctx, inst.ID)
	finish(inst, "cut") // the fake's whole bundle: its device state only
	if ents, _ := os.ReadDir(ra0.dir); len(ents) != 0 {
		t.Errorf("node-a keeps %d ram files after the moves: %v", len(ents), ents)
	}
}

// TestPreCopyFromControlPlaneHost: the control plane's own host (a Local
// engine) pre-copies a running instance's RAM into node-b over its direct
// mTLS connection, which a proxy resets part-way: it resumes from the
// records node-b holds, the bundle after the suspend carries only the
// delta, and node-b resumes on node-a's RAM byte for byte.
func TestPreCopyFromControlPlaneHost(t *testing.T) {
	defer nodeagent.SetResumeTiming(3, 20*time.Millisecond, 3*time.Second)()
	a, ra0 := newRAMLocal(t)
	b, rb0 := newRAMLocal(t)
	b.drv.SetServer(a.drv.Server())
	e := newDirectEnv(t)
	proxy := newCutProxy(t)
	serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.directVia(t, "node-b", proxy))
	rb := e.directRemote(t, "node-b", b)
	waitServed(t, rb)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	trust, err := rb.AgentTrustKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := a.eng.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "cp-vm", Owner: a.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stopDirty := ra0.dirty(inst.ID)
	proxy.cut(1, 3<<20)
	var steps []string
	var mu sync.Mutex
	n, err := rb.ImportPreCopyFrom(ctx, inst.ID, func(ctx context.Context, at engine.ResumeAt, w io.Writer) error {
		if at.Offset == 0 {
			return a.eng.ExportPreCopy(ctx, inst.ID, w)
		}
		return a.eng.ExportPreCopyFrom(ctx, inst.ID, at.Offset, w)
	}, func(s string) { mu.Lock(); steps = append(steps, s); mu.Unlock() })
	stopDirty()
	if err != nil {
		t.Fatalf("pre-copy from the control plane's host: %v (steps %q)", err, steps)
	}
	if proxy.cutDone.Load() != 1 || rb.ResumeCount() != 1 {
		t.Fatalf("cut %d, resumed %d; want one of each", proxy.cutDone.Load(), rb.ResumeCount())
	}
	if strings.Contains(strings.Join(steps, ","), "\x00") {
		t.Errorf("progress %q", steps)
	}
	if n < ra0.size/2 {
		t.Errorf("pre-copy of %d bytes", n)
	}
	if err := a.eng.Suspend(ctx, inst.ID, trust); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	pr, pw := io.Pipe()
	var bn atomic.Int64
	go func() { pw.CloseWithError(a.eng.ExportBundle(ctx, inst.ID, &countingWriter{w: pw, n: &bn})) }()
	got, err := rb.ImportBundle(ctx, engine.ImportSpec{ID: inst.ID, Name: "cp-vm", Owner: b.owner}, pr, nil)
	pr.Close()
	if err != nil || got.State != vm.Running {
		t.Fatalf("bundle: %+v, %v", got, err)
	}
	if have, err := os.ReadFile(rb0.ramOf(inst.ID)); err != nil || !bytes.Equal(have, *pausedRAM.Load()) {
		t.Fatalf("node-b's ram differs from the control plane host's at its pause (%v)", err)
	}
	if bn.Load() >= rb0.size/2 {
		t.Errorf("the bundle after the pre-copy is %d bytes: the ram went again", bn.Load())
	}
	if err := a.eng.Destroy(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(ra0.dir); len(ents) != 0 {
		t.Errorf("the control plane's host keeps %d ram files after the move: %v", len(ents), ents)
	}
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	k, err := c.w.Write(p)
	c.n.Add(int64(k))
	return k, err
}

// TestPreCopyIntoControlPlaneHost: the control plane's own host (a Local
// engine) reads node-a's pre-copy over its direct connection, which a
// proxy resets part-way (it resumes from the records it holds); the
// bundle after the suspend is staged (StageBundle), its delta applied to
// the pre-copied file, which is then the staged state's RAM, byte for
// byte node-a's at its pause; Destroy of the staged instance leaves no
// RAM file.
func TestPreCopyIntoControlPlaneHost(t *testing.T) {
	a, ra0 := newRAMLocal(t)
	b, rb0 := newRAMLocal(t)
	b.drv.SetServer(a.drv.Server())
	e := newDirectEnv(t)
	proxy := newCutProxy(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.directVia(t, "node-a", proxy))
	ra := e.directRemote(t, "node-a", a)
	waitServed(t, ra)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	inst, err := ra.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "in", Owner: a.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	open := func(off int64) *io.PipeReader {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(ra.ExportPreCopyFrom(ctx, inst.ID, off, pw)) }()
		return pr
	}
	// The pre-copy flows from the listener's side; the first connection
	// that carries 3 MiB (not an agent's) is cut.
	proxy.down.Store(true)
	proxy.cut(0, 3<<20)
	proxy.every.Store(true)
	cur := open(0)
	resumes := 0
	err = b.eng.ImportPreCopyResuming(ctx, inst.ID, cur, func(ctx context.Context, attempt int, at engine.ResumeAt) (io.Reader, error) {
		proxy.every.Store(false)
		resumes++
		cur.Close()
		cur = open(at.Offset)
		return cur, nil
	}, engine.ResumePolicy{Tries: 3, Backoff: 20 * time.Millisecond})
	if err != nil || resumes != 1 || proxy.cutDone.Load() != 1 {
		t.Fatalf("pre-copy into this host: %v, %d resumes, %d cuts (%d connections); want one of each", err, resumes, proxy.cutDone.Load(), proxy.conns.Load())
	}
	// The "guest" writes after the pre-copy: the delta carries it.
	if f, err := os.OpenFile(ra0.ramOf(inst.ID), os.O_WRONLY, 0); err == nil {
		f.WriteAt([]byte("after the pre-copy"), 4096*77)
		f.Close()
	}
	trust, err := b.eng.AgentTrustKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ra.Suspend(ctx, inst.ID, trust); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	pr, pw := io.Pipe()
	var bn atomic.Int64
	go func() { pw.CloseWithError(ra.ExportBundle(ctx, inst.ID, &countingWriter{w: pw, n: &bn})) }()
	err = b.eng.StageBundle(ctx, engine.ImportSpec{ID: inst.ID, Name: "in", Owner: b.owner}, pr, nil)
	pr.Close()
	if err != nil {
		t.Fatalf("stage the bundle after the pre-copy: %v", err)
	}
	if bn.Load() >= rb0.size/2 {
		t.Errorf("the bundle after the pre-copy is %d bytes: the ram went again", bn.Load())
	}
	ram := rb0.StateRAM(filepath.Join(b.dir, "state", "vms", inst.ID, "move-state"))
	if have, err := os.ReadFile(ram); ram == "" || err != nil || !bytes.Equal(have, *pausedRAM.Load()) {
		t.Fatalf("the staged ram %q differs from node-a's at its pause (%v)", ram, err)
	}
	if err := b.eng.Destroy(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(rb0.dir); len(ents) != 0 {
		t.Errorf("this host keeps %d ram files after the staged instance was destroyed: %v", len(ents), ents)
	}
}
