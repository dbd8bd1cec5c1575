package guestagent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/guestagent/proto"
)

// reidFixture is a guest root as a template leaves it: an identity, an
// sshd with keys, leases, seeds and a journal of the old machine-id.
type reidFixture struct {
	root     string
	srv      *Server
	hostname []string
	clock    []time.Time
	reseeded [][]byte
	net      []string
}

const templateMachineID = "0123456789abcdef0123456789abcdef"

func newReidFixture(t *testing.T, host ssh.Signer) *reidFixture {
	t.Helper()
	f := &reidFixture{root: t.TempDir()}
	files := map[string]string{
		"etc/hostname":                      "template\n",
		"etc/machine-id":                    templateMachineID + "\n",
		"var/lib/dbus/machine-id":           templateMachineID + "\n",
		"etc/ssh/sshd_config":               "HostKey /etc/ssh/ssh_host_ed25519_key\n",
		"var/lib/dhcp/dhclient.eth0.leases": "lease { fixed-address 10.0.0.9; }\n",
		"var/lib/systemd/random-seed":       "template seed",
		"var/log/journal/" + templateMachineID + "/system.journal": "old journal",
		"root/.ssh/authorized_keys":                                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl template-owner\n",
	}
	for p, c := range files {
		full := filepath.Join(f.root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := EnsureHostKeys(filepath.Join(f.root, "etc/ssh")); err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(Config{
		AuthorizedKey: host.PublicKey(),
		HostKeyPath:   filepath.Join(f.root, "etc/minions/agent_host_key"),
		Root:          f.root,
		Power:         func(bool) error { return nil },
		SetHostname:   func(n string) error { f.hostname = append(f.hostname, n); return nil },
		SetTime:       func(tm time.Time) error { f.clock = append(f.clock, tm); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = srv
	oldReseed, oldNet, oldReload := reseedKernel, reconfigureNet, reloadServices
	reseedKernel = func(b []byte) error { f.reseeded = append(f.reseeded, b); return nil }
	reconfigureNet = func(mac net.HardwareAddr, ip netip.Prefix, gw netip.Addr) error {
		f.net = append(f.net, mac.String()+" "+ip.String()+" "+gw.String())
		return nil
	}
	reloadServices = func(string) []string { return nil }
	t.Cleanup(func() { reseedKernel, reconfigureNet, reloadServices = oldReseed, oldNet, oldReload })
	return f
}

func (f *reidFixture) read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.root, p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// snapshot is every file under the root with its content.
func (f *reidFixture) snapshot(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(f.root, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			out[strings.TrimPrefix(p, f.root)] = string(b)
		}
		return nil
	})
	return out
}

func goodReidentify(owner ssh.PublicKey) proto.Reidentify {
	return proto.Reidentify{
		Hostname: "clone-1", MachineID: "fedcba9876543210fedcba9876543210",
		MAC: "52:54:00:12:34:56", IP: "10.9.0.5/24", Gateway: "10.9.0.1", DNS: "10.9.0.1",
		AuthorizedKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(owner))) + " owner@laptop"},
		Entropy:        bytes.Repeat([]byte{7}, 64),
		TimeUnixNano:   time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC).UnixNano(),
	}
}

// TestReidentifyOverSSH sends reidentify@minions over a real SSH
// connection and checks the whole guest root afterwards: new identity
// files, new sshd and agent host keys (offered to the next connection),
// the owner's key, template leftovers gone, RNG, clock and network steps
// called with the request's values.
func TestReidentifyOverSSH(t *testing.T) {
	host, owner := signer(t), signer(t)
	f := newReidFixture(t, host)
	oldAgentKey := f.srv.HostKey()
	oldSSHD := f.read(t, "etc/ssh/ssh_host_ed25519_key.pub")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(hostKey ssh.PublicKey) (*ssh.Client, error) {
		a, b := socketpair(t)
		go f.srv.ServeConn(ctx, b)
		conn, chans, reqs, err := ssh.NewClientConn(a, "agent", &ssh.ClientConfig{
			User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(host)},
			HostKeyCallback: ssh.FixedHostKey(hostKey),
		})
		if err != nil {
			return nil, err
		}
		return ssh.NewClient(conn, chans, reqs), nil
	}
	c, err := dial(oldAgentKey)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := goodReidentify(owner.PublicKey())
	payload, _ := json.Marshal(req)
	ok, raw, err := c.SendRequest(proto.ReqReidentify, true, payload)
	if err != nil || !ok {
		t.Fatalf("reidentify: %v %s %v", ok, raw, err)
	}
	var reply proto.ReidentifyReply
	if err := json.Unmarshal(raw, &reply); err != nil {
		t.Fatal(err)
	}

	if got := f.read(t, "etc/hostname"); got != "clone-1\n" || !slices.Equal(f.hostname, []string{"clone-1"}) {
		t.Errorf("hostname file %q, set %v", got, f.hostname)
	}
	for _, p := range []string{"etc/machine-id", "var/lib/dbus/machine-id"} {
		if got := f.read(t, p); got != req.MachineID+"\n" {
			t.Errorf("%s = %q", p, got)
		}
	}
	if got := f.read(t, "root/.ssh/authorized_keys"); strings.Contains(got, "template-owner") || !strings.Contains(got, "owner@laptop") {
		t.Errorf("authorized_keys = %q", got)
	}
	for _, p := range []string{"var/lib/dhcp/dhclient.eth0.leases", "var/lib/systemd/random-seed", "var/log/journal/" + templateMachineID} {
		if _, err := os.Stat(filepath.Join(f.root, p)); err == nil {
			t.Errorf("template leftover %s survived", p)
		}
	}
	if len(reply.Removed) != 3 {
		t.Errorf("removed %v", reply.Removed)
	}
	if newSSHD := f.read(t, "etc/ssh/ssh_host_ed25519_key.pub"); newSSHD == oldSSHD || len(reply.SSHHostKeys) != 2 {
		t.Errorf("sshd host keys not regenerated (%d reported)", len(reply.SSHHostKeys))
	}
	if len(f.reseeded) != 1 || !bytes.Equal(f.reseeded[0], req.Entropy) {
		t.Errorf("reseeded with %v", f.reseeded)
	}
	// The request's time moved on by the guest's time since the receipt
	// (TestReidentifyClockFromReceipt), well under the call's.
	if sent := time.Unix(0, req.TimeUnixNano); len(f.clock) != 1 || f.clock[0].Before(sent) || f.clock[0].After(sent.Add(20*time.Second)) {
		t.Errorf("clock set to %v, want %v moved on by at most the call's time", f.clock, sent)
	}
	if !slices.Equal(f.net, []string{"52:54:00:12:34:56 10.9.0.5/24 10.9.0.1"}) {
		t.Errorf("network %v", f.net)
	}
	if got := f.read(t, "etc/resolv.conf"); got != "nameserver 10.9.0.1\n" {
		t.Errorf("resolv.conf %q", got)
	}
	// The agent's key: new on disk, reported, and offered to the next
	// connection; the old pin no longer matches.
	newKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(reply.AgentHostKey))
	if err != nil {
		t.Fatalf("agent host key %q: %v", reply.AgentHostKey, err)
	}
	if bytes.Equal(newKey.Marshal(), oldAgentKey.Marshal()) || !bytes.Equal(f.srv.HostKey().Marshal(), newKey.Marshal()) {
		t.Fatal("agent host key not replaced")
	}
	onDisk, err := LoadOrCreateHostKey(filepath.Join(f.root, "etc/minions/agent_host_key"))
	if err != nil || !bytes.Equal(onDisk.PublicKey().Marshal(), newKey.Marshal()) {
		t.Fatalf("agent host key on disk differs: %v", err)
	}
	if _, err := dial(oldAgentKey); err == nil {
		t.Error("a new connection still offers the template's agent key")
	}
	c2, err := dial(newKey)
	if err != nil {
		t.Fatalf("dial with the new key: %v", err)
	}
	c2.Close()
	// The first connection still works.
	if ok, _, err := c.SendRequest(proto.ReqPing, true, []byte("{}")); !ok || err != nil {
		t.Fatalf("ping on the old connection: %v %v", ok, err)
	}
	want := []string{"check request", "reseed rng", "set clock", "set hostname", "write hostname", "set machine id", "remove template leftovers",
		"regenerate sshd host keys", "write authorized keys", "regenerate agent host key", "move eth0 to its own mac and ip, announce it"}
	if len(reply.StepMillis) != len(reply.Steps) {
		t.Errorf("step times %v for steps %q", reply.StepMillis, reply.Steps)
	}
	if !slices.Equal(reply.Steps, want) {
		t.Errorf("steps %q", reply.Steps)
	}
}

// TestReidentifyBadInputChangesNothing: each malformed request is refused
// before any file or system setting changes.
func TestReidentifyBadInputChangesNothing(t *testing.T) {
	host, owner := signer(t), signer(t)
	f := newReidFixture(t, host)
	before := f.snapshot(t)
	key := f.srv.HostKey()
	for name, mut := range map[string]func(*proto.Reidentify){
		"hostname":        func(r *proto.Reidentify) { r.Hostname = "bad_name;rm" },
		"machine id":      func(r *proto.Reidentify) { r.MachineID = "xyz" },
		"short entropy":   func(r *proto.Reidentify) { r.Entropy = r.Entropy[:16] },
		"no clock":        func(r *proto.Reidentify) { r.TimeUnixNano = 0 },
		"multicast mac":   func(r *proto.Reidentify) { r.MAC = "01:00:5e:00:00:01" },
		"ip without len":  func(r *proto.Reidentify) { r.IP = "10.9.0.5" },
		"ipv6":            func(r *proto.Reidentify) { r.IP = "fd00::5/64" },
		"gateway no ip":   func(r *proto.Reidentify) { r.IP = ""; r.MAC = "" },
		"bad key":         func(r *proto.Reidentify) { r.AuthorizedKeys = []string{"ssh-ed25519 nope"} },
		"key with a line": func(r *proto.Reidentify) { r.AuthorizedKeys[0] += "\nssh-ed25519 AAAA evil" },
		"sshd key type":   func(r *proto.Reidentify) { r.SSHHostKeys = map[string]string{"rsa": pemKey(t, "ed25519")} },
		"sshd key kind":   func(r *proto.Reidentify) { r.SSHHostKeys = map[string]string{"ecdsa": pemKey(t, "ed25519")} },
		"sshd key junk":   func(r *proto.Reidentify) { r.SSHHostKeys = map[string]string{"ed25519": "junk"} },
		"agent key kind":  func(r *proto.Reidentify) { r.AgentHostKey = pemKey(t, "ecdsa") },
	} {
		r := goodReidentify(owner.PublicKey())
		mut(&r)
		if _, err := f.srv.reidentify(r, time.Now()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if after := f.snapshot(t); !mapsEqual(before, after) {
		t.Error("a refused request changed files")
	}
	if len(f.hostname)+len(f.clock)+len(f.reseeded)+len(f.net) != 0 || !bytes.Equal(key.Marshal(), f.srv.HostKey().Marshal()) {
		t.Errorf("a refused request changed the system: %v %v %d %v", f.hostname, f.clock, len(f.reseeded), f.net)
	}
}

// TestReidentifyWithoutOpenSSH: a guest without /etc/ssh (the minimal
// image) has no use for the sshd host keys the host sends: they are not
// parsed (a key that would be refused is ignored), none is written and no
// /etc/ssh is made; the rest of the identity is applied.
func TestReidentifyWithoutOpenSSH(t *testing.T) {
	host, owner := signer(t), signer(t)
	f := newReidFixture(t, host)
	if err := os.RemoveAll(filepath.Join(f.root, "etc/ssh")); err != nil {
		t.Fatal(err)
	}
	r := goodReidentify(owner.PublicKey())
	r.SSHHostKeys = map[string]string{"ed25519": "junk", "rsa": "more junk"}
	reply, err := f.srv.reidentify(r, time.Now())
	if err != nil {
		t.Fatalf("reidentify without OpenSSH: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.root, "etc/ssh")); !os.IsNotExist(err) || len(reply.SSHHostKeys) != 0 {
		t.Errorf("etc/ssh: %v, %d sshd keys reported; want none made", err, len(reply.SSHHostKeys))
	}
	if got := f.read(t, "etc/hostname"); got != "clone-1\n" {
		t.Errorf("hostname file %q", got)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestGARPPacket(t *testing.T) {
	mac, _ := net.ParseMAC("52:54:00:aa:bb:cc")
	got := garpPacket(mac, netip.MustParseAddr("10.9.0.5"))
	want := []byte{0, 1, 8, 0, 6, 4, 0, 1, 0x52, 0x54, 0, 0xaa, 0xbb, 0xcc, 10, 9, 0, 5, 0, 0, 0, 0, 0, 0, 10, 9, 0, 5}
	if !bytes.Equal(got, want) {
		t.Fatalf("garp\n got %x\nwant %x", got, want)
	}
}

// TestReconfigureEth0InNetns moves a veth "eth0" (in a thread locked into
// a fresh network namespace) to a new MAC and IP with the agent's own
// netlink code and catches its two gratuitous ARPs on the other end: with
// eth0 up and running (a clone's, left up) and with eth0 down (brought up).
func TestReconfigureEth0InNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, up := range []bool{true, false} {
		t.Run(map[bool]string{true: "up", false: "down"}[up], func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				runtime.LockOSThread() // the thread stays in the namespace, never reused
				done <- reconfigureInNetns(t, up)
			}()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func reconfigureInNetns(t *testing.T, up bool) error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return err
	}
	cmds := [][]string{
		{"link", "add", "eth0", "address", "52:54:00:00:00:01", "type", "veth", "peer", "name", "peer0"},
		{"addr", "add", "10.9.0.99/24", "dev", "eth0"},
		{"link", "set", "peer0", "up"},
	}
	if up {
		cmds = append(cmds, []string{"link", "set", "eth0", "up"})
	}
	for _, args := range cmds {
		// Forked from this locked thread: the child is in the namespace.
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return &exec.Error{Name: "ip " + strings.Join(args, " ") + ": " + string(out), Err: err}
		}
	}
	if up { // running once the veth's carrier is on
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if ifc, err := net.InterfaceByName("eth0"); err == nil && ifc.Flags&net.FlagRunning != 0 {
				break
			}
		}
	}
	peer, err := net.InterfaceByName("peer0")
	if err != nil {
		return err
	}
	const ethPARP = 0x0608 // htons(0x0806)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, ethPARP)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: ethPARP, Ifindex: peer.Index}); err != nil {
		return err
	}
	tv := unix.NsecToTimeval(int64(3 * time.Second))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)

	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	ip := netip.MustParsePrefix("10.9.0.5/24")
	if err := reconfigureEth0(mac, ip, netip.MustParseAddr("10.9.0.1")); err != nil {
		return err
	}
	eth, _ := net.InterfaceByName("eth0")
	addrs, _ := eth.Addrs()
	var got []string
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			got = append(got, a.String())
		}
	}
	if eth.HardwareAddr.String() != mac.String() || !slices.Equal(got, []string{"10.9.0.5/24"}) || eth.Flags&net.FlagUp == 0 {
		t.Errorf("eth0 is %s %v %v", eth.HardwareAddr, got, eth.Flags)
	}
	routes, _ := os.ReadFile("/proc/thread-self/net/route")
	if !strings.Contains(string(routes), "eth0\t00000000\t0100090A") {
		t.Errorf("no default route via 10.9.0.1:\n%s", routes)
	}
	want := garpPacket(mac, ip.Addr())
	buf := make([]byte, 1500)
	for seen := 0; seen < 2; {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return &exec.Error{Name: fmt.Sprintf("%d of 2 gratuitous arps on peer0", seen), Err: err}
		}
		if bytes.Equal(buf[:n][:min(n, len(want))], want) {
			seen++
		}
	}
	return nil
}

// pemKey makes an OpenSSH PEM private key of type t (ed25519 or ecdsa).
func pemKey(t *testing.T, typ string) string {
	t.Helper()
	var k crypto.Signer
	var err error
	if typ == "ecdsa" {
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	} else {
		_, k, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(k, "test")
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(block))
}

// TestReidentifyHostMadeKeys: keys made by the host are the ones written
// (sshd's, as given) and offered (the agent's); a type the host did not
// send is made in the guest.
func TestReidentifyHostMadeKeys(t *testing.T) {
	host, owner := signer(t), signer(t)
	f := newReidFixture(t, host)
	r := goodReidentify(owner.PublicKey())
	ed := pemKey(t, "ed25519")
	r.SSHHostKeys = map[string]string{"ed25519": ed}
	r.AgentHostKey = pemKey(t, "ed25519")
	reply, err := f.srv.reidentify(r, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := f.read(t, "etc/ssh/ssh_host_ed25519_key"); got != ed {
		t.Errorf("sshd ed25519 key is not the host's")
	}
	given, _ := ssh.ParsePrivateKey([]byte(ed))
	if got := f.read(t, "etc/ssh/ssh_host_ed25519_key.pub"); got != string(ssh.MarshalAuthorizedKey(given.PublicKey())) {
		t.Errorf("sshd ed25519 .pub %q", got)
	}
	if f.read(t, "etc/ssh/ssh_host_ecdsa_key") == "" || len(reply.SSHHostKeys) != 2 {
		t.Errorf("ecdsa key not made in the guest (%d reported)", len(reply.SSHHostKeys))
	}
	agent, _ := ssh.ParsePrivateKey([]byte(r.AgentHostKey))
	if !bytes.Equal(f.srv.HostKey().Marshal(), agent.PublicKey().Marshal()) ||
		reply.AgentHostKey != strings.TrimSpace(string(ssh.MarshalAuthorizedKey(agent.PublicKey()))) {
		t.Errorf("agent key is not the host's")
	}
}

// TestReidentifyRepliesBeforeFlush: the reply does not wait for the
// guest's flush of the identity files (a disk flush under TCG took
// 0.13-0.9 s of every fork and warm create); the files are in place (in
// the page cache) when it arrives, the flush runs after it, and it
// completes even when the host has gone (its connection closed).
func TestReidentifyRepliesBeforeFlush(t *testing.T) {
	host, owner := signer(t), signer(t)
	f := newReidFixture(t, host)
	release := make(chan struct{})
	flushed := make(chan string, 1)
	old := flushFS
	flushFS = func(dir string) error {
		<-release
		flushed <- dir
		return nil
	}
	t.Cleanup(func() { flushFS = old })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, b := socketpair(t)
	served := make(chan struct{})
	go func() { defer close(served); f.srv.ServeConn(ctx, b) }()
	// The connection's handlers (afterReidentify) are over before the
	// fixture's cleanup restores the hooks they read.
	t.Cleanup(func() { a.Close(); <-served })
	conn, chans, reqs, err := ssh.NewClientConn(a, "agent", &ssh.ClientConfig{
		User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(host)},
		HostKeyCallback: ssh.FixedHostKey(f.srv.HostKey()),
	})
	if err != nil {
		t.Fatal(err)
	}
	c := ssh.NewClient(conn, chans, reqs)
	req := goodReidentify(owner.PublicKey())
	payload, _ := json.Marshal(req)
	type result struct {
		ok  bool
		raw []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		ok, raw, err := c.SendRequest(proto.ReqReidentify, true, payload)
		done <- result{ok, raw, err}
	}()
	select {
	case r := <-done:
		if !r.ok || r.err != nil {
			t.Fatalf("reidentify: %v %s %v", r.ok, r.raw, r.err)
		}
		var reply proto.ReidentifyReply
		if err := json.Unmarshal(r.raw, &reply); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(reply.Steps, "sync") || !reply.FlushPending {
			t.Errorf("steps %q, flush pending %v: want the flush after the reply", reply.Steps, reply.FlushPending)
		}
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("the reply waited for the guest's flush")
	}
	// Everything is in place before the flush.
	if got := f.read(t, "etc/hostname"); got != "clone-1\n" {
		t.Errorf("hostname file %q before the flush", got)
	}
	if got := f.read(t, "etc/machine-id"); got != req.MachineID+"\n" {
		t.Errorf("machine-id %q before the flush", got)
	}
	if len(f.net) != 1 {
		t.Errorf("network %v before the reply", f.net)
	}
	select {
	case <-flushed:
		t.Fatal("flushed before it was released")
	default:
	}
	// Nobody waits any more: the flush still completes.
	c.Close()
	close(release)
	select {
	case dir := <-flushed:
		if dir != filepath.Join(f.root, "etc") {
			t.Errorf("flushed %s", dir)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the flush never ran")
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	if err := f.srv.WaitFlushed(wctx); err != nil {
		t.Fatalf("WaitFlushed: %v", err)
	}
}

// TestReidentifyClockFromReceipt: the guest sets its clock to the
// request's time plus what it spent since it received the request (under
// load that was up to seconds of checks before the clock step), and says
// so, so the host counts only the transit as the clock's lag.
func TestReidentifyClockFromReceipt(t *testing.T) {
	host, owner := signer(t), signer(t)
	f := newReidFixture(t, host)
	r := goodReidentify(owner.PublicKey())
	const waited = 700 * time.Millisecond
	before := time.Now()
	reply, err := f.srv.reidentify(r, time.Now().Add(-waited))
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if len(f.clock) != 1 {
		t.Fatalf("clock set %d times", len(f.clock))
	}
	sent := time.Unix(0, r.TimeUnixNano)
	lo, hi := sent.Add(waited), sent.Add(waited+after.Sub(before))
	if got := f.clock[0]; got.Before(lo) || got.After(hi) {
		t.Errorf("clock set to %v, want the request's time + %v (+ the call's own time): between %v and %v", got, waited, lo, hi)
	}
	if reply.NetworkMillis <= 0 {
		t.Errorf("network move took %d ms, want its time (> 0)", reply.NetworkMillis)
	}
	if !reply.ClockFromReceipt {
		t.Error("reply does not say the clock counts from the receipt")
	}
	if reply.CPU == nil || reply.CPU.WallMillis <= 0 {
		t.Errorf("reply's CPU split %+v, want the call's (TestCPUSince checks its figures)", reply.CPU)
	}
	// The steps start at the receipt: they add up to at least the wait.
	var sum int64
	for _, ms := range reply.StepMillis {
		sum += ms
	}
	if sum < waited.Milliseconds()-int64(len(reply.StepMillis)) {
		t.Errorf("steps add up to %d ms, want at least the %v since the receipt: %v %v", sum, waited, reply.Steps, reply.StepMillis)
	}
}
