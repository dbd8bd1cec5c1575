package hostcmd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/fabric"
	agent "github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"github.com/minionsdev/minions/vm/hypervisor/fake/fakeagent"
)

// agentFake is the fake hypervisor whose VMs answer with an in-process
// guest agent on their hybrid-vsock socket (so Create gets to ready).
type agentFake struct {
	*fake.Driver
	srv *agent.Server
}

func (d agentFake) Start(ctx context.Context, spec hypervisor.Spec) (*hypervisor.Handle, error) {
	h, err := d.Driver.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(h.RunDir, "agent.sock")
	ln, err := fakeagent.ServeAgent(sock, d.srv, nil)
	if err != nil {
		return nil, err
	}
	go func() { // the listener goes with the VM
		for {
			time.Sleep(50 * time.Millisecond)
			if _, err := os.Stat(h.RunDir); err != nil {
				ln.Close()
				return
			}
		}
	}()
	h.Agent = hypervisor.AgentEndpoint{Kind: "hybrid-vsock", Path: sock, Port: 1024}
	return h, nil
}

type fixedImage struct{ img engine.Image }

func (i fixedImage) Resolve(_ context.Context, ref string) (engine.Image, error) {
	if ref != i.img.OS && ref != i.img.Ref {
		return engine.Image{}, errs.New(errs.NotFound, "no image %q", ref)
	}
	return i.img, nil
}

// TestNodeServesItsEngine: the node side of `minions node` (serveNode:
// heartbeats and ServeEngine, connected with the node's own credential
// to a real embedded fabric) answers a control plane's Remote: Create,
// List and Destroy run on the node's engine.Local (fake hypervisor, real
// store and disks).
func TestNodeServesItsEngine(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the guest agent runs commands as users)")
	}
	dir, err := os.MkdirTemp("/tmp", "w12n")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The node's engine, as on its own host.
	db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := store.InsertUser(ctx, db, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "guest")
	home := filepath.Join(root, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(home, 0o700)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:"+home+":/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	hostKey, _ := ssh.NewSignerFromKey(priv)
	srv, err := agent.NewServer(agent.Config{AuthorizedKey: hostKey.PublicKey(), HostKeyPath: filepath.Join(root, "etc/minions/agent_host_key"),
		Root: root, Mounts: func() ([]agent.Mount, error) { return []agent.Mount{}, nil }, GrowMount: root,
		SetHostname: func(string) error { return nil }, SetTime: func(time.Time) error { return nil }, Power: func(bool) error { return nil },
		// Never the host's RNG or eth0 (the in-process agent runs on the host).
		ReseedRNG: func([]byte) error { return nil }, SetNetwork: func(net.HardwareAddr, netip.Prefix, netip.Addr) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(base, 64<<20)
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	img := engine.Image{Ref: "minimal@1", OS: "minimal", Path: base, Format: "raw", SizeBytes: 64 << 20, Kernel: kernel}
	eng, err := engine.NewLocal(engine.Config{StateDir: filepath.Join(dir, "state"), ReadyTimeout: 20 * time.Second, StopTimeout: time.Second},
		engine.Deps{DB: db, Driver: agentFake{Driver: fake.New(fake.Config{}), srv: srv}, Network: nopNet{}, Images: fixedImage{img},
			Disks: engine.HostDisks{}, HostKey: hostKey})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()

	// The fabric, which knows the node's key, and the control plane's
	// connection.
	seed, pub, err := fabric.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	const hostID = "node-one"
	fsrv, err := fabric.Start(fabric.Config{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "fabric"),
		NodeKey: func(p string) (string, bool) { return hostID, p == pub }})
	if err != nil {
		t.Fatal(err)
	}
	defer fsrv.Close()
	control, err := fsrv.Control("control")
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()

	// The node: its credential, connected as `minions node` does, with
	// its direct listener where it reaches the fabric from.
	_, caPEM, err := fabric.ServerTLS(filepath.Join(dir, "tls"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cred := nodeagent.Credential{HostID: hostID, Name: "one", NATS: []string{fsrv.ClientURL()}, Seed: seed, CA: string(caPEM)}
	conn, err := nodeagent.Connect(nodeagent.Credential{HostID: hostID, Name: "one", NATS: []string{fsrv.ClientURL()}, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	direct, err := startDirect("", cred, slog.New(slog.DiscardHandler))
	if err != nil || direct == nil || !strings.HasPrefix(direct.Addr(), "127.0.0.1:") {
		t.Fatalf("direct listener: %v", err)
	}
	defer direct.Close()
	ccert, err := fabric.ControlCertificate(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	nctx, stopNode := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- serveNode(nctx, nodeagent.Config{ID: hostID, Conn: conn, StateDir: dir, Version: "v-test", Interval: 100 * time.Millisecond}, eng, direct, nil)
	}()

	r, err := nodeagent.NewRemote(nodeagent.RemoteConfig{ID: hostID, Conn: control, Signer: hostKey,
		DirectTLS: &tls.Config{Certificates: []tls.Certificate{ccert}}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := r.Capacity(cctx)
		ccancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node never served its engine: %v", err)
		}
	}

	cctx, ccancel := context.WithTimeout(ctx, time.Minute)
	defer ccancel()
	inst, err := r.Create(cctx, engine.CreateSpec{ID: vm.NewID(), Name: "web", Owner: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256}, nil)
	if err != nil {
		t.Fatalf("create through the node: %v", err)
	}
	if inst.Name != "web" || inst.State != vm.Running {
		t.Fatalf("created %+v", inst)
	}
	// Its agent over the direct listener.
	cl, err := r.Agent(cctx, inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Ping(cctx); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if d, n := r.StreamCounts(); d != 1 || n != 0 {
		t.Fatalf("agent streams: %d direct, %d nats; want 1 direct", d, n)
	}
	list, err := r.List(cctx)
	if err != nil || len(list) != 1 || list[0].ID != inst.ID {
		t.Fatalf("list through the node: %+v %v", list, err)
	}
	// The VM lives in the node's own store.
	if local, err := eng.List(cctx); err != nil || len(local) != 1 || local[0].ID != inst.ID {
		t.Fatalf("node's engine lists %+v %v", local, err)
	}
	if err := r.Destroy(cctx, inst.ID); err != nil {
		t.Fatalf("destroy through the node: %v", err)
	}
	if list, err := r.List(cctx); err != nil || len(list) != 0 {
		t.Fatalf("list after destroy: %+v %v", list, err)
	}

	stopNode()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("node stopped with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the node did not stop")
	}
}

// TestNodeCommand: `minions node` is a hostcmd command now; without a
// credential it says how to join, a join needs --token, and a host that
// has joined refuses a second join; none of it writes a credential.
func TestNodeCommand(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) (string, int) {
		t.Helper()
		var out, errOut strings.Builder
		env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }, Extra: Commands()}
		code := cli.Run(context.Background(), env, append(args, "--state-dir", dir))
		return errOut.String(), code
	}
	if msg, code := run("node"); code == 0 || !strings.Contains(msg, "node join") {
		t.Fatalf("node without a credential: %d %s", code, msg)
	}
	if msg, code := run("node", "join", "http://127.0.0.1:1"); code == 0 || !strings.Contains(msg, "--token is required") {
		t.Fatalf("join without a token: %d %s", code, msg)
	}
	if _, err := os.Stat(filepath.Join(dir, nodeagent.CredentialFile)); err == nil {
		t.Fatal("a failed join stored a credential")
	}
	if err := nodeagent.SaveCredential(dir, nodeagent.Credential{HostID: "node-one", Name: "one", NATS: []string{"nats://127.0.0.1:1"}, Seed: "x"}); err != nil {
		t.Fatal(err)
	}
	if msg, code := run("node", "join", "http://127.0.0.1:1", "--token", "t"); code == 0 || !strings.Contains(msg, "already joined") {
		t.Fatalf("second join: %d %s", code, msg)
	}
	// Direct streams: off, or no fabric CA to check the control plane by,
	// mean none; a bad address is an error.
	log := slog.New(slog.DiscardHandler)
	if d, err := startDirect("off", nodeagent.Credential{CA: "x"}, log); d != nil || err != nil {
		t.Fatalf("--direct off = %v, %v", d, err)
	}
	if d, err := startDirect("", nodeagent.Credential{HostID: "node-one", NATS: []string{"nats://127.0.0.1:1"}}, log); d != nil || err != nil {
		t.Fatalf("no CA = %v, %v", d, err)
	}
	if _, err := startDirect("nonsense", nodeagent.Credential{HostID: "node-one", NATS: []string{"nats://127.0.0.1:1"}, CA: "x"}, log); err == nil {
		t.Fatal("--direct nonsense accepted")
	}
}
