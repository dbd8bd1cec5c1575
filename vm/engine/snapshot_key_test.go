package engine_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/testenv"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vsockcli"
)

// TestMemorySnapshotKey: a memory snapshot is taken with the guest agent
// trusting a key of the snapshot's own only for the save (after it the
// running guest trusts the host's key alone again); the key is kept with
// the snapshot (0600). Restored on the same host, a guest whose saved
// memory trusts that key too is logged in to with the host's key and made
// to trust the host's key only.
func TestMemorySnapshotKey(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipUnlessCI(t, "needs root (the guest agent runs commands as users)")
	}
	dir, err := os.MkdirTemp("/tmp", "msk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	key := newSigner(t)
	gn := &guestNet{}
	guest := moveGuest(t, dir, key.PublicKey(), gn)
	h := newMoveHost(t, dir, "h", key, guest, "10.77.3.0/24")
	id := vm.NewID()
	if _, err := h.eng.Create(ctx, engine.CreateSpec{ID: id, Name: "snapper", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1}, nil); err != nil {
		t.Fatal(err)
	}
	info, err := h.eng.Snapshot(ctx, id, engine.SnapshotSpec{Name: "m", Memory: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kf := filepath.Join(h.eng.VMDir(id), "snapshots", info.ID, "agent_key")
	st, err := os.Stat(kf)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the snapshot's key: %v, %v", st, err)
	}
	pk, _ := os.ReadFile(kf)
	snapKey, err := ssh.ParsePrivateKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	login := func(s ssh.Signer) error {
		row, err := store.GetVMByID(ctx, h.db, id)
		if err != nil {
			return err
		}
		hd, err := engine.DecodeHandle(row.Handle)
		if err != nil || hd == nil {
			t.Fatalf("handle of %s: %v", id, err)
		}
		cl, err := vsockcli.Dial(ctx, hd.Agent, vsockcli.Config{Signer: s, HostKey: ssh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second})
		if err == nil {
			cl.Close()
		}
		return err
	}
	if err := login(snapKey); err == nil {
		t.Error("the running guest still trusts the snapshot's key after the save")
	}
	if err := login(key); err != nil {
		t.Fatalf("the running guest does not trust the host's key: %v", err)
	}
	// As the saved memory would: the agent trusts the host's and the
	// snapshot's key.
	cl, err := h.eng.Agent(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Configure(ctx, proto.Configure{HostKeys: []string{keyLine(key), keyLine(snapKey)}}); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if err := login(snapKey); err != nil {
		t.Fatalf("the guest made to trust the snapshot's key does not: %v", err)
	}
	if _, err := h.eng.RestoreSnapshot(ctx, id, "m", nil); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if err := login(snapKey); err == nil {
		t.Error("the restored guest still trusts the snapshot's key")
	}
	if err := login(key); err != nil {
		t.Errorf("the restored guest does not trust the host's key: %v", err)
	}
}
