package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/sync/errgroup"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

// natsServerBinary builds nats-server from the module cache (it is a
// dependency) once per version into /tmp, or takes MINIONS_NATS_SERVER;
// the test is skipped when neither works.
func natsServerBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MINIONS_NATS_SERVER"); p != "" {
		return p
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	out, err := exec.Command(gobin, "list", "-m", "-f", "{{.Version}}", "github.com/nats-io/nats-server/v2").Output()
	if err != nil {
		t.Skipf("no nats-server version from the module: %v", err)
	}
	bin := filepath.Join(os.TempDir(), "minions-test-nats-server-"+strings.TrimSpace(string(out)))
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	tmp := bin + ".tmp" + strconv.Itoa(os.Getpid())
	cmd := exec.Command(gobin, "build", "-o", tmp, "github.com/nats-io/nats-server/v2")
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		t.Skipf("cannot build nats-server: %v\n%s", err, b)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Skipf("cannot install the nats-server build: %v", err)
	}
	return bin
}

// natsUser is one authorization user of a nats-server configuration file
// (JSON is valid NATS configuration): pub with perms (nil: unrestricted).
func natsUser(pub string, perms *server.Permissions) map[string]any {
	u := map[string]any{"nkey": pub}
	if perms == nil {
		return u
	}
	p := map[string]any{}
	if perms.Publish != nil {
		p["publish"] = map[string]any{"allow": perms.Publish.Allow}
	}
	if perms.Subscribe != nil {
		p["subscribe"] = map[string]any{"allow": perms.Subscribe.Allow}
	}
	if perms.Response != nil {
		p["allow_responses"] = map[string]any{"max": perms.Response.MaxMsgs, "expires": perms.Response.Expires.String()}
	}
	u["permissions"] = p
	return u
}

// externalNATS is a separate nats-server process an operator runs.
type externalNATS struct {
	t    *testing.T
	conf string
	port int
	cmd  *exec.Cmd
}

func (x *externalNATS) writeConf(users []map[string]any) {
	x.t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // NATS configuration has no \u escapes: keep ">" as is
	enc.SetIndent("", "  ")
	enc.Encode(map[string]any{"host": "127.0.0.1", "port": x.port, "authorization": map[string]any{"users": users}})
	if err := os.WriteFile(x.conf, b.Bytes(), 0o600); err != nil {
		x.t.Fatal(err)
	}
}

// lockedBuffer collects a process's output for failure messages.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (x *externalNATS) url() string { return "nats://127.0.0.1:" + strconv.Itoa(x.port) }

// TestServeExternalNATS: `serve --nats nats://...` against a separate
// nats-server process (the real binary, configured as an operator would,
// with the control plane's key and each node's key confined by
// fabric.NodePermissions): serve embeds no server, registers this host and
// its in-process node heartbeats through the external server; a node that
// joins is refused by that server until the operator admits its key, then
// heartbeats until ready, answers the control plane's requests, and stays
// confined to its own subjects.
func TestServeExternalNATS(t *testing.T) {
	bin := natsServerBinary(t)
	dir, err := os.MkdirTemp("/tmp", "w5xn")
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

	// The operator's side: keys for the control plane and for this host's
	// in-process node (serve keeps its seed under the state dir and logs
	// its key; registering the host first gives the ID its permissions
	// name, as serve's own registration keeps it).
	cseed, cpub, err := fabric.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	seedFile := filepath.Join(dir, "control.seed")
	if err := os.WriteFile(seedFile, []byte(cseed+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, lpub, err := localNodeKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	localID, err := svc.EnsureLocalHost(ctx, localHostName(), lpub, cli.Version)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x := &externalNATS{t: t, conf: filepath.Join(dir, "nats.conf"), port: pl.Addr().(*net.TCPAddr).Port}
	pl.Close()
	users := []map[string]any{natsUser(cpub, nil), natsUser(lpub, fabric.NodePermissions(localID))}
	x.writeConf(users)
	x.cmd = exec.Command(bin, "-c", x.conf)
	natsLog := &lockedBuffer{}
	x.cmd.Stdout, x.cmd.Stderr = natsLog, natsLog
	if err := x.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { x.cmd.Wait(); close(exited) }()
	t.Cleanup(func() { x.cmd.Process.Kill(); <-exited })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", x.url()[len("nats://"):]); err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("nats-server exited:\n%s", natsLog.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server did not listen:\n%s", natsLog.String())
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hsrv := &http.Server{Handler: api.NewHandler(api.Config{Service: svc, Log: log})}
	go hsrv.Serve(ln)
	defer hsrv.Close()

	// serve's own flags and config file.
	cfgFile := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf("nats_seed_file = %q\n", seedFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	config.ServeFlags(fs)
	if err := fs.Parse([]string{"--config", cfgFile, "--nats", x.url(), "--bind", ln.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Effective(fs, dir, dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NATSURL != x.url() {
		t.Fatalf("nats_url %q", cfg.NATSURL)
	}
	g, gctx := errgroup.WithContext(ctx)
	cl, err := startCluster(gctx, g, cfg, &local.Installation{DB: db, Service: svc}, log, local.Paths{State: dir, Run: dir}, ln.Addr())
	if err != nil {
		t.Fatalf("start against the external server: %v\n%s", err, natsLog.String())
	}
	defer func() { cancel(); g.Wait(); cl.close() }()
	if cl.srv != nil {
		t.Fatal("serve --nats embedded a server of its own")
	}

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
	if h := waitHost(localHostName(), "ready"); h.ID != localID || h.CPUs < 1 {
		t.Fatalf("this host through the external server: %+v", h)
	}

	// A new node joins over the API; the fabric address it gets is the
	// external server's, with no CA of Minions' own.
	inv, err := svc.HostAdd(ctx, root, "node1")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(inv.Command) // minions node join URL --token T
	nodeDir := filepath.Join(dir, "node1")
	if _, err := JoinCluster(ctx, fields[3], fields[5], "", nodeDir); err != nil {
		t.Fatal(err)
	}
	cred, err := nodeagent.LoadCredential(nodeDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(cred.NATS) != 1 || cred.NATS[0] != x.url() || cred.CA != "" {
		t.Fatalf("join result for an external cluster: nats %q, ca %d bytes", cred.NATS, len(cred.CA))
	}
	// The external server decides who connects: not yet admitted.
	if c, err := nodeagent.Connect(cred, fabric.NoReconnect()); err == nil {
		c.Close()
		t.Fatal("the external server admitted a key its operator never added")
	}
	// The operator admits it with the key and host ID `host status` shows
	// (nats-server reloads its configuration on SIGHUP).
	joined, err := svc.HostStatus(ctx, root, "node1")
	if err != nil {
		t.Fatal(err)
	}
	if npub, _ := fabric.PublicKeyOf(cred.Seed); joined.NKey != npub || joined.ID != cred.HostID {
		t.Fatalf("host status of node1: nkey %q id %q; the node has %q %q", joined.NKey, joined.ID, npub, cred.HostID)
	}
	x.writeConf(append(users, natsUser(joined.NKey, fabric.NodePermissions(joined.ID))))
	if err := x.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var conn *fabric.Conn
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if conn, err = nodeagent.Connect(cred); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node1 after the reload: %v\n%s", err, natsLog.String())
		}
	}
	defer conn.Close()
	go nodeagent.Run(ctx, nodeagent.Config{ID: cred.HostID, Conn: conn, StateDir: nodeDir, Version: "v-node", Interval: 100 * time.Millisecond})
	if h := waitHost("node1", "ready"); h.Version != "v-node" {
		t.Fatalf("node1 through the external server: %+v", h)
	}
	// Request/reply, the path of every engine call, through the external
	// server: the node may answer the control plane's request.
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	b, err := cl.control.Request(rctx, fabric.NodeSubject(cred.HostID)+".ping", nil)
	rcancel()
	if err != nil || !strings.Contains(string(b), `"v-node"`) {
		t.Fatalf("ping node1 through the external server: %q %v", b, err)
	}
	// Confined there too: another node's status is not node1's to publish.
	conn.Publish(fabric.StatusSubject(localID), []byte("{}"))
	deadline := time.After(5 * time.Second)
	for {
		select {
		case err := <-conn.Errors():
			if strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				return
			}
		case <-deadline:
			t.Fatal("node1 published another host's status unchallenged")
		}
	}
}
