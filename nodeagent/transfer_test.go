package nodeagent_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

func qemuIO(t *testing.T, disk, cmd string) string {
	t.Helper()
	out, err := exec.Command("qemu-io", "-c", cmd, disk).CombinedOutput()
	if err != nil || strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("qemu-io %q %s: %v\n%s", cmd, disk, err, out)
	}
	return string(out)
}

// TestDiskMovesBetweenNodesOverNATS ships a stopped instance's qcow2 disk
// from node-a to node-b, both reached over the fabric: the data is on
// node-b, rebased onto node-b's own image, and a corrupt stream is
// refused leaving nothing behind. It measures the fabric's throughput for
// a 256 MiB overlay against a raw TCP copy on loopback.
func TestDiskMovesBetweenNodesOverNATS(t *testing.T) { testDiskMove(t, false) }

// TestDiskMovesBetweenNodesDirect is the same over the direct path (one
// TLS connection per disk stream, none over NATS).
func TestDiskMovesBetweenNodesDirect(t *testing.T) { testDiskMove(t, true) }

func testDiskMove(t *testing.T, direct bool) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("needs qemu-io")
	}
	a, b := newFakeLocal(t), newFakeLocal(t)
	var ra, rb *nodeagent.Remote
	path := "NATS"
	if direct {
		path = "direct TLS"
		e := newDirectEnv(t)
		serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.direct(t, "node-a"))
		serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.direct(t, "node-b"))
		ra, rb = e.directRemote(t, "node-a", a), e.directRemote(t, "node-b", b)
	} else {
		c := newCluster(t)
		serve(t, "node-a", c.node(t, "node-a"), a.eng)
		serve(t, "node-b", c.node(t, "node-b"), b.eng)
		ra, rb = c.remote(t, "node-a", a), c.remote(t, "node-b", b)
	}
	defer func() {
		var d, n int64
		for _, r := range []*nodeagent.Remote{ra, rb} {
			dd, nn := r.DiskStreamCounts()
			d, n = d+dd, n+nn
		}
		if direct && (d == 0 || n != 0) || !direct && d != 0 {
			t.Errorf("disk streams: %d direct, %d over NATS (want all %s)", d, n, path)
		}
	}()
	waitServed(t, ra)
	waitServed(t, rb)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	inst, err := ra.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "mover", Owner: a.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Running: refused.
	if err := ra.ExportDisk(ctx, inst.ID, io.Discard); errs.ClassOf(err) != errs.FailedPrecondition {
		t.Fatalf("export of a running vm: %v, want FailedPrecondition", err)
	}
	if _, err := ra.Stop(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	srcDisk := filepath.Join(a.dir, "state", "vms", inst.ID, "disk.qcow2")
	const size = 256 << 20
	qemuIO(t, srcDisk, "write -P 0x5a 0 256M")

	// The stream, to memory first (for the corrupt copy and the TCP baseline).
	var s bytes.Buffer
	t0 := time.Now()
	if err := ra.ExportDisk(ctx, inst.ID, &s); err != nil {
		t.Fatalf("export: %v", err)
	}
	exportTime := time.Since(t0)
	if s.Len() < size {
		t.Fatalf("stream of %d bytes, want more than %d", s.Len(), size)
	}

	// Corrupt: refused, and nothing of it stays on node-b.
	bad := bytes.Clone(s.Bytes())
	bad[len(bad)-100] ^= 0xff
	if _, err := rb.ImportDisk(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, bytes.NewReader(bad), nil); errs.ClassOf(err) != errs.InvalidArgument ||
		!strings.Contains(err.Error(), "checksum") {
		t.Fatalf("import of a corrupt stream: %v, want InvalidArgument checksum mismatch", err)
	}
	if _, err := rb.Get(ctx, inst.ID); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("node-b kept the corrupt import: %v", err)
	}
	if _, err := os.Stat(filepath.Join(b.dir, "state", "vms", inst.ID)); !os.IsNotExist(err) {
		t.Fatalf("node-b kept files of the corrupt import: %v", err)
	}

	// The real thing: node-a's export piped into node-b's import, both over NATS.
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(ra.ExportDisk(ctx, inst.ID, pw)) }()
	var steps []string
	t0 = time.Now()
	got, err := rb.ImportDisk(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner, Start: true}, pr, func(s string) { steps = append(steps, s) })
	moveTime := time.Since(t0)
	pr.Close()
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	if got.State != vm.Running || got.ID != inst.ID || got.Image != "minimal@1" || got.MemoryMiB != 256 {
		t.Fatalf("imported %+v", got)
	}
	if !strings.Contains(strings.Join(steps, ","), "disk") || strings.Contains(strings.Join(steps, ","), "\x00") {
		t.Errorf("progress %q", steps)
	}
	dstDisk := filepath.Join(b.dir, "state", "vms", inst.ID, "disk.qcow2")
	if _, err := rb.Stop(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, dstDisk, "read -P 0x5a 0 256M")
	info, _ := exec.Command("qemu-img", "info", dstDisk).CombinedOutput()
	if !strings.Contains(string(info), filepath.Join(b.dir, "base.raw")) {
		t.Errorf("imported disk not rebased onto node-b's image:\n%s", info)
	}
	// node-a still has its copy (the caller destroys it).
	if _, err := ra.Get(ctx, inst.ID); err != nil {
		t.Errorf("node-a lost its copy: %v", err)
	}

	// A dropped stream resumes: node-a's export stream is cut after 100
	// MiB; the export resumes from the last byte delivered and node-b's
	// import still gets every byte, checked end to end.
	if err := rb.Destroy(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	ra.CutExport(100 << 20)
	pr, pw = io.Pipe()
	var resumed []int64
	exported := make(chan error, 1)
	go func() {
		err := engine.ExportResuming(ctx, ra, inst.ID, pw, engine.ResumePolicy{Backoff: 10 * time.Millisecond,
			Resumed: func(_ int, at int64, _ error) { resumed = append(resumed, at) }})
		pw.CloseWithError(err)
		exported <- err
	}()
	if _, err := rb.ImportDisk(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, pr, nil); err != nil {
		t.Fatalf("import of a resumed export: %v", err)
	}
	pr.Close()
	if err := <-exported; err != nil {
		t.Fatalf("resumed export: %v", err)
	}
	if len(resumed) != 1 || resumed[0] != 100<<20 {
		t.Errorf("resumed at %v, want once at %d", resumed, 100<<20)
	}
	qemuIO(t, dstDisk, "read -P 0x5a 0 256M")

	// The fabric alone: node-a's export into nothing, twice (warm cache).
	var discard time.Duration
	for range 2 {
		t0 = time.Now()
		if err := ra.ExportDisk(ctx, inst.ID, io.Discard); err != nil {
			t.Fatal(err)
		}
		discard = time.Since(t0)
	}
	// Raw TCP on loopback, the same bytes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	recv := make(chan int64, 1)
	go func() {
		cn, err := ln.Accept()
		if err != nil {
			recv <- 0
			return
		}
		n, _ := io.Copy(io.Discard, cn)
		cn.Close()
		recv <- n
	}()
	t0 = time.Now()
	cn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(cn, bytes.NewReader(s.Bytes()))
	cn.Close()
	<-recv
	tcpTime := time.Since(t0)
	mib := float64(s.Len()) / (1 << 20)
	t.Logf("disk stream %.0f MiB over %s: export to memory %v (%.0f MiB/s, cold); export to nothing %v (%.0f MiB/s); node-a -> node-b move %v (%.0f MiB/s, incl. write+rebase+boot); raw TCP loopback %v (%.0f MiB/s); ratio fabric/TCP %.3f (move/TCP %.3f)",
		mib, path, exportTime.Round(time.Millisecond), mib/exportTime.Seconds(), discard.Round(time.Millisecond), mib/discard.Seconds(),
		moveTime.Round(time.Millisecond), mib/moveTime.Seconds(),
		tcpTime.Round(time.Millisecond), mib/tcpTime.Seconds(), tcpTime.Seconds()/discard.Seconds(), tcpTime.Seconds()/moveTime.Seconds())
}
