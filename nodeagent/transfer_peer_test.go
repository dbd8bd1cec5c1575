package nodeagent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// TestDiskMovesNodeToNode: with direct listeners on both nodes, the disk
// stream goes from node-a straight to node-b (none relayed by the
// control plane: no direct or fabric disk stream of its own), checked
// end to end; a source without a direct listener is ErrNoPeerPath and
// leaves nothing on the target.
func TestDiskMovesNodeToNode(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("needs qemu-io")
	}
	a, b := newFakeLocal(t), newFakeLocal(t)
	e := newDirectEnv(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), a.eng, e.direct(t, "node-a"))
	serveDirect(t, "node-b", e.node(t, "node-b"), b.eng, e.direct(t, "node-b"))
	ra, rb := e.directRemote(t, "node-a", a), e.directRemote(t, "node-b", b)
	// A second cluster whose node-a has no direct listener.
	c, d := newFakeLocal(t), newFakeLocal(t)
	e2 := newDirectEnv(t)
	serve(t, "node-a", e2.node(t, "node-a"), c.eng)
	serveDirect(t, "node-b", e2.node(t, "node-b"), d.eng, e2.direct(t, "node-b"))
	rc, rd := e2.directRemote(t, "node-a", c), e2.directRemote(t, "node-b", d)
	for _, r := range []*nodeagent.Remote{ra, rb, rc, rd} {
		waitServed(t, r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	inst, err := ra.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "mover", Owner: a.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ra.Stop(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, filepath.Join(a.dir, "state", "vms", inst.ID, "disk.qcow2"), "write -P 0x5a 0 64M")

	// node-c has no direct listener: no path, nothing made on node-b.
	cinst, err := rc.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "stay", Owner: c.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Stop(ctx, cinst.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rd.ImportDiskFromPeer(ctx, engine.ImportSpec{ID: cinst.ID, Name: "stay", Owner: d.owner}, rc, nil); !errors.Is(err, engine.ErrNoPeerPath) {
		t.Fatalf("from a node without a direct listener: %v, want ErrNoPeerPath", err)
	}
	if _, err := os.Stat(filepath.Join(d.dir, "state", "vms", cinst.ID)); !os.IsNotExist(err) {
		t.Fatalf("the target has files of a move that found no path: %v", err)
	}
	if _, err := rd.Get(ctx, cinst.ID); err == nil {
		t.Fatal("the target has an instance of a move that found no path")
	}
	// Not a node of this control plane at all.
	if _, _, err := rb.ImportDiskFromPeer(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, a.eng, nil); !errors.Is(err, engine.ErrNoPeerPath) {
		t.Fatalf("from a local engine: %v, want ErrNoPeerPath", err)
	}

	var steps []string
	t0 := time.Now()
	got, n, err := rb.ImportDiskFromPeer(ctx, engine.ImportSpec{ID: inst.ID, Name: "mover", Owner: b.owner}, ra,
		func(s string) { steps = append(steps, s) })
	took := time.Since(t0)
	if err != nil {
		t.Fatalf("node-to-node import: %v", err)
	}
	if got.ID != inst.ID || got.State != vm.Stopped || n < 64<<20 {
		t.Fatalf("imported %+v, %d bytes", got, n)
	}
	if !strings.Contains(strings.Join(steps, ","), "disk") || strings.Contains(strings.Join(steps, ","), "\x00") {
		t.Errorf("progress %q", steps)
	}
	// The control plane does not see the bytes: the target says how far
	// the stream got, ending with the whole of it.
	if last := lastWithPrefix(steps, "transfer "); !strings.HasPrefix(last, fmt.Sprintf("transfer %d/%d MiB", n>>20, n>>20)) {
		t.Errorf("byte progress: last transfer line %q in %q", last, steps)
	}
	qemuIO(t, filepath.Join(b.dir, "state", "vms", got.ID, "disk.qcow2"), "read -P 0x5a 0 64M")
	if p, f := rb.PeerStreamCounts(); p != 1 || f != 0 {
		t.Errorf("node-to-node streams %d (no path %d), want 1 (0)", p, f)
	}
	for _, r := range []*nodeagent.Remote{ra, rb} {
		if d, nn := r.DiskStreamCounts(); d != 0 || nn != 0 {
			t.Errorf("the control plane relayed disk streams: %d direct, %d over NATS", d, nn)
		}
	}
	t.Logf("node-to-node: %d MiB in %s (%.0f MiB/s)", n>>20, took.Round(time.Millisecond), float64(n)/(1<<20)/took.Seconds())
}

// TestPeerDiskTickets: a peer disk ticket is redeemed only by the node
// whose certificate it names, once, before it expires; the control
// plane's own certificate cannot redeem it, and a certificate no ticket
// names is refused at the handshake.
func TestPeerDiskTickets(t *testing.T) {
	e := newDirectEnv(t)
	d := e.direct(t, "node-b")
	serveDirect(t, "node-b", e.node(t, "node-b"), stubEngine{ip: "127.203.0.1"}, d)
	src := e.direct(t, "node-a") // node-a's certificate
	srcCert := src.ClientCert()
	srcFP := fabric.CertFingerprint(srcCert.Certificate[0])
	forger := e.direct(t, "node-x")
	issue := func(id string) (string, string) {
		t.Helper()
		addr, tk, _, err := d.IssueFor(nodeagent.KindPeerDisk, id, srcFP)
		if err != nil {
			t.Fatal(err)
		}
		return addr, tk
	}
	refused := func(line, want string) {
		t.Helper()
		if !strings.Contains(line, `"code":"permission_denied"`) || !strings.Contains(line, want) {
			t.Fatalf("reply %q, want a refusal saying %q", line, want)
		}
	}
	addr, tk := issue("stream0001")
	// Another node's certificate: refused at the handshake, ticket unspent.
	if _, _, err := helloOver(addr, []tls.Certificate{forger.ClientCert()}, tk, nodeagent.KindPeerDisk, "stream0001"); err == nil {
		t.Fatal("a node no ticket names got a hello reply")
	}
	// The control plane's certificate: not the named peer (ticket spent).
	_, line, err := helloOver(addr, []tls.Certificate{e.cert}, tk, nodeagent.KindPeerDisk, "stream0001")
	if err != nil {
		t.Fatal(err)
	}
	refused(line, "another peer")
	// A forged ticket from the named node: unknown.
	_, tk = issue("stream0002")
	_, line, err = helloOver(addr, []tls.Certificate{srcCert}, strings.Repeat("ab", 16), nodeagent.KindPeerDisk, "stream0002")
	if err != nil {
		t.Fatal(err)
	}
	refused(line, "unknown")
	// The named node cannot use it for an agent stream either.
	_, line, _ = helloOver(addr, []tls.Certificate{srcCert}, tk, nodeagent.KindAgent, "stream0002")
	refused(line, "another use")
	// Expired.
	_, tk = issue("stream0003")
	d.SetClock(func() time.Time { return time.Now().Add(11 * time.Second) })
	_, line, err = helloOver(addr, []tls.Certificate{srcCert}, tk, nodeagent.KindPeerDisk, "stream0003")
	d.SetClock(time.Now)
	if err == nil { // else refused at the handshake: no live ticket names node-a
		refused(line, "expired")
	}
	// A control plane ticket (kind disk) is not the peer's to use.
	_, ctk, _, err := d.Issue(nodeagent.KindDisk, "stream0004")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = issue("stream0005") // lets node-a's certificate through the handshake
	_, line, _ = helloOver(addr, []tls.Certificate{srcCert}, ctk, nodeagent.KindDisk, "stream0004")
	refused(line, "another peer")
	// The right node, the right ticket: accepted (the connection parks).
	_, tk = issue("stream0006")
	c, line, err := helloOver(addr, []tls.Certificate{srcCert}, tk, nodeagent.KindPeerDisk, "stream0006")
	if err != nil || !strings.Contains(line, `"ok":true`) {
		t.Fatalf("valid peer ticket: %q, %v", line, err)
	}
	c.Close()
}

func lastWithPrefix(lines []string, prefix string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], prefix) {
			return lines[i]
		}
	}
	return ""
}
