package service

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

// TestMoveMemorySnapshotKeepsMemory: a memory snapshot taken on the
// control plane's host moves to node-b (over the embedded NATS) as a
// memory snapshot, and restoring it there is a restore from its memory,
// not a boot: the guest agent in its saved memory, which trusts the
// snapshot's own key and not node-b's (here the one guest is made to
// trust only that key, as the saved memory would), is reached with the
// snapshot's key, moved to node-b's address and made to trust node-b's
// key; the VM then answers exec.
func TestMoveMemorySnapshotKeepsMemory(t *testing.T) {
	th := newTwoHosts(t)
	oneGuest(th)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "snappy", Image: "minimal", Host: "cp", MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateSnapshot(ctx, th.alice, "snappy", SnapshotRequest{Name: "live1", Memory: true}, nil); err != nil {
		t.Fatal(err)
	}
	th.heartbeat(t)
	m, err := svc.Move(ctx, th.alice, "snappy", MoveRequest{Host: "node-b", Mode: "memory"}, nil)
	if err != nil || m.Host != "node-b" {
		t.Fatalf("move: %+v, %v", m, err)
	}
	snaps, err := svc.ListSnapshots(ctx, th.alice, "snappy")
	if err != nil || len(snaps) != 1 || snaps[0].Name != "live1" || !snaps[0].Memory {
		t.Fatalf("snapshots on node-b: %+v, %v; want live1 with its memory", snaps, err)
	}
	nodeSnaps, _ := store.ListSnapshots(ctx, th.node.svc.DB, v.ID)
	if len(nodeSnaps) != 1 {
		t.Fatalf("node-b's snapshot rows %+v", nodeSnaps)
	}
	pk, err := os.ReadFile(filepath.Join(th.node.dir, "state", "vms", v.ID, "snapshots", nodeSnaps[0].ID, "agent_key"))
	if err != nil {
		t.Fatalf("the snapshot's key did not move: %v", err)
	}
	snapKey, err := ssh.ParsePrivateKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := th.node.svc.Engine.Agent(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Configure(ctx, proto.Configure{HostKeys: []string{keyLine(snapKey)}}); err != nil {
		t.Fatal(err)
	}
	cl.Close()

	restores, starts := ops(th.node, fake.OpRestore), ops(th.node, fake.OpStart)
	var got []string
	r, err := svc.RestoreSnapshot(ctx, th.alice, "snappy", "live1", func(s string) { got = append(got, s) })
	if err != nil {
		t.Fatalf("restore the moved memory snapshot on node-b: %v (steps %v)", err, got)
	}
	if ops(th.node, fake.OpRestore) != restores+1 || ops(th.node, fake.OpStart) != starts {
		t.Errorf("node-b restored %d and booted %d times; want one restore from memory", ops(th.node, fake.OpRestore)-restores, ops(th.node, fake.OpStart)-starts)
	}
	if r.Host != "node-b" || r.Status != "running" || r.IP != m.IP {
		t.Errorf("restored %+v, want running on node-b at %s", r, m.IP)
	}
	if err := steps(got, "restore memory", "agent", "move network"); err != nil {
		t.Error(err)
	}
	if out := execOut(t, svc, th.alice, "snappy", "echo restored"); !strings.Contains(out, "restored") {
		t.Errorf("exec after the restore: %q", out)
	}
}
