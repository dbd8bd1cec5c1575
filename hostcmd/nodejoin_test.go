package hostcmd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

func TestNodeUnit(t *testing.T) {
	def := NodeUnit("/usr/local/bin/minions", local.Paths{State: local.DefaultStateDir, Run: "/run/minions"})
	for _, want := range []string{"ExecStart=/usr/local/bin/minions node\n", "Restart=always", "KillMode=process", "WantedBy=multi-user.target", "After=network-online.target"} {
		if !strings.Contains(def, want) {
			t.Errorf("unit lacks %q:\n%s", want, def)
		}
	}
	other := NodeUnit("/opt/minions", local.Paths{State: "/srv/m", Run: "/run/m"})
	if !strings.Contains(other, "ExecStart=/opt/minions --state-dir /srv/m --run-dir /run/m node\n") {
		t.Errorf("unit for another state dir:\n%s", other)
	}
}

// fakeSystemctl records systemctl's arguments and fails the call whose
// first argument is failOn.
type fakeSystemctl struct {
	mu     sync.Mutex
	calls  []string
	failOn string
}

func (f *fakeSystemctl) run(_ context.Context, args ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, strings.Join(args, " "))
	if len(args) > 0 && args[0] == f.failOn {
		return errors.New("systemctl " + f.failOn + " failed")
	}
	return nil
}

// TestInstallNodeUnit: the unit file is written where systemd reads it,
// systemd reloads and enables and starts it; when enabling fails, the
// previous state is back (no unit, or the old unit's text).
func TestInstallNodeUnit(t *testing.T) {
	ctx := context.Background()
	paths := local.Paths{State: "/srv/m", Run: "/run/m"}
	dir := filepath.Join(t.TempDir(), "system")
	f := &fakeSystemctl{}
	sd := systemdHost{UnitDir: dir, Present: func() bool { return true }, Run: f.run}
	path, err := installNodeUnit(ctx, sd, "/usr/bin/minions", paths)
	if err != nil || path != filepath.Join(dir, NodeUnitName) {
		t.Fatalf("install: %q %v", path, err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != NodeUnit("/usr/bin/minions", paths) {
		t.Fatalf("unit file: %s %v", b, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Fatalf("unit mode %v", fi.Mode())
	}
	if want := []string{"daemon-reload", "enable --now " + NodeUnitName}; strings.Join(f.calls, "|") != strings.Join(want, "|") {
		t.Fatalf("systemctl calls %q, want %q", f.calls, want)
	}

	// A failed enable with an older unit in place: the old text is back.
	os.WriteFile(path, []byte("old unit\n"), 0o644)
	f2 := &fakeSystemctl{failOn: "enable"}
	sd.Run = f2.run
	if _, err := installNodeUnit(ctx, sd, "/usr/bin/minions", paths); err == nil || !strings.Contains(err.Error(), "enable failed") {
		t.Fatalf("failing enable: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "old unit\n" {
		t.Fatalf("after a failed enable the unit reads %q", b)
	}
	if f2.calls[len(f2.calls)-1] != "daemon-reload" {
		t.Fatalf("no reload after the undo: %q", f2.calls)
	}
	// None before: none after.
	os.Remove(path)
	sd.Run = (&fakeSystemctl{failOn: "daemon-reload"}).run
	if _, err := installNodeUnit(ctx, sd, "/usr/bin/minions", paths); err == nil {
		t.Fatal("a failing reload installed the unit")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("a failed install left %s: %v", path, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a failed install left %v", ents)
	}
}

// TestNodeJoinWithoutSystemd: with no systemd running and no
// --no-systemd, join refuses before it spends the token (it never calls
// the control plane: the URL here answers nothing) and stores nothing.
func TestNodeJoinWithoutSystemd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	old := systemd
	t.Cleanup(func() { systemd = old })
	systemd.Present = func() bool { return false }
	dir := t.TempDir()
	var out, errOut strings.Builder
	env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }, Extra: Commands()}
	code := cli.Run(context.Background(), env, []string{"node", "join", "http://127.0.0.1:1", "--token", "mjt_x", "--state-dir", dir, "--run-dir", filepath.Join(dir, "run")})
	if code == 0 || !strings.Contains(errOut.String(), "--no-systemd") {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if _, err := os.Stat(filepath.Join(dir, nodeagent.CredentialFile)); err == nil {
		t.Fatal("a refused join stored a credential")
	}
}

const envJoinNetns = "MINIONS_HOSTCMD_TEST_NETNS"

// inNetns runs the calling test again inside a network namespace it makes
// (ip netns exec on the test binary) and returns false; in that child it
// returns true. Nothing touches the host's own network.
func inNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envJoinNetns) == t.Name() {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("lo up: %v %s", err, out)
		}
		if err := mirrorHostCgroups(); err != nil {
			t.Fatalf("cgroups: %v", err)
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, netlink, nftables)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8)")
	}
	b := make([]byte, 3)
	rand.Read(b)
	ns := fmt.Sprintf("mj%d%s", os.Getpid()%100000, hex.EncodeToString(b))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	args := []string{"netns", "exec", ns, os.Args[0], "-test.run", "^" + t.Name() + "$", "-test.count=1", "-test.timeout=230s"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = append(os.Environ(), envJoinNetns+"="+t.Name())
	out, err := cmd.CombinedOutput()
	t.Logf("in netns %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("test in netns %s: %v", ns, err)
	}
	return false
}

// TestNodeJoinNoSystemdNetns is `minions node join CONTROL --token T
// --no-systemd` against a real control plane in the same process (SQLite,
// the HTTP API, an embedded NATS server with TLS and node keys, the
// batched heartbeat receiver), all inside a network namespace the test
// makes: the join takes a /24 of the cluster range, sets up the bridge
// with that subnet's gateway and the nftables table for it, and runs the
// node agent in the foreground until it is stopped; the control plane
// sees the host ready with its subnet and the address it reaches the
// fabric from.
func TestNodeJoinNoSystemdNetns(t *testing.T) {
	if !inNetns(t) {
		return
	}
	dir, err := os.MkdirTemp("/tmp", "w2nj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, root, inv := testControlPlane(t, ctx, filepath.Join(dir, "cp"))
	fields := strings.Fields(inv.Command) // minions node join URL --token T

	// The new host: `minions node join ... --no-systemd`, in the
	// foreground until stopped.
	nodeDir := filepath.Join(dir, "node")
	var out, errOut syncBuffer
	env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }, Extra: Commands()}
	nctx, stopNode := context.WithCancel(ctx)
	code := make(chan int, 1)
	go func() {
		code <- cli.Run(nctx, env, []string{"node", "join", fields[3], "--token", fields[5], "--no-systemd", "--json",
			"--state-dir", nodeDir, "--run-dir", filepath.Join(nodeDir, "run")})
	}()
	var h service.Host
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		h, err = svc.HostStatus(ctx, root, "node1")
		if err == nil && h.State == "ready" && h.Address != "" {
			break
		}
		select {
		case c := <-code:
			t.Fatalf("node join exited %d: %s\n%s", c, out.String(), errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("node1 never became ready: %+v %v\n%s\n%s", h, err, out.String(), errOut.String())
		}
	}
	if h.Subnet != "10.88.0.0/24" || h.Address != "127.0.0.1" || h.CPUs < 1 {
		t.Fatalf("node1 on the control plane: %+v", h)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(out.String()), &res); err != nil || res["subnet"] != "10.88.0.0/24" || res["bridge"] != "minions0" || res["gateway"] != "10.88.0.1" {
		t.Fatalf("join --json: %v %v", res, err)
	}
	cred, err := nodeagent.LoadCredential(nodeDir)
	if err != nil || cred.Subnet != "10.88.0.0/24" {
		t.Fatalf("credential: %+v %v", cred, err)
	}
	// The bridge and nftables of this namespace follow the node's subnet.
	addr, err := exec.Command("ip", "-o", "-4", "addr", "show", "dev", "minions0").CombinedOutput()
	if err != nil || !strings.Contains(string(addr), "inet 10.88.0.1/24") {
		t.Fatalf("bridge: %s %v", addr, err)
	}
	if nft, err := exec.Command("nft", "list", "ruleset").CombinedOutput(); err != nil || !strings.Contains(string(nft), "10.88.0.0/24") {
		t.Fatalf("nftables: %v\n%s", err, nft)
	}
	// doctor checks the node's network against its own subnet.
	var dout, derr strings.Builder
	denv := &cli.Env{Stdin: strings.NewReader(""), Stdout: &dout, Stderr: &derr, Getenv: func(string) string { return "" }, Extra: Commands()}
	cli.Run(ctx, denv, []string{"doctor", "--json", "--state-dir", nodeDir, "--run-dir", filepath.Join(nodeDir, "run")})
	var checks []check
	if err := json.Unmarshal([]byte(dout.String()), &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s\n%s", err, dout.String(), derr.String())
	}
	netOK := false
	for _, c := range checks {
		if c.What == "network" {
			netOK = c.OK
			if !c.OK {
				t.Errorf("doctor on the node: %s", c.Detail)
			}
		}
	}
	if !netOK {
		t.Errorf("doctor on the node has no good network line: %+v", checks)
	}

	stopNode()
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("node join exited %d: %s", c, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the node did not stop")
	}
}

// mirrorHostCgroups mounts the host's cgroup hierarchies (as init sees
// them) at the same places in this mount namespace: `ip netns exec`
// remounts /sys, which drops the cgroup mounts the VM jail checks for
// (as e2e's helper of the same name does; the mounts stay in the test's
// own mount namespace).
func mirrorHostCgroups() error {
	own, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	if strings.Contains(string(own), " - cgroup") {
		return nil
	}
	host, err := os.ReadFile("/proc/1/mountinfo")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(host), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || (f[4] != "/sys/fs/cgroup" && !strings.HasPrefix(f[4], "/sys/fs/cgroup/")) {
			continue
		}
		mp, fstype := f[4], g[0]
		if fstype != "tmpfs" && fstype != "cgroup" && fstype != "cgroup2" {
			continue
		}
		var opts []string
		for _, o := range strings.Split(g[2], ",") {
			if o != "rw" && o != "ro" {
				opts = append(opts, o)
			}
		}
		if err := os.MkdirAll(mp, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(fstype, mp, fstype, 0, strings.Join(opts, ",")); err != nil {
			return fmt.Errorf("mount %s %s: %w", fstype, mp, err)
		}
	}
	return nil
}

// TestNodeJoinPreflightNetns: a host that cannot run VMs (here the VM
// jail finds no cgroups: an empty tmpfs over /sys/fs/cgroup in the
// test's own mount namespace) is refused before the token is spent: no
// credential, the host still joining, and the same token joins once the
// host is fixed.
func TestNodeJoinPreflightNetns(t *testing.T) {
	if !inNetns(t) {
		return
	}
	dir, err := os.MkdirTemp("/tmp", "w2pf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, root, inv := testControlPlane(t, ctx, filepath.Join(dir, "cp"))
	fields := strings.Fields(inv.Command)
	nodeDir := filepath.Join(dir, "node")
	join := func() (int, string) {
		var out, errOut syncBuffer
		env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }, Extra: Commands()}
		code := cli.Run(ctx, env, []string{"node", "join", fields[3], "--token", fields[5], "--no-start", "--state-dir", nodeDir, "--run-dir", filepath.Join(nodeDir, "run")})
		return code, errOut.String()
	}

	if err := unix.Mount("tmpfs", "/sys/fs/cgroup", "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	code, msg := join()
	if err := unix.Unmount("/sys/fs/cgroup", 0); err != nil {
		t.Fatal(err)
	}
	if code == 0 || !strings.Contains(msg, "nothing was joined") {
		t.Fatalf("join on a host without cgroups: %d %s", code, msg)
	}
	if _, err := os.Stat(filepath.Join(nodeDir, nodeagent.CredentialFile)); err == nil {
		t.Fatal("a refused join stored a credential")
	}
	if h, err := svc.HostStatus(ctx, root, "node1"); err != nil || h.State != "joining" || h.Subnet != "" {
		t.Fatalf("node1 after a refused join: %+v %v", h, err)
	}
	if code, msg := join(); code != 0 {
		t.Fatalf("the same token once the host is fixed: %d %s", code, msg)
	}
	if h, err := svc.HostStatus(ctx, root, "node1"); err != nil || h.Subnet != "10.88.0.0/24" {
		t.Fatalf("node1 after joining: %+v %v", h, err)
	}
}

// TestNodeJoinSystemdNetns is `minions node join` where systemd runs (a
// fake systemctl): it joins, sets the host up inside the test's network
// namespace, installs minions-node.service for this state dir and has
// systemd enable and start it, then returns. What the unit runs, `minions
// node`, then brings the host up on the control plane from the stored
// credential.
func TestNodeJoinSystemdNetns(t *testing.T) {
	if !inNetns(t) {
		return
	}
	dir, err := os.MkdirTemp("/tmp", "w2ns")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, root, inv := testControlPlane(t, ctx, filepath.Join(dir, "cp"))
	fields := strings.Fields(inv.Command)

	f := &fakeSystemctl{}
	old := systemd
	t.Cleanup(func() { systemd = old })
	systemd = systemdHost{UnitDir: filepath.Join(dir, "systemd"), Present: func() bool { return true }, Run: f.run}
	nodeDir, runDir := filepath.Join(dir, "node"), filepath.Join(dir, "node", "run")
	var out, errOut syncBuffer
	env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }, Extra: Commands()}
	jctx, jcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer jcancel()
	if code := cli.Run(jctx, env, []string{"node", "join", fields[3], "--token", fields[5], "--json", "--state-dir", nodeDir, "--run-dir", runDir}); code != 0 {
		t.Fatalf("node join exited %d: %s", code, errOut.String())
	}
	var res map[string]any
	unit := filepath.Join(dir, "systemd", NodeUnitName)
	if err := json.Unmarshal([]byte(out.String()), &res); err != nil || res["unit"] != unit || res["subnet"] != "10.88.0.0/24" {
		t.Fatalf("join --json: %v %v\n%s", res, err, out.String())
	}
	exe, _ := os.Executable()
	b, err := os.ReadFile(unit)
	if err != nil || !strings.Contains(string(b), "ExecStart="+exe+" --state-dir "+nodeDir+" --run-dir "+runDir+" node\n") {
		t.Fatalf("unit: %v\n%s", err, b)
	}
	if strings.Join(f.calls, "|") != "daemon-reload|enable --now "+NodeUnitName {
		t.Fatalf("systemctl calls %q", f.calls)
	}
	if addr, err := exec.Command("ip", "-o", "-4", "addr", "show", "dev", "minions0").CombinedOutput(); err != nil || !strings.Contains(string(addr), "inet 10.88.0.1/24") {
		t.Fatalf("bridge after join: %s %v", addr, err)
	}

	// What the unit runs.
	out, errOut = syncBuffer{}, syncBuffer{}
	nctx, stopNode := context.WithCancel(ctx)
	code := make(chan int, 1)
	go func() { code <- cli.Run(nctx, env, []string{"node", "--state-dir", nodeDir, "--run-dir", runDir}) }()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		h, err := svc.HostStatus(ctx, root, "node1")
		if err == nil && h.State == "ready" && h.Address == "127.0.0.1" && h.Subnet == "10.88.0.0/24" {
			break
		}
		select {
		case c := <-code:
			t.Fatalf("minions node exited %d: %s", c, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("node1 never became ready: %+v %v\n%s", h, err, errOut.String())
		}
	}
	stopNode()
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("minions node exited %d: %s", c, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("minions node did not stop")
	}
}

// testControlPlane is a real control plane in this process (SQLite, the
// HTTP API on loopback, an embedded NATS server with TLS and node keys,
// the batched heartbeat receiver) with host node1 added; inv is its
// invitation.
func testControlPlane(t *testing.T, ctx context.Context, cpDir string) (*service.Service, service.Caller, service.HostInvite) {
	t.Helper()
	svc, root, invs := testControlPlaneOn(t, ctx, cpDir, "127.0.0.1", "node1")
	return svc, root, invs[0]
}

// testControlPlaneOn is testControlPlane listening on host, with the
// named hosts added.
func testControlPlaneOn(t *testing.T, ctx context.Context, cpDir, host string, names ...string) (*service.Service, service.Caller, []service.HostInvite) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)

	// The control plane.
	os.MkdirAll(cpDir, 0o700)
	db, err := store.Open(ctx, filepath.Join(cpDir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewSignerFromKey(priv)
	cat := &images.Catalog{Dir: filepath.Join(cpDir, "images")}
	svc, err := service.New(service.Config{StateDir: cpDir, Log: log},
		service.Deps{DB: db, Driver: fake.New(fake.Config{}), Network: nopNet{}, Images: service.NewHostCatalog(cat, local.AgentBinary), Disks: nopDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	root, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	hsrv := &http.Server{Handler: api.NewHandler(api.Config{Service: svc, Log: log})}
	go hsrv.Serve(ln)
	t.Cleanup(func() { hsrv.Close() })
	tlsCfg, caPEM, err := fabric.ServerTLS(filepath.Join(cpDir, "nats-tls"), []string{host})
	if err != nil {
		t.Fatal(err)
	}
	fsrv, err := fabric.Start(fabric.Config{Listen: net.JoinHostPort(host, "0"), StoreDir: filepath.Join(cpDir, "nats"), TLS: tlsCfg,
		NodeKey: func(pub string) (string, bool) { return svc.NodeKey(context.Background(), pub) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fsrv.Close)
	control, err := fsrv.Control("control")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(control.Close)
	stopHB, err := nodeagent.ListenBatched(control, time.Second, func(b map[string]nodeagent.Heartbeat) {
		beats := map[string]service.Heartbeat{}
		for id, hb := range b {
			beats[id] = service.Heartbeat{CPUs: hb.CPUs, MemoryMiB: hb.MemoryMiB, DiskMiB: hb.DiskMiB, MemoryFreeMiB: hb.MemoryFreeMiB,
				DiskFreeMiB: hb.DiskFreeMiB, Version: hb.Version, Address: hb.Address}
		}
		svc.RecordHeartbeats(context.Background(), beats)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopHB() })
	svc.SetHosts(service.HostsConfig{JoinURL: "http://" + ln.Addr().String(), NATSURLs: []string{fsrv.ClientURL()}, NATSCA: string(caPEM)})
	var invs []service.HostInvite
	for _, name := range names {
		inv, err := svc.HostAdd(ctx, root, name)
		if err != nil {
			t.Fatal(err)
		}
		invs = append(invs, inv)
	}
	return svc, root, invs
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestNodeOptionsSubnet: a joined node's engine, bridge and nftables are
// built on the subnet its join assigned, whatever the config file says;
// without one (an old credential) the config's subnet stays.
func TestNodeOptionsSubnet(t *testing.T) {
	cfg := config.Config{Subnet: "10.210.0.0/16"}
	cfg.Defaults()
	paths := local.Paths{State: "/srv/m", Run: "/run/m"}
	if o := nodeOptions(cfg, paths, nodeagent.Credential{Subnet: "10.88.3.0/24"}, nil); o.Subnet.String() != "10.88.3.0/24" {
		t.Fatalf("with the join's subnet: %v", o.Subnet)
	}
	if o := nodeOptions(cfg, paths, nodeagent.Credential{}, nil); o.Subnet.String() != "10.210.0.0/16" {
		t.Fatalf("without: %v", o.Subnet)
	}
}
