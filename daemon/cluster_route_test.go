package daemon

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"github.com/minionsdev/minions/vm/hypervisor/fake/fakeagent"
)

// guestFake is the fake hypervisor whose VMs answer with an in-process
// guest agent on their hybrid-vsock socket.
type guestFake struct {
	*fake.Driver
	srv *guestagent.Server
}

func (d guestFake) Start(ctx context.Context, spec hypervisor.Spec) (*hypervisor.Handle, error) {
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

type oneImage struct{ img engine.Image }

func (i oneImage) Resolve(_ context.Context, ref string) (engine.Image, error) {
	if ref != i.img.OS && ref != i.img.Ref {
		return engine.Image{}, errs.New(errs.NotFound, "no image %q", ref)
	}
	return i.img, nil
}

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

// vmHost is a service whose VMs run on the fake hypervisor with a real
// guest agent trusting this host's own key, in its own state dir.
func vmHost(t *testing.T, dir string) *service.Service {
	t.Helper()
	os.MkdirAll(dir, 0o700)
	db, err := store.Open(context.Background(), filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewSignerFromKey(priv)
	root := filepath.Join(dir, "guest")
	home := filepath.Join(root, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(home, 0o700)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:"+home+":/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	srv, err := guestagent.NewServer(guestagent.Config{AuthorizedKey: key.PublicKey(), HostKeyPath: filepath.Join(root, "etc/minions/agent_host_key"),
		Root: root, Mounts: func() ([]guestagent.Mount, error) { return []guestagent.Mount{}, nil }, GrowMount: root,
		// Never the host's hostname, clock, power, RNG or eth0.
		SetHostname: func(string) error { return nil }, SetTime: func(time.Time) error { return nil }, Power: func(bool) error { return nil },
		ReseedRNG: func([]byte) error { return nil }, SetNetwork: func(net.HardwareAddr, netip.Prefix, netip.Addr) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base.raw")
	os.WriteFile(base, []byte("base"), 0o444)
	img := engine.Image{Ref: "minimal@1", OS: "minimal", Path: base, Format: "raw", SizeBytes: 1 << 20}
	svc, err := service.New(service.Config{StateDir: filepath.Join(dir, "state"), ReadyTimeout: 20 * time.Second, StopTimeout: time.Second,
		Log: slog.New(slog.DiscardHandler)},
		service.Deps{DB: db, Driver: guestFake{Driver: fake.New(fake.Config{}), srv: srv}, Network: nopNet{}, Images: oneImage{img},
			Disks: copyDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// TestClusterRoutesVMsToNodes: serve's cluster start over a real
// embedded NATS, a node joined over the API and serving its engine with
// its own credential (as `minions node` does); the control plane builds
// the node's remote engine at its first heartbeat and routes VMs there:
// a create pinned to the node runs on the node's engine, exec in it is
// signed by the node (the control plane never holds the node's key),
// and unpinned creates spread over both hosts. With the node stopped its
// VM shows unknown (host unreachable) and a destroy leaves a tombstone
// that the node settles when it is back.
func TestClusterRoutesVMsToNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the guest agent runs commands as users)")
	}
	dir, err := os.MkdirTemp("/tmp", "w1cr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	svc := vmHost(t, filepath.Join(dir, "cp"))
	rootC, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	alice, err := svc.EnsureUser(ctx, "alice", false)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hsrv := &http.Server{Handler: api.NewHandler(api.Config{Service: svc, Log: log})}
	go hsrv.Serve(ln)
	defer hsrv.Close()
	g, gctx := errgroup.WithContext(ctx)
	cl, err := startCluster(gctx, g, config.Config{Bind: ln.Addr().String(), NATSBind: "127.0.0.1:0"}, &local.Installation{Service: svc}, log,
		local.Paths{State: filepath.Join(dir, "cp"), Run: filepath.Join(dir, "cp")}, ln.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); g.Wait(); cl.close() }()

	// The node joins and runs as `minions node` does.
	inv, err := svc.HostAdd(ctx, rootC, "node1")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(inv.Command)
	nodeDir := filepath.Join(dir, "node1")
	if _, err := JoinCluster(ctx, f[3], f[5], "", nodeDir); err != nil {
		t.Fatal(err)
	}
	cred, err := nodeagent.LoadCredential(nodeDir)
	if err != nil {
		t.Fatal(err)
	}
	node := vmHost(t, filepath.Join(nodeDir, "host"))
	runNode := func() (stop func()) {
		conn, err := nodeagent.Connect(cred)
		if err != nil {
			t.Fatal(err)
		}
		nctx, cancel := context.WithCancel(ctx)
		g, gctx := errgroup.WithContext(nctx)
		g.Go(func() error {
			return nodeagent.Run(gctx, nodeagent.Config{ID: cred.HostID, Conn: conn, StateDir: nodeDir, Version: "v", Interval: 200 * time.Millisecond})
		})
		g.Go(func() error {
			return nodeagent.ServeEngine(gctx, nodeagent.ServeConfig{ID: cred.HostID, Conn: conn, Engine: node.NodeEngine()})
		})
		return func() { cancel(); g.Wait(); conn.Close() }
	}
	stopNode := runNode()
	defer func() { stopNode() }()
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitUntil("node1 ready", func() bool {
		h, err := svc.HostStatus(ctx, rootC, "node1")
		return err == nil && h.State == "ready"
	})

	cctx, ccancel := context.WithTimeout(ctx, 2*time.Minute)
	defer ccancel()
	var v service.VM
	waitUntil("a create pinned to node1", func() bool { // the node's engine may take a moment to be served
		v, err = svc.Create(cctx, alice, service.CreateRequest{Name: "on-node", Image: "minimal", MemoryMiB: 256, Host: "node1"}, nil)
		return err == nil
	})
	if v.Host != "node1" || v.Status != "running" {
		t.Fatalf("created %+v", v)
	}
	inst, err := node.Engine.Get(cctx, v.ID)
	if err != nil || inst.State != "running" || inst.IP != v.IP {
		t.Fatalf("the node's engine has %+v, %v; the control plane shows ip %s", inst, err, v.IP)
	}
	if _, err := svc.Engine.Get(cctx, v.ID); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("the control plane's own engine has the node's vm: %v", err)
	}
	var out bytes.Buffer
	if code, err := svc.Exec(cctx, alice, "on-node", service.ExecRequest{Command: "echo on node1", Stdout: &out}); err != nil || code != 0 || !strings.Contains(out.String(), "on node1") {
		t.Fatalf("exec on node1: %d %v %q", code, err, out.String())
	}
	// Unpinned: spread puts the next one on the control plane's own host
	// (node1 already holds one).
	v2, err := svc.Create(cctx, alice, service.CreateRequest{Name: "spread", Image: "minimal", MemoryMiB: 256}, nil)
	if err != nil || v2.Host == "node1" || v2.Host == "" {
		t.Fatalf("unpinned create: %+v, %v", v2, err)
	}

	// The node goes away.
	svc.SetHosts(service.HostsConfig{JoinURL: "http://x", Unreachable: time.Second})
	stopNode()
	waitUntil("the vm to show unknown", func() bool {
		g, err := svc.Get(cctx, alice, "on-node")
		return err == nil && g.Status == service.StatusUnknown && g.Note == service.NoteHostUnreachable
	})
	if _, err := svc.Stop(cctx, alice, "on-node"); errs.ClassOf(err) != errs.Unavailable {
		t.Fatalf("stop on an unreachable host: %v", err)
	}
	if err := svc.Destroy(cctx, alice, "on-node"); err != nil {
		t.Fatalf("destroy while away: %v", err)
	}
	if l, _ := svc.List(cctx, alice); len(l) != 1 {
		t.Fatalf("after destroy alice lists %+v", l)
	}
	if _, err := node.Engine.Get(cctx, v.ID); err != nil {
		t.Fatalf("the node lost its vm while away: %v", err)
	}
	// Back: the tombstone is settled on the node.
	stopNode = runNode()
	waitUntil("the node to destroy the tombstoned vm", func() bool {
		_, err := node.Engine.Get(cctx, v.ID)
		return errs.ClassOf(err) == errs.NotFound
	})
}
