package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor/qemu"
	"github.com/minionsdev/minions/vm/jail"
	"github.com/minionsdev/minions/vm/network"
	"github.com/minionsdev/minions/vsockcli"
)

// TestEngineBootsFetchedImage (issue 14): a node whose catalogue is empty
// creates a VM from "minimal": its engine asks the control plane's API
// (a real service over the test installation's catalogue: Debian's kernel
// and the minimal image), fetches the image and kernel by checksum,
// builds the initramfs around its own agent, and QEMU boots the fetched
// copy until the guest agent answers.
func TestEngineBootsFetchedImage(t *testing.T) {
	needVMs(t)
	ctx := context.Background()
	dir, err := os.MkdirTemp(filepath.Dir(stateDir), "fetch")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	agentBin := filepath.Join(binDir, "minions-agent")

	// The control plane: its store, the installation's catalogue, the API.
	cpDB, err := store.Open(ctx, filepath.Join(dir, "cp.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cpDB.Close() })
	cpCat := &images.Catalog{Dir: filepath.Join(stateDir, "images"), Log: log}
	svc, err := service.New(service.Config{StateDir: filepath.Join(dir, "cp"), RunDir: filepath.Join(dir, "cprun"), Log: log},
		service.Deps{DB: cpDB, Engine: engine.Absent{Reason: "control plane only"}, Images: service.NewHostCatalog(cpCat, func() (string, error) { return agentBin, nil })})
	if err != nil {
		t.Fatal(err)
	}
	svc.SetHosts(service.HostsConfig{JoinURL: "http://127.0.0.1:1", NATSURLs: []string{"nats://127.0.0.1:2"}})
	root, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := svc.HostAdd(ctx, root, "node1")
	if err != nil {
		t.Fatal(err)
	}
	seed, pub, err := fabric.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.JoinHost(ctx, service.JoinRequest{Token: inv.Token, NKey: pub}); err != nil {
		t.Fatal(err)
	}
	var blobs atomic.Int64
	h := api.NewHandler(api.Config{Service: svc})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/fabric/blobs/") {
			blobs.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	defer srv.Close()

	// The node: an empty catalogue, its engine on QEMU with FetchImages.
	nodeCat := &images.Catalog{Dir: filepath.Join(dir, "node", "images"), Log: log}
	f, err := nodeagent.NewFetcher(nodeagent.FetchConfig{Control: srv.URL, Seed: seed, Catalog: nodeCat, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	imgs := nodeagent.FetchImages{Local: engine.CatalogImages{Cat: nodeCat, Agent: func() (string, error) { return agentBin, nil }}, Fetcher: f}
	db, err := store.Open(ctx, filepath.Join(dir, "node.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	owner := store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}
	if err := store.InsertUser(ctx, db, owner); err != nil {
		t.Fatal(err)
	}
	nm, err := network.New(network.Config{Bridge: "mnfet0", Subnet: netip.MustParsePrefix("10.218.0.0/24"), Table: "mnfet"}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := nm.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nm.Teardown(context.Background()) })
	exe := filepath.Join(binDir, "minions-relay")
	drv, err := qemu.New(qemu.Config{Accel: qemu.AccelTCG, RelayCommand: []string{exe, "agent-relay"},
		ConsoleCommand: []string{exe, "console-log"}, Jail: jail.Config{Mode: "off"}, Log: log,
		MemoryDir: local.MemoryDir(filepath.Join(dir, "node"))})
	noteInstallation(filepath.Join(dir, "node"), filepath.Join(dir, "noderun")) // its ram files are checked at the end (ramdir_test.go)
	if err != nil {
		t.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewSignerFromKey(priv)
	l, err := engine.NewLocal(engine.Config{StateDir: filepath.Join(dir, "node"), RunDir: filepath.Join(dir, "noderun"), Subnet: nm.Config().Subnet,
		ReadyTimeout: 2 * time.Minute, StopTimeout: 10 * time.Second, Log: log},
		engine.Deps{DB: db, Driver: drv, Network: netPorts{nm}, Images: imgs, Disks: engine.HostDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	var steps []string
	inst, err := l.Create(cctx, engine.CreateSpec{ID: vm.NewID(), Name: "fetched", Owner: owner.ID, Image: "minimal", CPUs: 1, MemoryMiB: 256, Cold: true},
		func(s string) { steps = append(steps, s+"@"+time.Since(start).Round(time.Millisecond).String()) })
	if err != nil {
		t.Fatal(err)
	}
	defer l.Destroy(context.Background(), inst.ID)
	t.Logf("created from a fetched image, agent ready in %v: %v", time.Since(start).Round(time.Millisecond), steps)
	cpImg, err := cpCat.Resolve("minimal")
	if err != nil {
		t.Fatal(err)
	}
	nodeImg, err := nodeCat.Resolve("minimal")
	if err != nil || nodeImg.Ref() != cpImg.Ref() || inst.Image != cpImg.Ref() || inst.State != vm.Running {
		t.Fatalf("instance %+v, node image %+v %v, want %s", inst, nodeImg, err, cpImg.Ref())
	}
	if blobs.Load() == 0 {
		t.Fatal("nothing was fetched")
	}
	cl, err := l.Agent(cctx, inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out strings.Builder
	if code, err := cl.Exec(cctx, vsockcli.ExecRequest{Command: "uname -r", Stdout: &out, Stderr: &out}); err != nil || code != 0 {
		t.Fatalf("exec: %d %v %s", code, err, out.String())
	}
	k, err := images.NewestKernel(nodeCat.KernelDir())
	if err != nil || strings.TrimSpace(out.String()) != k.Version {
		t.Fatalf("guest kernel %q, the node's fetched kernel %+v %v", out.String(), k, err)
	}
}
