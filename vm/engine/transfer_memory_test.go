package engine_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/testenv"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"github.com/minionsdev/minions/vm/hypervisor/fake/fakeagent"
)

// guestNet records the network moves the in-process guest agent was asked
// for.
type guestNet struct {
	mu    sync.Mutex
	moves []string
}

func (g *guestNet) set(mac net.HardwareAddr, ip netip.Prefix, gw netip.Addr) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.moves = append(g.moves, mac.String()+" "+ip.String()+" "+gw.String())
	return nil
}

func (g *guestNet) list() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.moves)
}

// moveHost is one host's engine whose VMs all answer with one shared
// in-process guest agent (the same guest, wherever it runs).
type moveHost struct {
	eng   *engine.Local
	drv   *fakeagent.AgentDriver
	ports *ports
	db    *store.DB
	key   ssh.Signer
}

// moveGuest is the one guest: its agent trusts the source's key at boot.
func moveGuest(t *testing.T, dir string, trusted ssh.PublicKey, gn *guestNet) *guestagent.Server {
	root := filepath.Join(dir, "guest")
	home := filepath.Join(root, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(home, 0o700)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:"+home+":/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	srv, err := guestagent.NewServer(guestagent.Config{
		AuthorizedKey: trusted,
		HostKeyPath:   filepath.Join(root, "etc/minions/agent_host_key"),
		Root:          root,
		Mounts:        func() ([]guestagent.Mount, error) { return []guestagent.Mount{}, nil },
		GrowMount:     root,
		// Never the host's hostname, clock, power, RNG or eth0.
		SetHostname: func(string) error { return nil },
		SetTime:     func(time.Time) error { return nil },
		Power:       func(bool) error { return nil },
		ReseedRNG:   func([]byte) error { return nil },
		SetNetwork:  gn.set,
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

func newMoveHost(t *testing.T, dir, name string, key ssh.Signer, srv *guestagent.Server, subnet string, wrap ...func(*fakeagent.AgentDriver) hypervisor.Driver) *moveHost {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(dir, name+".db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := store.InsertUser(ctx, db, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, name+"-base.raw")
	os.WriteFile(base, []byte("base"), 0o444)
	img := engine.Image{Ref: "minimal@1", OS: "minimal", Path: base, Format: "raw", SizeBytes: 1 << 20, Kernel: base}
	h := &moveHost{drv: fakeagent.NewAgentDriver(fake.New(fake.Config{Caps: hypervisor.Caps{MemorySnapshot: true}}), srv),
		ports: &ports{set: map[string]netip.Addr{}}, db: db, key: key}
	var drv hypervisor.Driver = h.drv
	for _, w := range wrap {
		drv = w(h.drv)
	}
	h.eng, err = engine.NewLocal(engine.Config{StateDir: filepath.Join(dir, name), ReadyTimeout: 10 * time.Second,
		StopTimeout: time.Second, Subnet: netip.MustParsePrefix(subnet)},
		engine.Deps{DB: db, Driver: drv, Network: h.ports, Images: oneImage{img}, Disks: copyDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// copyDisks copies files (a qcow2 overlay is a plain file here).
type copyDisks struct{}

func (copyDisks) CreateOverlay(_ context.Context, base, _, path string, _ int64) error {
	return os.WriteFile(path, []byte("overlay of "+base), 0o600)
}
func (copyDisks) Clone(_ context.Context, src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}
func (copyDisks) Grow(context.Context, string, int64) error { return nil }

func keyLine(k ssh.Signer) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.PublicKey())))
}

// TestMoveWithMemoryBetweenEngines suspends a running instance on one
// engine and resumes it from its bundle on another whose key its guest
// agent did not trust at boot: the same guest (its agent key pinned) runs
// there with the target's MAC and address, its snapshots with their names
// and times; its agent accepts the target's key only. A failed import
// leaves nothing on the target and Resume continues the source. Corrupt
// bundles are refused.
func TestMoveWithMemoryBetweenEngines(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipUnlessCI(t, "needs root (the guest agent runs commands as users)")
	}
	dir, err := os.MkdirTemp("/tmp", "mvm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srcKey, dstKey := newSigner(t), newSigner(t)
	gn := &guestNet{}
	guest := moveGuest(t, dir, srcKey.PublicKey(), gn)
	src := newMoveHost(t, dir, "src", srcKey, guest, "10.77.1.0/24")
	dst := newMoveHost(t, dir, "dst", dstKey, guest, "10.77.2.0/24")

	id := vm.NewID()
	inst, err := src.eng.Create(ctx, engine.CreateSpec{ID: id, Name: "mover", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(src.eng.VMDir(id), "disk.qcow2"), []byte("what the guest wrote"), 0o600)
	snap, err := src.eng.Snapshot(ctx, id, engine.SnapshotSpec{Name: "before"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.eng.Snapshot(ctx, id, engine.SnapshotSpec{Name: "withmem", Memory: true}, nil); err != nil {
		t.Fatal(err)
	}
	srcRow, _ := store.GetVMByID(ctx, src.db, id)

	// Bad input changes nothing.
	if err := src.eng.Suspend(ctx, id, "not a key"); errs.ClassOf(err) != errs.InvalidArgument {
		t.Fatalf("suspend with a bad key: %v", err)
	}
	if err := src.eng.ExportBundle(ctx, id, io.Discard); errs.ClassOf(err) != errs.FailedPrecondition {
		t.Fatalf("export of a running vm: %v", err)
	}
	if _, err := src.eng.Resume(ctx, id); err != nil {
		t.Fatalf("resume of a running vm: %v", err)
	}

	trust, _ := dst.eng.AgentTrustKey(ctx)
	if err := src.eng.Suspend(ctx, id, trust); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	if err := src.eng.Suspend(ctx, id, trust); err != nil {
		t.Fatalf("suspend again: %v", err)
	}
	got, _ := src.eng.Get(ctx, id)
	if got.State != vm.Stopped || got.Note != engine.NoteSuspended || portCount(src.ports) != 0 {
		t.Fatalf("suspended source %+v, ports %d", got, portCount(src.ports))
	}
	var bundle bytes.Buffer
	if err := src.eng.ExportBundle(ctx, id, &bundle); err != nil {
		t.Fatalf("export: %v", err)
	}
	h, err := engine.ReadBundleHeader(bufio.NewReader(bytes.NewReader(bundle.Bytes())))
	if err != nil || !h.Memory || len(h.Snapshots) != 2 || len(h.Dropped) != 0 || !h.Snapshots[1].Memory || h.Snapshots[0].Memory || h.AgentKey != srcRow.AgentKey {
		t.Fatalf("bundle header %+v, %v", h, err)
	}

	spec := engine.ImportSpec{ID: id, Name: "mover", Owner: "u1"}
	// A corrupt bundle: refused, nothing left.
	bad := bytes.Clone(bundle.Bytes())
	bad[len(bad)-10] ^= 1
	if _, err := dst.eng.ImportBundle(ctx, spec, bytes.NewReader(bad), nil); errs.ClassOf(err) != errs.InvalidArgument {
		t.Fatalf("import a corrupt bundle: %v", err)
	}
	// A failing restore on the target: nothing left there either.
	dst.drv.Fail(fake.OpRestore, errs.New(errs.Unavailable, "injected"), 1)
	if _, err := dst.eng.ImportBundle(ctx, spec, bytes.NewReader(bundle.Bytes()), nil); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("import with a failing restore: %v", err)
	}
	for _, p := range []string{dst.eng.VMDir(id), dst.eng.RunDir(id)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("failed imports left %s", p)
		}
	}
	if _, err := dst.eng.Get(ctx, id); errs.ClassOf(err) != errs.NotFound || portCount(dst.ports) != 0 {
		t.Fatalf("failed imports left a record (%v) or ports (%d)", err, portCount(dst.ports))
	}

	// The source resumes from its saved memory (a failed move's undo) ...
	back, err := src.eng.Resume(ctx, id)
	if err != nil || back.State != vm.Running || back.Note != "" || back.IP != inst.IP {
		t.Fatalf("resume the source: %+v, %v", back, err)
	}
	if _, err := os.Stat(filepath.Join(src.eng.VMDir(id), "move-state")); !os.IsNotExist(err) {
		t.Errorf("saved state kept after resume: %v", err)
	}

	// Start of a suspended instance resumes it from its memory too (never
	// a cold boot that would lose it).
	if err := src.eng.Suspend(ctx, id, trust); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	restores := 0
	for _, c := range src.drv.Calls() {
		if c.Op == fake.OpRestore && c.Err == nil {
			restores++
		}
	}
	if got, err := src.eng.Start(ctx, id, nil); err != nil || got.State != vm.Running {
		t.Fatalf("start a suspended vm: %+v, %v", got, err)
	}
	n := 0
	for _, c := range src.drv.Calls() {
		if c.Op == fake.OpRestore && c.Err == nil {
			n++
		}
	}
	if n != restores+1 {
		t.Errorf("start of a suspended vm did not restore its memory (%d restores, had %d)", n, restores)
	}

	// The move.
	if err := src.eng.Suspend(ctx, id, trust); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	bundle.Reset()
	if err := src.eng.ExportBundle(ctx, id, &bundle); err != nil {
		t.Fatal(err)
	}
	var steps []string
	moved, err := dst.eng.ImportBundle(ctx, spec, &bundle, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatalf("import: %v (steps %v)", err, steps)
	}
	if moved.State != vm.Running || !strings.HasPrefix(moved.IP, "10.77.2.") || moved.Name != "mover" {
		t.Fatalf("moved %+v (source had %s %s)", moved, inst.IP, inst.MAC)
	}
	dstRow, _ := store.GetVMByID(ctx, dst.db, id)
	if dstRow.AgentKey != srcRow.AgentKey {
		t.Errorf("agent key not kept: %q vs %q", dstRow.AgentKey, srcRow.AgentKey)
	}
	if nets := gn.list(); len(nets) == 0 || !strings.HasPrefix(nets[len(nets)-1], moved.MAC+" "+moved.IP+"/24") {
		t.Errorf("guest network moves %v, want the last to %s %s", nets, moved.MAC, moved.IP)
	}
	if _, err := os.Stat(filepath.Join(dst.eng.VMDir(id), "move-state")); !os.IsNotExist(err) {
		t.Errorf("saved state kept on the target: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst.eng.VMDir(id), "disk.qcow2")); string(b) != "what the guest wrote" {
		t.Errorf("disk on the target: %q", b)
	}
	snaps, err := dst.eng.Snapshots(ctx, id)
	if err != nil || len(snaps) != 2 || snaps[0].Name != "before" || snaps[0].CreatedAt.Sub(snap.CreatedAt).Abs() >= time.Millisecond || !snaps[1].Memory {
		t.Fatalf("snapshots on the target %+v, %v", snaps, err)
	}
	// The guest answers the target (whose key it trusts now) ...
	cl, err := dst.eng.Agent(ctx, id)
	if err != nil {
		t.Fatalf("agent on the target: %v", err)
	}
	cl.Close()
	// ... and a moved snapshot restores there.
	if _, err := dst.eng.RestoreSnapshot(ctx, id, "before", nil); err != nil {
		t.Fatalf("restore a moved snapshot: %v", err)
	}
	// So does the memory snapshot, from its memory. Its saved guest agent
	// trusts the keys it trusted at the snapshot: the source host's
	// (which never left it) and the snapshot's own; here the one guest
	// is made to trust the snapshot's key only, so only a login with it
	// gets in. The restored guest then moves to this host's address and
	// trusts this host's key.
	pk, err := os.ReadFile(filepath.Join(dst.eng.VMDir(id), "snapshots", snaps[1].ID, "agent_key"))
	if err != nil {
		t.Fatalf("the memory snapshot's key did not move: %v", err)
	}
	snapKey, err := ssh.ParsePrivateKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	if cl, err = dst.eng.Agent(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := cl.Configure(ctx, proto.Configure{HostKeys: []string{keyLine(snapKey)}}); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	restoresBefore, startsBefore := 0, 0
	count := func() (r, s int) {
		for _, c := range dst.drv.Calls() {
			switch {
			case c.Op == fake.OpRestore && c.Err == nil:
				r++
			case c.Op == fake.OpStart && c.Err == nil:
				s++
			}
		}
		return r, s
	}
	restoresBefore, startsBefore = count()
	var rsteps []string
	back, err = dst.eng.RestoreSnapshot(ctx, id, "withmem", func(s string) { rsteps = append(rsteps, s) })
	if err != nil {
		t.Fatalf("restore the moved memory snapshot: %v (steps %v)", err, rsteps)
	}
	if r, s := count(); r != restoresBefore+1 || s != startsBefore || back.State != vm.Running || back.IP != moved.IP {
		t.Errorf("memory snapshot on the target: %d restores, %d boots, %+v; want a restore at %s (steps %v)", r-restoresBefore, s-startsBefore, back, moved.IP, rsteps)
	}
	if nets := gn.list(); len(nets) == 0 || !strings.HasPrefix(nets[len(nets)-1], moved.MAC+" "+moved.IP+"/24") {
		t.Errorf("guest network moves %v, want the last to %s %s", nets, moved.MAC, moved.IP)
	}
	if cl, err = dst.eng.Agent(ctx, id); err != nil {
		t.Fatalf("the restored guest does not trust the target's key: %v", err)
	}
	cl.Close()
	t.Logf("moved memory snapshot restored: steps %v", rsteps)
	// The source's copy goes.
	if err := src.eng.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(src.eng.VMDir(id)); !os.IsNotExist(err) {
		t.Errorf("source files left: %v", err)
	}
}
