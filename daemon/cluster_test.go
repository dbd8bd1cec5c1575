package daemon

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

// TestClusterJoin is the whole single-process path of issue 14: serve's
// cluster start (embedded NATS, the local host registered and
// heartbeating), `host add` over the API, `minions node join` on "another
// host" (another state dir) exchanging the token over HTTP, that node's
// agent heartbeating over NATS with its own credential until the control
// plane shows it ready; then the node stops and the host shows
// unreachable; removed, its connection is closed and its credential
// refused.
func TestClusterJoin(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "w8cl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := slog.New(slog.DiscardHandler)
	svc, err := service.New(service.Config{StateDir: dir, Log: log},
		service.Deps{DB: db, Driver: fake.New(fake.Config{}), Network: nopNet{}, Images: noImages{}, Disks: noDisks{}, HostKey: newSigner(t)})
	if err != nil {
		t.Fatal(err)
	}
	root, err := svc.EnsureUser(ctx, "root", true)
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

	cfg := config.Config{Bind: ln.Addr().String(), NATSBind: "127.0.0.1:0"}
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	cl, err := startCluster(gctx, g, cfg, &local.Installation{DB: db, Service: svc}, log, local.Paths{State: dir, Run: dir}, ln.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster start (embedded nats with jetstream, local host, node agent): %v", time.Since(start))
	defer func() { cancel(); g.Wait(); cl.close() }()

	waitHost := func(name, state string) service.Host {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			h, err := svc.HostStatus(ctx, root, name)
			if err == nil && h.State == state {
				return h
			}
			if time.Now().After(deadline) {
				t.Fatalf("host %s: %+v, %v; want state %s", name, h, err, state)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	hs, err := svc.HostList(ctx, root)
	if err != nil || len(hs) != 1 || !hs[0].Local {
		t.Fatalf("hosts after start: %+v %v", hs, err)
	}
	local := waitHost(hs[0].Name, "ready")
	if local.CPUs < 1 || local.MemoryMiB <= 0 || local.DiskFreeMiB <= 0 {
		t.Fatalf("local host capacity not reported: %+v", local)
	}

	inv, err := svc.HostAdd(ctx, root, "node1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(inv.Command, "minions node join http://127.0.0.1:") {
		t.Fatalf("join command %q", inv.Command)
	}
	fields := strings.Fields(inv.Command) // minions node join URL --token T
	nodeDir := filepath.Join(dir, "node1")
	// (The `minions node join` command itself lives in hostcmd; this
	// drives the same JoinCluster it calls.)
	joined, err := JoinCluster(ctx, fields[3], fields[5], "198.51.100.77", nodeDir)
	if err != nil || joined.Name != "node1" || joined.Subnet != "10.88.0.0/24" {
		t.Fatalf("node join: %+v %v", joined, err)
	}
	if h, _ := svc.HostStatus(ctx, root, "node1"); h.Subnet != "10.88.0.0/24" || h.Address != "198.51.100.77" {
		t.Fatalf("node1 after join: %+v", h)
	}
	// The token was spent: a second join fails and stores nothing.
	if _, err := JoinCluster(ctx, fields[3], fields[5], "", filepath.Join(dir, "node2")); err == nil {
		t.Fatal("second join with a spent token succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "node2", nodeagent.CredentialFile)); err == nil {
		t.Fatal("a refused join stored a credential")
	}

	// `minions node` on node1: its agent with its own credential.
	cred, err := nodeagent.LoadCredential(nodeDir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cred.CA, "BEGIN CERTIFICATE") {
		t.Fatalf("the join brought no fabric CA: %+v", cred)
	}
	// The fabric is TLS only: a plain connection is refused.
	if c, err := fabric.ConnectNode(strings.Join(cred.NATS, ","), cred.HostID, cred.Seed, fabric.NoReconnect()); err == nil {
		c.Close()
		t.Fatal("a node connected without TLS")
	}
	conn, err := nodeagent.Connect(cred)
	if err != nil {
		t.Fatal(err)
	}
	nctx, stopNode := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- nodeagent.Run(nctx, nodeagent.Config{ID: cred.HostID, Conn: conn, StateDir: nodeDir, Version: "v-node", Interval: 100 * time.Millisecond})
	}()
	h := waitHost("node1", "ready")
	// The heartbeat carries the address the node reaches the fabric
	// from, which replaces the one given at join.
	if h.Version != "v-node" || h.CPUs < 1 || h.Address != "127.0.0.1" || h.Subnet != "10.88.0.0/24" {
		t.Fatalf("node1 after heartbeats: %+v", h)
	}
	// Silence: unreachable (1 s here instead of 10 s).
	svc.SetHosts(service.HostsConfig{JoinURL: "http://x", Unreachable: time.Second})
	stopNode()
	<-done
	conn.Close()
	waitHost("node1", service.HostUnreachable)

	// Back: ready again. Then removed while connected: its connection is
	// closed at its next heartbeat and the credential no longer connects.
	conn, err = nodeagent.Connect(cred)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go nodeagent.Run(ctx, nodeagent.Config{ID: cred.HostID, Conn: conn, StateDir: nodeDir, Version: "v-node", Interval: 100 * time.Millisecond})
	waitHost("node1", "ready")
	if err := svc.HostRemove(ctx, root, "node1"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); conn.Connected(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a removed host stays connected")
		}
	}
	if _, err := nodeagent.Connect(cred, fabric.NoReconnect()); err == nil {
		t.Fatal("a removed host's credential still connects")
	}
}

// TestClusterJoinReach: a control plane that advertises an address other
// hosts would use while its API and fabric listen on loopback only
// refuses `host add`, naming the settings to change, rather than print a
// join command that cannot work.
func TestClusterJoinReach(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "w2cr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := slog.New(slog.DiscardHandler)
	svc, err := service.New(service.Config{StateDir: dir, Log: log},
		service.Deps{DB: db, Driver: fake.New(fake.Config{}), Network: nopNet{}, Images: noImages{}, Disks: noDisks{}, HostKey: newSigner(t)})
	if err != nil {
		t.Fatal(err)
	}
	root, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := config.Config{Bind: ln.Addr().String(), NATSBind: "127.0.0.1:0", Advertise: "203.0.113.7"}
	g, gctx := errgroup.WithContext(ctx)
	cl, err := startCluster(gctx, g, cfg, &local.Installation{DB: db, Service: svc}, log, local.Paths{State: dir, Run: dir}, ln.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); g.Wait(); cl.close() }()
	_, err = svc.HostAdd(ctx, root, "node1")
	if err == nil || !strings.Contains(err.Error(), "set bind = ") || !strings.Contains(err.Error(), "set nats_bind = ") {
		t.Fatalf("host add with loopback listeners: %v", err)
	}
}
