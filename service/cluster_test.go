package service

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
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

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"github.com/minionsdev/minions/vm/hypervisor/fake/fakeagent"
)

// machine is one host: a full service on the fake hypervisor with a
// real guest agent per VM, its own store and state directory.
type machine struct {
	svc *Service
	drv *fakeagent.AgentDriver
	key ssh.Signer
	dir string
}

func newMachine(t *testing.T) *machine {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (the in-process guest agent runs commands as users)")
	}
	dir, err := os.MkdirTemp("", "svch")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	db, err := store.Open(context.Background(), filepath.Join(dir, "m.db"))
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
	srv := newGuestAgent(t, root, key)
	drv := fakeagent.NewAgentDriver(fake.New(fake.Config{Caps: hypervisor.Caps{MemorySnapshot: true}}), srv)
	base := filepath.Join(dir, "base.raw")
	os.WriteFile(base, []byte("base"), 0o444)
	svc, err := New(Config{StateDir: filepath.Join(dir, "state"), ReadyTimeout: 20 * time.Second, StopTimeout: time.Second},
		Deps{DB: db, Driver: drv, Network: &ports{set: map[string]netip.Addr{}}, Images: oneImage{base}, Disks: fileDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(err)
	}
	return &machine{svc: svc, drv: drv, key: key, dir: dir}
}

// guestNets records the eth0 moves the in-process guest agents were asked
// for (their SetNetwork hook), newest last.
var guestNets netMoves

type netMoves struct {
	mu    sync.Mutex
	moves []string // "mac ip/len"
}

func (m *netMoves) add(mac string, ip netip.Prefix) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.moves = append(m.moves, mac+" "+ip.String())
}

func (m *netMoves) last() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.moves) == 0 {
		return ""
	}
	return m.moves[len(m.moves)-1]
}

// newGuestAgent is the in-process guest agent of a machine whose guest
// files are under root, trusting key.
func newGuestAgent(t *testing.T, root string, key ssh.Signer) *guestagent.Server {
	t.Helper()
	srv, err := guestagent.NewServer(guestagent.Config{
		AuthorizedKey: key.PublicKey(),
		HostKeyPath:   filepath.Join(root, "etc/minions/agent_host_key"),
		Root:          root,
		Mounts:        func() ([]guestagent.Mount, error) { return []guestagent.Mount{}, nil },
		GrowMount:     root,
		// Never the host's hostname, clock, power, RNG or eth0: the
		// in-process agent runs on the host.
		SetHostname: func(string) error { return nil },
		SetTime:     func(time.Time) error { return nil },
		Power:       func(bool) error { return nil },
		ReseedRNG:   func([]byte) error { return nil },
		SetNetwork: func(mac net.HardwareAddr, ip netip.Prefix, gw netip.Addr) error {
			guestNets.add(mac.String(), ip)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// shareAgentHostKey gives dst's guest agent src's agent host key, as one
// guest migrated between the two would have.
func shareAgentHostKey(t *testing.T, src, dst *machine) {
	t.Helper()
	rel := "guest/etc/minions/agent_host_key"
	b, err := os.ReadFile(filepath.Join(src.dir, rel))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst.dir, rel), b, 0o600); err != nil {
		t.Fatal(err)
	}
	dst.drv.SetServer(newGuestAgent(t, filepath.Join(dst.dir, "guest"), dst.key))
}

// twoHosts is a control plane ("cp", its own host local) and a second
// host ("node-b") whose service is reached as a remote engine: its
// NodeEngine served by nodeagent.ServeEngine on its own node credential,
// over a real embedded NATS server, called by a nodeagent.Remote.
type twoHosts struct {
	cp, node     *machine
	nodeID       string
	admin, alice Caller
	bob          Caller
	remote       *nodeagent.Remote
	clock        *testClock
	srv          *fabric.Server
	stopServe    func()
}

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newTwoHosts(t *testing.T) *twoHosts {
	t.Helper()
	ctx := context.Background()
	th := &twoHosts{cp: newMachine(t), node: newMachine(t), clock: &testClock{t: time.Now()}}
	svc := th.cp.svc
	svc.SetHosts(HostsConfig{JoinURL: "http://cp.invalid:1", Now: th.clock.Now, Unreachable: 7 * time.Second})
	var err error
	if th.admin, err = svc.EnsureUser(ctx, "root", true); err != nil {
		t.Fatal(err)
	}
	if th.alice, err = svc.EnsureUser(ctx, "alice", false); err != nil {
		t.Fatal(err)
	}
	if th.bob, err = svc.EnsureUser(ctx, "bob", false); err != nil {
		t.Fatal(err)
	}
	_, localPub, _ := fabric.NewNodeKey()
	if _, err := svc.EnsureLocalHost(ctx, "cp", localPub, "test"); err != nil {
		t.Fatal(err)
	}
	inv, err := svc.HostAdd(ctx, th.admin, "node-b")
	if err != nil {
		t.Fatal(err)
	}
	seed, pub, _ := fabric.NewNodeKey()
	res, err := svc.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: pub, Address: "127.201.0.2"})
	if err != nil {
		t.Fatal(err)
	}
	th.nodeID = res.HostID
	th.heartbeat(t)

	th.srv, err = fabric.Start(fabric.Config{Listen: "127.0.0.1:0", StoreDir: t.TempDir(),
		NodeKey: func(p string) (string, bool) { return svc.NodeKey(context.Background(), p) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(th.srv.Close)
	control, err := th.srv.Control("control")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(control.Close)
	nodeConn, err := fabric.ConnectNode(th.srv.ClientURL(), th.nodeID, seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nodeConn.Close)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- nodeagent.ServeEngine(sctx, nodeagent.ServeConfig{ID: th.nodeID, Conn: nodeConn, Engine: th.node.svc.NodeEngine()})
	}()
	var once sync.Once
	th.stopServe = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve engine: %v", err)
			}
		})
	}
	t.Cleanup(th.stopServe)
	th.remote, err = nodeagent.NewRemote(nodeagent.RemoteConfig{ID: th.nodeID, Conn: control}) // no key: the node signs agent logins
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { th.remote.Close() })
	waitFor(t, "node-b to serve its engine", func() bool {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := th.remote.Capacity(cctx)
		return err == nil
	})
	svc.SetRemoteEngine(th.nodeID, th.remote)
	return th
}

// runsOnly checks that VM v runs on runsOn's engine and is unknown to
// other's; for a VM on the node, that the control plane's row names the
// node and carries the node's address (its own columns placeholders).
func (th *twoHosts) runsOnly(t *testing.T, v VM, runsOn, other *machine) {
	t.Helper()
	ctx := context.Background()
	inst, err := runsOn.svc.Engine.Get(ctx, v.ID)
	if err != nil || inst.State != vm.Running {
		t.Fatalf("vm %s on the engine of %s: %+v, %v", v.Name, v.Host, inst, err)
	}
	if runsOn != th.node {
		return
	}
	if _, err := other.svc.Engine.Get(ctx, v.ID); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("the control plane's own engine knows vm %s on the node: %v", v.Name, err)
	}
	row, _ := store.GetVMByID(ctx, th.cp.svc.DB, v.ID)
	if row.HostID != th.nodeID || row.IP != "@"+v.ID || row.NodeIP != inst.IP || v.IP != inst.IP || v.MAC != inst.MAC || row.State != vm.Running {
		t.Errorf("control plane row %+v, view ip %s mac %s; node has ip %s mac %s", row, v.IP, v.MAC, inst.IP, inst.MAC)
	}
}

// heartbeat records a fresh heartbeat of both hosts (at the test clock).
func (th *twoHosts) heartbeat(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	hosts, err := store.ListHosts(ctx, th.cp.svc.DB)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if err := th.cp.svc.RecordHeartbeat(ctx, h.ID, Heartbeat{CPUs: 4, MemoryMiB: 8192, DiskMiB: 100 << 10,
			MemoryFreeMiB: 8192, DiskFreeMiB: 100 << 10, Version: "test"}); err != nil {
			t.Fatal(err)
		}
	}
}

func execOut(t *testing.T, svc *Service, c Caller, name, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	code, err := svc.Exec(ctx, c, name, ExecRequest{Command: cmd, Stdout: &out, Stderr: &out})
	if err != nil || code != 0 {
		t.Fatalf("exec %q in %s: code %d, %v (%s)", cmd, name, code, err, out.String())
	}
	return out.String()
}

// waitFor polls cond until it holds or 20 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCreateOnEachHostRoutesEveryOperation creates a VM on the control
// plane's own host and one on a second host reached over NATS, and runs
// every VM operation on each: each lands on the engine of the VM's host,
// and the control plane's rows follow.
func TestCreateOnEachHostRoutesEveryOperation(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, host := range []string{"cp", "node-b"} {
		t.Run(host, func(t *testing.T) {
			th.heartbeat(t)
			name := "web-" + host
			runsOn, other := th.cp, th.node
			if host == "node-b" {
				runsOn, other = th.node, th.cp
			}
			// Create, pinned.
			var steps []string
			began := time.Now()
			v, err := svc.Create(ctx, th.alice, CreateRequest{Name: name, Image: "minimal", Host: host, MemoryMiB: 256},
				func(s string) { steps = append(steps, s) })
			if err != nil {
				t.Fatalf("create on %s: %v", host, err)
			}
			if v.Host != host || v.Status != "running" || v.Owner != "alice" {
				t.Fatalf("created %+v; want running on %s, owned by alice", v, host)
			}
			th.runsOnly(t, v, runsOn, other)
			if host == "node-b" {
				if strings.Join(steps, ",") == "" || !strings.Contains(strings.Join(steps, ","), "agent") {
					t.Errorf("progress from the node: %v", steps)
				}
			}
			if g, err := svc.Get(ctx, th.alice, name); err != nil || g.Host != host {
				t.Errorf("get: %+v, %v", g, err)
			}

			created := time.Since(began)
			// Agent: exec, forward.
			if out := execOut(t, svc, th.alice, name, "echo hello from $0"); !strings.Contains(out, "hello from") {
				t.Errorf("exec output %q", out)
			}
			var execs []time.Duration
			for range 5 {
				t0 := time.Now()
				execOut(t, svc, th.alice, name, "true")
				execs = append(execs, time.Since(t0))
			}
			slices.Sort(execs)
			t.Logf("%s: create %v, exec true (agent login + exec) median %v", host, created.Round(time.Millisecond), execs[2].Round(time.Millisecond))
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					io.WriteString(c, "forwarded")
					c.Close()
				}
			}()
			port := ln.Addr().(*net.TCPAddr).Port
			fc, err := svc.Forward(ctx, th.alice, name, port)
			if err != nil {
				t.Fatalf("forward: %v", err)
			}
			got, _ := io.ReadAll(fc)
			fc.Close()
			if string(got) != "forwarded" {
				t.Errorf("forward read %q", got)
			}
			if host == "node-b" {
				// The proxy's way in to a VM on another host.
				wc, err := svc.DialWeb(ctx, v.ID, port)
				if err != nil {
					t.Fatalf("dial web: %v", err)
				}
				got, _ := io.ReadAll(wc)
				wc.Close()
				if string(got) != "forwarded" {
					t.Errorf("dial web read %q", got)
				}
			}

			// Another user sees nothing of it.
			if _, err := svc.Get(ctx, th.bob, name); errs.ClassOf(err) != errs.NotFound {
				t.Errorf("bob gets alice's vm: %v", err)
			}
			if _, err := svc.Exec(ctx, th.bob, name, ExecRequest{Command: "true"}); errs.ClassOf(err) != errs.NotFound {
				t.Errorf("bob execs in alice's vm: %v", err)
			}
			if err := svc.Destroy(ctx, th.bob, name); errs.ClassOf(err) != errs.NotFound {
				t.Errorf("bob destroys alice's vm: %v", err)
			}
			if l, _ := svc.List(ctx, th.bob); len(l) != 0 {
				t.Errorf("bob lists %+v", l)
			}

			// Lifecycle.
			if v, err := svc.Stop(ctx, th.alice, name); err != nil || v.Status != "stopped" {
				t.Fatalf("stop: %+v, %v", v, err)
			}
			if inst, _ := runsOn.svc.Engine.Get(ctx, v.ID); inst.State != vm.Stopped {
				t.Errorf("after stop the host's engine says %s", inst.State)
			}
			if v, err := svc.Resize(ctx, th.alice, name, ResizeRequest{CPUs: 2, DiskGiB: 3}); err != nil || v.CPUs != 2 || v.DiskGiB != 3 {
				t.Fatalf("resize: %+v, %v", v, err)
			}
			if inst, _ := runsOn.svc.Engine.Get(ctx, v.ID); inst.CPUs != 2 || inst.DiskGiB != 3 {
				t.Errorf("after resize the host's engine says %+v", inst)
			}
			if v, err := svc.Start(ctx, th.alice, name, nil); err != nil || v.Status != "running" {
				t.Fatalf("start: %+v, %v", v, err)
			}
			if v, err := svc.Restart(ctx, th.alice, name, nil); err != nil || v.Status != "running" {
				t.Fatalf("restart: %+v, %v", v, err)
			}
			renamed := name + "-2"
			if v, err := svc.Rename(ctx, th.alice, name, renamed); err != nil || v.Name != renamed {
				t.Fatalf("rename: %+v, %v", v, err)
			}
			if inst, _ := runsOn.svc.Engine.Get(ctx, v.ID); inst.Name != renamed {
				t.Errorf("after rename the host's engine says %q", inst.Name)
			}
			name = renamed

			// Snapshots.
			if _, err := svc.CreateSnapshot(ctx, th.alice, name, SnapshotRequest{Name: "s1"}, nil); err != nil {
				t.Fatalf("snapshot: %v", err)
			}
			if l, err := svc.ListSnapshots(ctx, th.alice, name); err != nil || len(l) != 1 || l[0].Name != "s1" {
				t.Fatalf("snapshots: %+v, %v", l, err)
			}
			if l, _ := runsOn.svc.Engine.Snapshots(ctx, v.ID); len(l) != 1 {
				t.Errorf("host's engine has snapshots %+v", l)
			}
			if v, err := svc.RestoreSnapshot(ctx, th.alice, name, "s1", nil); err != nil || v.Status != "running" {
				t.Fatalf("restore: %+v, %v", v, err)
			}

			// Copy lands beside its source.
			cp, err := svc.Copy(ctx, th.alice, name, CopyRequest{Name: "copy-" + host, FromSnapshot: "s1"}, nil)
			if err != nil || cp.Host != host {
				t.Fatalf("copy: %+v, %v", cp, err)
			}
			if _, err := runsOn.svc.Engine.Get(ctx, cp.ID); err != nil {
				t.Errorf("copy is not on %s: %v", host, err)
			}
			if err := svc.DeleteSnapshot(ctx, th.alice, name, "s1"); err != nil {
				t.Fatalf("delete snapshot: %v", err)
			}

			// Console log: the file is on the VM's host.
			if _, err := svc.ConsoleLog(ctx, th.alice, name); err != nil {
				t.Errorf("console log: %v", err)
			}
			path, _ := runsOn.svc.Engine.ConsoleLog(ctx, v.ID)
			if err := os.WriteFile(path, []byte("console of "+host+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			var con bytes.Buffer
			if err := svc.CopyConsole(ctx, th.alice, name, false, &con); err != nil || con.String() != "console of "+host+"\n" {
				t.Errorf("console: %q, %v", con.String(), err)
			}
			fctx, fcancel := context.WithCancel(ctx)
			pr, pw := io.Pipe()
			go func() { pw.CloseWithError(svc.CopyConsole(fctx, th.alice, name, true, pw)) }()
			br := bufio.NewReader(pr)
			line, _ := br.ReadString('\n')
			f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			f.WriteString("more\n")
			f.Close()
			more := make(chan string, 1)
			go func() { l, _ := br.ReadString('\n'); more <- l }()
			select {
			case l := <-more:
				if line != "console of "+host+"\n" || l != "more\n" {
					t.Errorf("console --follow: %q then %q", line, l)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("console --follow: nothing after %q", line)
			}
			fcancel()
			pr.Close()

			// A crash on the VM's host reaches the supervisor here, which
			// restarts it there.
			runsOn.drv.Crash(v.ID)
			if err := runsOn.svc.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the control plane to see the exit", func() bool {
				r, err := store.GetRestart(ctx, svc.DB, v.ID)
				return err == nil && !r.RestartAt.IsZero()
			})
			if g, _ := svc.Get(ctx, th.alice, name); g.Status == "running" {
				t.Errorf("after the crash the vm shows %s", g.Status)
			}
			waitFor(t, "the supervisor to restart the vm", func() bool {
				svc.Supervise(ctx)
				g, _ := svc.Get(ctx, th.alice, name)
				return g.Status == "running" && g.Restarts == 1
			})
			if inst, _ := runsOn.svc.Engine.Get(ctx, v.ID); inst.State != vm.Running {
				t.Errorf("after the restart the host's engine says %s", inst.State)
			}
			if out := execOut(t, svc, th.alice, name, "echo again"); !strings.Contains(out, "again") {
				t.Errorf("exec after restart: %q", out)
			}

			// Destroy.
			for _, n := range []string{name, "copy-" + host} {
				if err := svc.Destroy(ctx, th.alice, n); err != nil {
					t.Fatalf("destroy %s: %v", n, err)
				}
			}
			for _, id := range []string{v.ID, cp.ID} {
				if _, err := runsOn.svc.Engine.Get(ctx, id); errs.ClassOf(err) != errs.NotFound {
					t.Errorf("after destroy the host's engine has %s: %v", id, err)
				}
				if _, err := store.GetVMByID(ctx, svc.DB, id); errs.ClassOf(err) != errs.NotFound {
					t.Errorf("after destroy the control plane has %s: %v", id, err)
				}
			}
		})
	}
}

// TestCreatePlacesVMs: without a pin create spreads VMs over the hosts
// that take them; a pin must name a host that does.
func TestCreatePlacesVMs(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	count := map[string]int{}
	for _, n := range []string{"p1", "p2"} {
		v, err := svc.Create(ctx, th.alice, CreateRequest{Name: n, Image: "minimal", MemoryMiB: 256}, nil)
		if err != nil {
			t.Fatalf("create %s: %v", n, err)
		}
		count[v.Host]++
	}
	if count["cp"] != 1 || count["node-b"] != 1 {
		t.Errorf("spread put the vms on %v; want one on each host", count)
	}
	for _, c := range []struct {
		host string
		want *errs.Class
	}{
		{"nowhere", errs.NotFound},
		{"Bad_Name!", errs.InvalidArgument},
	} {
		_, err := svc.Create(ctx, th.alice, CreateRequest{Name: "pinned", Image: "minimal", MemoryMiB: 256, Host: c.host}, nil)
		if errs.ClassOf(err) != c.want {
			t.Errorf("pin %q: %v; want %v", c.host, err, c.want)
		}
	}
	if _, err := svc.HostCordon(ctx, th.admin, "node-b"); err != nil {
		t.Fatal(err)
	}
	_, err := svc.Create(ctx, th.alice, CreateRequest{Name: "pinned", Image: "minimal", MemoryMiB: 256, Host: "node-b"}, nil)
	if errs.ClassOf(err) != errs.FailedPrecondition {
		t.Errorf("pin on a cordoned host: %v", err)
	}
	if v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "p3", Image: "minimal", MemoryMiB: 256}, nil); err != nil || v.Host != "cp" {
		t.Errorf("with node-b cordoned: %+v, %v", v, err)
	}
	if _, err := svc.HostUncordon(ctx, th.admin, "node-b"); err != nil {
		t.Fatal(err)
	}
	th.clock.Add(8 * time.Second) // node-b not heard from for 8 s
	_, err = svc.Create(ctx, th.alice, CreateRequest{Name: "pinned", Image: "minimal", MemoryMiB: 256, Host: "node-b"}, nil)
	if errs.ClassOf(err) != errs.FailedPrecondition || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("pin on an unreachable host: %v", err)
	}
	if v, err := svc.Create(ctx, th.alice, CreateRequest{Name: "p4", Image: "minimal", MemoryMiB: 256}, nil); err != nil || v.Host != "cp" {
		t.Errorf("with node-b unreachable: %+v, %v", v, err)
	}
	// Nothing of the refused creates is left anywhere.
	if _, err := store.GetVMByName(ctx, svc.DB, "pinned"); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("a refused create left a row: %v", err)
	}
	if l, _ := th.node.svc.Engine.List(ctx); len(l) != 1 {
		t.Errorf("node-b has %d vms; want 1", len(l))
	}
}

// TestHostUnreachable: a host not heard from for 7 s shows its VMs
// unknown (host unreachable) without storing it; operations on them fail
// at once with errs.Unavailable; destroy removes the VM from every view
// and leaves a tombstone, and the node destroys it when it is heard from
// again.
func TestHostUnreachable(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, n := range []string{"keep", "doomed"} {
		if _, err := svc.Create(ctx, th.alice, CreateRequest{Name: n, Image: "minimal", MemoryMiB: 256, Host: "node-b"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	doomed, _ := svc.Get(ctx, th.alice, "doomed")
	th.clock.Add(6 * time.Second)
	if v, _ := svc.Get(ctx, th.alice, "keep"); v.Status != "running" {
		t.Fatalf("after 6 s: %s", v.Status)
	}
	th.clock.Add(2 * time.Second)
	l, err := svc.List(ctx, th.alice)
	if err != nil || len(l) != 2 {
		t.Fatalf("list: %+v, %v", l, err)
	}
	for _, v := range l {
		if v.Status != StatusUnknown || v.Note != NoteHostUnreachable || v.Host != "node-b" {
			t.Errorf("after 8 s: %s %s (%s) on %s", v.Name, v.Status, v.Note, v.Host)
		}
	}
	if row, _ := store.GetVMByName(ctx, svc.DB, "keep"); row.State != vm.Running || row.Note != "" {
		t.Errorf("stored: %s %q; the unknown status must not be stored", row.State, row.Note)
	}
	start := time.Now()
	for name, op := range map[string]func() error{
		"stop":  func() error { _, err := svc.Stop(ctx, th.alice, "keep"); return err },
		"start": func() error { _, err := svc.Start(ctx, th.alice, "keep", nil); return err },
		"exec":  func() error { _, err := svc.Exec(ctx, th.alice, "keep", ExecRequest{Command: "true"}); return err },
		"snapshot": func() error {
			_, err := svc.CreateSnapshot(ctx, th.alice, "keep", SnapshotRequest{Name: "x"}, nil)
			return err
		},
		"rename": func() error { _, err := svc.Rename(ctx, th.alice, "keep", "kept"); return err },
	} {
		if err := op(); errs.ClassOf(err) != errs.Unavailable {
			t.Errorf("%s on an unreachable host: %v", name, err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("failing took %s; want at once", d)
	}
	if err := svc.Destroy(ctx, th.alice, "doomed"); err != nil {
		t.Fatalf("destroy while away: %v", err)
	}
	if _, err := svc.Get(ctx, th.alice, "doomed"); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("destroyed vm still shown: %v", err)
	}
	if l, _ := svc.List(ctx, th.admin); len(l) != 1 {
		t.Errorf("admin lists %d vms; want 1", len(l))
	}
	if ts, _ := store.ListTombstones(ctx, svc.DB, th.nodeID); len(ts) != 1 || ts[0].VMID != doomed.ID {
		t.Fatalf("tombstones: %+v", ts)
	}
	// The name is free again at once.
	if _, err := store.GetVMByName(ctx, svc.DB, "doomed"); errs.ClassOf(err) != errs.NotFound {
		t.Errorf("name still taken: %v", err)
	}
	if _, err := th.node.svc.Engine.Get(ctx, doomed.ID); err != nil {
		t.Fatalf("the node lost the vm before it was heard from: %v", err)
	}

	// The host comes back.
	th.heartbeat(t)
	svc.HostHeard(ctx, th.nodeID)
	waitFor(t, "the tombstoned vm to be destroyed on the node", func() bool {
		_, err := th.node.svc.Engine.Get(ctx, doomed.ID)
		ts, _ := store.ListTombstones(ctx, svc.DB, th.nodeID)
		return errs.ClassOf(err) == errs.NotFound && len(ts) == 0
	})
	if v, _ := svc.Get(ctx, th.alice, "keep"); v.Status != "running" || v.Note != "" {
		t.Errorf("back: %s (%s)", v.Status, v.Note)
	}
	if out := execOut(t, svc, th.alice, "keep", "echo back"); !strings.Contains(out, "back") {
		t.Errorf("exec after the host came back: %q", out)
	}
}

// TestCreateInterruptedByCrashIsSettled: creates left in state creating
// by a control plane that died mid-way are adopted when the node made
// the VM and rolled back when it did not, once the node is heard from.
func TestCreateInterruptedByCrashIsSettled(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// "missed": went down on its host while nobody listened.
	missed, err := svc.Create(ctx, th.alice, CreateRequest{Name: "missed", Image: "minimal", MemoryMiB: 256, Host: "node-b"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := th.node.svc.Engine.Stop(ctx, missed.ID); err != nil {
		t.Fatal(err)
	}
	if v, _ := svc.Get(ctx, th.alice, "missed"); v.Status != "running" {
		t.Fatalf("missed: %s before the host is heard from", v.Status)
	}
	// "made": the node finished it, the control plane never heard back.
	made := store.VM{ID: vm.NewID(), Name: "made", OwnerID: th.alice.UserID, Image: "minimal", CPUs: 1, MemoryMiB: 256,
		DiskGiB: 2, State: vm.Creating, Port: 80, HostID: th.nodeID, CreatedAt: time.Now()}
	lost := made
	lost.ID, lost.Name = vm.NewID(), "lost"
	for _, v := range []*store.VM{&made, &lost} {
		if err := svc.DB.Tx(ctx, func(q store.Q) error {
			if err := store.RemotePlaceholders(ctx, q, v); err != nil {
				return err
			}
			return store.InsertVM(ctx, q, *v)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := th.node.svc.NodeEngine().Create(ctx, engineSpec(made), nil); err != nil {
		t.Fatal(err)
	}
	svc.HostHeard(ctx, th.nodeID)
	waitFor(t, "the interrupted creates to settle", func() bool {
		_, err := store.GetVMByID(ctx, svc.DB, lost.ID)
		v, _ := store.GetVMByID(ctx, svc.DB, made.ID)
		return errs.ClassOf(err) == errs.NotFound && v.State == vm.Running
	})
	waitFor(t, "the missed exit to reach the supervisor", func() bool {
		r, err := store.GetRestart(ctx, svc.DB, missed.ID)
		v, _ := store.GetVMByID(ctx, svc.DB, missed.ID)
		return err == nil && !r.RestartAt.IsZero() && v.State == vm.Stopped
	})
	v, err := svc.Get(ctx, th.alice, "made")
	if err != nil || v.Status != "running" || v.IP == "" || v.Host != "node-b" {
		t.Fatalf("adopted: %+v, %v", v, err)
	}
	if out := execOut(t, svc, th.alice, "made", "echo adopted"); !strings.Contains(out, "adopted") {
		t.Errorf("exec in the adopted vm: %q", out)
	}
}

func engineSpec(v store.VM) engine.CreateSpec {
	return engine.CreateSpec{ID: v.ID, Name: v.Name, Owner: v.OwnerID, Image: v.Image, CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, DiskGiB: v.DiskGiB}
}
