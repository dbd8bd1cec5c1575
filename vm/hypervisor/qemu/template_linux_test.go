package qemu

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/testenv"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
	"github.com/minionsdev/minions/vm/hypervisor/qemu/relay"
	"github.com/minionsdev/minions/vm/jail"
	"github.com/minionsdev/minions/vsockcli"
)

// The warm-template tests boot the real agent (the minimal image: busybox
// root, the agent as init) with the QEMU driver, in the test's network
// namespace, on a bridge and TAPs the test creates.

// envAgentRelay makes the test binary the production agent relay
// (vsockcli.RunRelay): the real agent speaks the link protocol, which the
// plain pipe relay of the other tests does not.
const envAgentRelay = "MINIONS_QEMU_TEST_AGENT_RELAY"

func init() {
	if os.Getenv(envAgentRelay) != "1" {
		return
	}
	fs := flag.NewFlagSet("agent-relay", flag.ExitOnError)
	serial := fs.String("serial", "", "")
	listen := fs.String("listen", "", "")
	_ = fs.Parse(os.Args[1:])
	err := relay.Run(context.Background(), relay.Config{SerialSocket: *serial, Listen: *listen,
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// agentGuest is what booting the minimal image needs.
type agentGuest struct {
	d       *Driver
	kernel  string
	initrd  string
	rootfs  string // raw ext4, the image
	work    string // short path under /tmp, removed at the end
	signer  ssh.Signer
	hostKey string // base64 of signer's public key, for the cmdline
	owner   ssh.Signer
	jailed  bool   // the driver jails its VMs: spec gives each a vsock cid (its uid)
	cids    uint32 // the cids given so far
}

// needVMsTB is vmFixture's skip logic for a testing.TB.
func needVMsTB(tb testing.TB) {
	tb.Helper()
	switch r := os.Getenv(envSkip); r {
	case "":
	case "-short":
		tb.Skip("VM tests skipped: -short")
	default:
		testenv.SkipUnlessCI(tb, "VM tests skipped: "+r)
	}
	_, err := exec.LookPath("busybox")
	testenv.NeedOrFail(tb, err == nil, "no busybox (apt-get install busybox-static)")
}

func newAgentGuest(tb testing.TB) *agentGuest {
	tb.Helper()
	return newAgentGuestJail(tb, false)
}

// newAgentGuestJail is newAgentGuest with the driver's per-VM jail on
// (testJail) when jailed.
func newAgentGuestJail(tb testing.TB, jailed bool) *agentGuest {
	tb.Helper()
	needVMsTB(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	work, err := os.MkdirTemp("/tmp", "mqt")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(work) })
	wd, _ := os.Getwd()
	agentBin := filepath.Join(work, "minions-agent")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", agentBin, "./guestagent/cmd/minions-agent")
	build.Dir = filepath.Join(wd, "../../..")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("build agent: %v\n%s", err, out)
	}
	cache, _ := os.UserCacheDir()
	k, err := images.EnsureKernel(ctx, filepath.Join(cache, "minions-test", "kernels"))
	if err != nil {
		tb.Fatalf("kernel: %v", err)
	}
	ir, err := images.EnsureInitramfs(ctx, filepath.Join(work, "initramfs"), k, agentBin)
	if err != nil {
		tb.Fatal(err)
	}
	cat := &images.Catalog{Dir: filepath.Join(work, "images")}
	img, err := cat.Build(ctx, images.BuildOptions{OS: images.OSMinimal, SizeMiB: 64, AgentBinary: agentBin, Kernel: &k})
	if err != nil {
		tb.Fatalf("minimal image: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	jc := jail.Config{Mode: jail.ModeOff}
	if jailed {
		jc = testJail(tb, self)
	}
	d, err := New(Config{
		VhostVsock:   VsockOff,
		RelayCommand: []string{"/usr/bin/env", envAgentRelay + "=1", self},
		MemoryDir:    testMemoryDir(tb),
		Jail:         jc,
		Log:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		tb.Fatal(err)
	}
	g := &agentGuest{d: d, kernel: k.Path, initrd: ir.Path, rootfs: img.Path, work: work, jailed: jailed}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	g.signer, _ = ssh.NewSignerFromKey(priv)
	g.hostKey = base64.StdEncoding.EncodeToString(g.signer.PublicKey().Marshal())
	_, priv, _ = ed25519.GenerateKey(rand.Reader)
	g.owner, _ = ssh.NewSignerFromKey(priv)
	return g
}

var bridgeOnce sync.Once

// network creates (once per process; the namespace is the test's) bridge
// mqbr0 at 10.77.0.1/24 and returns a new TAP on it.
func (g *agentGuest) tap(tb testing.TB, name string) string {
	tb.Helper()
	ip := func(args ...string) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			tb.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	bridgeOnce.Do(func() {
		ip("link", "add", "mqbr0", "type", "bridge")
		ip("addr", "add", "10.77.0.1/24", "dev", "mqbr0")
		ip("link", "set", "mqbr0", "up")
	})
	if _, err := net.InterfaceByName(name); err != nil {
		ip("tuntap", "add", "dev", name, "mode", "tap")
		ip("link", "set", name, "master", "mqbr0", "up")
	}
	return name
}

// spec is a VM of the minimal image on its own overlay of base (format
// baseFormat), booted as name with IP ip.
func (g *agentGuest) spec(tb testing.TB, id string, memMiB int, base, baseFormat, tap, mac, ip string) hypervisor.Spec {
	tb.Helper()
	run := filepath.Join(g.work, id)
	if err := os.Mkdir(run, 0o700); err != nil {
		tb.Fatal(err)
	}
	overlay := filepath.Join(run, "disk.qcow2")
	if err := disk.CreateOverlay(context.Background(), base, baseFormat, overlay, 0); err != nil {
		tb.Fatal(err)
	}
	cmdline := "console=ttyS0 root=/dev/vda rw rootfstype=ext4 panic=-1 reboot=t quiet loglevel=4 " +
		"i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd minions.id=" + id + " minions.name=" + id +
		" minions.hostkey=" + g.hostKey + " minions.ip=" + ip + " minions.gw=10.77.0.1"
	spec := hypervisor.Spec{
		ID: id, Name: id, CPUs: 1, MemoryMiB: memMiB,
		Kernel: g.kernel, Initramfs: g.initrd, Cmdline: cmdline,
		Disks:  []hypervisor.Disk{{Path: overlay, Format: disk.FormatQcow2}},
		Net:    &hypervisor.NetIface{TAP: g.tap(tb, tap), MAC: mac},
		RunDir: run, ConsoleLog: filepath.Join(run, "console.log"),
	}
	if g.jailed {
		g.cids++
		spec.VsockCID = 700 + g.cids // its uid: the jail's base + cid
	}
	return spec
}

// agentConfig trusts key (nil: any key, recorded into *seen).
func (g *agentGuest) agentConfig(key ssh.PublicKey, seen *ssh.PublicKey) vsockcli.Config {
	cb := ssh.FixedHostKey(key)
	if key == nil {
		cb = func(_ string, _ net.Addr, k ssh.PublicKey) error { *seen = k; return nil }
	}
	return vsockcli.Config{Signer: g.signer, HostKey: cb, Timeout: 10 * time.Second}
}

func fileSum(tb testing.TB, path string) string {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// template boots a template of memMiB and saves it into dir; it returns
// the template's agent key and its disk (the clones' backing file).
func (g *agentGuest) template(tb testing.TB, ctx context.Context, id string, memMiB int, dir string) (ssh.PublicKey, string) {
	tb.Helper()
	spec := g.spec(tb, id, memMiB, g.rootfs, disk.FormatRaw, "mqt"+id[len(id)-1:], "52:54:00:77:00:10", "10.77.0.10/24")
	h, err := g.d.BootTemplate(ctx, spec, dir)
	if err != nil {
		tb.Fatal(err)
	}
	var key ssh.PublicKey
	c, err := vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(nil, &key))
	if err != nil {
		g.d.Kill(context.Background(), h)
		b, _ := os.ReadFile(spec.ConsoleLog)
		tb.Fatalf("template agent: %v\nconsole:\n%s", err, b)
	}
	c.Close()
	if err := g.d.SaveTemplate(ctx, h, dir); err != nil {
		g.d.Kill(context.Background(), h)
		tb.Fatal(err)
	}
	if g.d.Alive(h) {
		tb.Fatal("the template vm still runs after SaveTemplate")
	}
	return key, spec.Disks[0].Path
}

// guestFacts is what a clone reports about itself.
type guestFacts struct {
	hostname, machineID, mac, addrs, random string
	// clock is the guest's date +%s; before and after bound the host's
	// time around the command.
	clock, before, after time.Time
}

func readFacts(tb testing.TB, ctx context.Context, c *vsockcli.Client) guestFacts {
	tb.Helper()
	var out bytes.Buffer
	before := time.Now()
	code, err := c.Exec(ctx, vsockcli.ExecRequest{Stdout: &out, Stderr: &out, Command: "hostname; cat /etc/machine-id; " +
		"cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0 | awk '{printf \"%s \", $4}'; echo; " +
		"head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s"})
	if err != nil || code != 0 {
		tb.Fatalf("exec: %d %v\n%s", code, err, out.String())
	}
	l := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(l) != 6 {
		tb.Fatalf("facts: %q", out.String())
	}
	sec, _ := strconv.ParseInt(l[5], 10, 64)
	return guestFacts{hostname: l[0], machineID: l[1], mac: l[2], addrs: strings.TrimSpace(l[3]), random: l[4],
		clock: time.Unix(sec, 0), before: before, after: time.Now()}
}

// TestTemplateClones boots the minimal image as a template, saves it,
// starts two clones, re-identifies them through the agent and checks that
// they are two machines: hostname, machine-id, MAC (in the guest and in
// QEMU's NIC), IP, RNG output, and each reachable only at its own address,
// with the clock right; the template's files never change.
func TestTemplateClones(t *testing.T) {
	g := newAgentGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := filepath.Join(g.work, "tpl")
	tplKey, tplDisk := g.template(t, ctx, "tpl0", 256, dir)
	memSum := fileSum(t, filepath.Join(dir, TemplateMemoryFile))
	stateSum := fileSum(t, filepath.Join(dir, StateMemoryFile))
	diskSum := fileSum(t, tplDisk)

	t.Run("plain restore refuses a template dir", func(t *testing.T) {
		spec := g.spec(t, "bad0", 256, tplDisk, disk.FormatQcow2, "mqt9", "52:54:00:77:00:99", "10.77.0.99/24")
		if _, err := g.d.Restore(ctx, spec, dir); !errors.Is(err, errs.NotFound) {
			t.Fatalf("Restore(template dir) = %v, want NotFound", err)
		}
		spec.MemoryMiB = 512
		if _, err := g.d.StartClone(ctx, spec, dir); !errors.Is(err, errs.FailedPrecondition) {
			t.Fatalf("StartClone(other memory size) = %v, want FailedPrecondition", err)
		}
		if _, err := g.d.StartClone(ctx, spec, filepath.Join(g.work, "nothing")); !errors.Is(err, errs.NotFound) {
			t.Fatalf("StartClone(no template) = %v, want NotFound", err)
		}
		wantNothingLeft(t, spec.RunDir)
	})

	type clone struct {
		h     *hypervisor.Handle
		spec  hypervisor.Spec
		id    vsockcli.Identity
		key   ssh.PublicKey // the agent's, after re-identification
		facts guestFacts
	}
	var clones []*clone
	defer func() {
		for _, c := range clones {
			g.d.Kill(context.Background(), c.h)
		}
	}()
	owner := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(g.owner.PublicKey())))
	for i := 1; i <= 2; i++ {
		mac := fmt.Sprintf("52:54:00:77:00:%02x", 0x20+i)
		ip := netip.MustParsePrefix(fmt.Sprintf("10.77.0.%d/24", 20+i))
		spec := g.spec(t, fmt.Sprintf("cl%d", i), 256, tplDisk, disk.FormatQcow2, fmt.Sprintf("mqt%d", i), mac, ip.String())
		start := time.Now()
		h, err := g.d.StartClone(ctx, spec, dir)
		if err != nil {
			t.Fatal(err)
		}
		started := time.Since(start)
		c := &clone{h: h, spec: spec}
		clones = append(clones, c)
		// It is the template: its agent answers with the template's key.
		ac, err := vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(tplKey, nil))
		if err != nil {
			b, _ := os.ReadFile(spec.ConsoleLog)
			t.Fatalf("clone %d agent: %v\nconsole:\n%s", i, err, b)
		}
		ready := time.Since(start)
		c.id = vsockcli.Identity{Hostname: spec.Name, MachineID: vsockcli.NewMachineID(), MAC: mac, IP: ip,
			Gateway: netip.MustParseAddr("10.77.0.1"), AuthorizedKeys: []string{owner}}
		reid := time.Now()
		r, err := ac.Reidentify(ctx, c.id)
		if err == nil && time.Since(reid) > 250*time.Millisecond {
			// As the engine (reidentifyGuest): the guest set its clock
			// to the request's send time, and under load it may have
			// taken seconds to get there; a second call sets it again.
			now := time.Now().UnixNano()
			err = ac.Configure(ctx, proto.Configure{TimeUnixNano: &now})
		}
		ac.Close()
		if err != nil {
			t.Fatal(err)
		}
		c.key = r.AgentHostKey
		t.Logf("clone %d: StartClone returned after %v, agent ready after %v, re-identified in %v: %v", i, started, ready, time.Since(start)-ready, r.Steps)
		if bytes.Equal(r.AgentHostKey.Marshal(), tplKey.Marshal()) {
			t.Fatal("agent key not replaced")
		}
		if _, err := vsockcli.Dial(ctx, h.Agent, g.agentConfig(tplKey, nil)); err == nil {
			t.Error("the clone's agent still offers the template's key")
		}
		ac, err = vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(r.AgentHostKey, nil))
		if err != nil {
			t.Fatal(err)
		}
		c.facts = readFacts(t, ctx, ac)
		ac.Close()
		if c.facts.hostname != c.id.Hostname || c.facts.machineID != c.id.MachineID || c.facts.mac != mac || c.facts.addrs != ip.String() {
			t.Errorf("clone %d reports %+v, want %s %s %s %s", i, c.facts, c.id.Hostname, c.id.MachineID, mac, ip)
		}
		// date +%s truncates: the guest's time is in [clock, clock+1s).
		if f := c.facts; f.clock.Add(time.Second).Before(f.before.Add(-2*time.Second)) || f.clock.After(f.after.Add(2*time.Second)) {
			t.Errorf("clone %d: guest clock %v, host %v to %v: more than 2 s off", i, f.clock, f.before, f.after)
		}
		// QEMU's NIC filters for the new MAC: the guest told it.
		var rx []struct {
			Name    string `json:"name"`
			MainMAC string `json:"main-mac"`
		}
		if err := g.d.execute(ctx, h, "query-rx-filter", nil, &rx); err != nil || len(rx) != 1 || rx[0].MainMAC != mac {
			t.Errorf("clone %d: QEMU rx filter %+v %v, want main-mac %s", i, rx, err, mac)
		}
	}
	a, b := clones[0].facts, clones[1].facts
	if a.hostname == b.hostname || a.machineID == b.machineID || a.mac == b.mac || a.addrs == b.addrs || a.random == b.random || len(a.random) != 64 {
		t.Errorf("clones do not differ:\n%+v\n%+v", a, b)
	}
	// Each answers at its own address, with its own MAC; the template's
	// address is nobody's.
	for _, c := range clones {
		addr := c.id.IP.Addr().String()
		if out, err := exec.CommandContext(ctx, "ping", "-c", "1", "-W", "5", addr).CombinedOutput(); err != nil {
			t.Errorf("ping %s: %v\n%s", addr, err, out)
		}
		out, _ := exec.Command("ip", "neigh", "show", addr, "dev", "mqbr0").CombinedOutput()
		if !strings.Contains(string(out), c.id.MAC) {
			t.Errorf("neighbour %s: %q, want lladdr %s", addr, out, c.id.MAC)
		}
	}
	// Both map the template file privately: the pages neither wrote are
	// the page cache's, shared.
	for i, c := range clones {
		m := ramMapping(t, c.h.PID, filepath.Join(dir, TemplateMemoryFile))
		t.Logf("clone %d: template mapping Rss %d KiB, Pss %d KiB, Shared_Clean %d KiB, Private_Dirty %d KiB",
			i+1, m["Rss"], m["Pss"], m["Shared_Clean"], m["Private_Dirty"])
		if m["Shared_Clean"] < 1024 || m["Pss"] >= m["Rss"] {
			t.Errorf("clone %d shares no template pages: %v", i+1, m)
		}
	}
	if out, err := exec.CommandContext(ctx, "ping", "-c", "1", "-W", "1", "10.77.0.10").CombinedOutput(); err == nil {
		t.Errorf("the template's address still answers:\n%s", out)
	}
	// A reboot inside a clone ends its QEMU (-no-reboot) and its console
	// says so: the engine starts the VM again from its own spec (its
	// command line, MAC and keys), never the template's.
	{
		c := clones[1]
		ac, err := vsockcli.Dial(ctx, c.h.Agent, g.agentConfig(c.key, nil))
		if err != nil {
			t.Fatal(err)
		}
		if err := ac.Shutdown(ctx, true); err != nil {
			t.Fatal(err)
		}
		ac.Close()
		if err := procfs.WaitGone(ctx, c.h.PID, c.h.StartTime, 20*time.Millisecond); err != nil {
			t.Fatalf("clone 2's qemu still runs after a guest reboot: %v", err)
		}
		if r, line := consolelog.LastExit(c.spec.ConsoleLog); r != consolelog.ExitReboot {
			b, _ := os.ReadFile(c.spec.ConsoleLog)
			t.Fatalf("clone 2 exit reason %q (%q), want reboot; console:\n%s", r, line, b)
		}
	}
	// A clone is a VM like any other: a snapshot of it (its whole memory,
	// private pages and template pages alike) restores without the
	// template.
	snap := filepath.Join(g.work, "snap1")
	c1 := clones[0]
	if err := g.d.SaveState(ctx, c1.h, snap); err != nil {
		t.Fatal(err)
	}
	if err := g.d.Kill(ctx, c1.h); err != nil {
		t.Fatal(err)
	}
	h1, err := g.d.Restore(ctx, c1.spec, snap)
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(c1.spec.RunDir, qemuLog))
		t.Fatalf("%v\nqemu.log:\n%s", err, b)
	}
	c1.h = h1
	ac, err := vsockcli.WaitReady(ctx, c1.h.Agent, g.agentConfig(c1.key, nil))
	if err != nil {
		t.Fatalf("restored snapshot of a clone: %v", err)
	}
	if f := readFacts(t, ctx, ac); f.hostname != c1.id.Hostname || f.machineID != c1.id.MachineID {
		t.Errorf("restored snapshot of clone 1 reports %+v", f)
	}
	ac.Close()
	for _, c := range clones {
		if err := g.d.Kill(ctx, c.h); err != nil {
			t.Fatal(err)
		}
	}
	if fileSum(t, filepath.Join(dir, TemplateMemoryFile)) != memSum || fileSum(t, filepath.Join(dir, StateMemoryFile)) != stateSum || fileSum(t, tplDisk) != diskSum {
		t.Fatal("the template changed while clones ran")
	}
}

// ramMapping returns the smaps counters (KiB) of pid's mappings of file,
// summed over its VMAs.
func ramMapping(tb testing.TB, pid int, file string) map[string]int64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]int64{}
	in, found := false, false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			in = len(f) >= 6 && f[5] == file
			found = found || in
		case in && len(f) == 3 && f[2] == "kB":
			n, _ := strconv.ParseInt(f[1], 10, 64)
			out[strings.TrimSuffix(f[0], ":")] += n
		}
	}
	if !found {
		tb.Fatalf("pid %d does not map %s", pid, file)
	}
	return out
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkTemplateRestore compares, pairwise, a cold boot of the minimal
// image to agent ready with a clone restore of its template to agent ready
// and then re-identified (256 MiB guests), and reports the medians and
// their ratios. Run:
//
//	go test -run '^$' -bench BenchmarkTemplateRestore -benchtime 5x ./vm/hypervisor/qemu/
func BenchmarkTemplateRestore(b *testing.B) {
	g := newAgentGuest(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := filepath.Join(g.work, "tpl")
	tplKey, tplDisk := g.template(b, ctx, "tpl0", 256, dir)
	var cold, warm, reid []time.Duration
	i := 0
	for b.Loop() {
		i++
		b.StopTimer()
		spec := g.spec(b, fmt.Sprintf("cold%d", i), 256, g.rootfs, disk.FormatRaw, "mqt1", "52:54:00:77:00:31", "10.77.0.31/24")
		b.StartTimer()
		start := time.Now()
		h, err := g.d.Start(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		var seen ssh.PublicKey
		c, err := vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(nil, &seen))
		if err != nil {
			b.Fatal(err)
		}
		cold = append(cold, time.Since(start))
		b.StopTimer()
		c.Close()
		g.d.Kill(ctx, h)
		spec = g.spec(b, fmt.Sprintf("warm%d", i), 256, tplDisk, disk.FormatQcow2, "mqt2", "52:54:00:77:00:32", "10.77.0.32/24")
		b.StartTimer()
		start = time.Now()
		h, err = g.d.StartClone(ctx, spec, dir)
		if err != nil {
			b.Fatal(err)
		}
		c, err = vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(tplKey, nil))
		if err != nil {
			b.Fatal(err)
		}
		warm = append(warm, time.Since(start))
		if _, err := c.Reidentify(ctx, vsockcli.Identity{Hostname: spec.Name, MachineID: vsockcli.NewMachineID(),
			MAC: "52:54:00:77:00:32", IP: netip.MustParsePrefix("10.77.0.32/24"), Gateway: netip.MustParseAddr("10.77.0.1")}); err != nil {
			b.Fatal(err)
		}
		reid = append(reid, time.Since(start))
		b.StopTimer()
		c.Close()
		g.d.Kill(ctx, h)
		b.StartTimer()
	}
	b.ReportMetric(float64(median(cold).Milliseconds()), "cold-ms")
	b.ReportMetric(float64(median(warm).Milliseconds()), "clone-ms")
	b.ReportMetric(float64(median(warm))/float64(median(cold)), "clone/cold")
	b.ReportMetric(float64(median(reid).Milliseconds()), "clone+reidentify-ms")
	b.ReportMetric(float64(median(reid))/float64(median(cold)), "clone+reidentify/cold")
	b.Logf("cold boot to agent ready %v, median %v; clone restore to agent ready %v, median %v; and re-identified %v, median %v",
		cold, median(cold), warm, median(warm), reid, median(reid))
}

// BenchmarkTemplateRestoreSize restores clones of a 512 MiB and a 2 GiB
// template of the minimal image, alternately, to agent ready and reports
// the medians and their ratio (the restore must not grow with memory).
func BenchmarkTemplateRestoreSize(b *testing.B) {
	g := newAgentGuest(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	sizes := []int{512, 2048}
	keys := make([]ssh.PublicKey, len(sizes))
	disks := make([]string, len(sizes))
	dirs := make([]string, len(sizes))
	for j, mem := range sizes {
		dirs[j] = filepath.Join(g.work, fmt.Sprintf("tpl%d", mem))
		keys[j], disks[j] = g.template(b, ctx, fmt.Sprintf("t%d", j), mem, dirs[j])
	}
	took := make([][]time.Duration, len(sizes))
	i := 0
	for b.Loop() {
		i++
		for j, mem := range sizes {
			b.StopTimer()
			spec := g.spec(b, fmt.Sprintf("s%d-%d", mem, i), mem, disks[j], disk.FormatQcow2, "mqt1", "52:54:00:77:00:41", "10.77.0.41/24")
			b.StartTimer()
			start := time.Now()
			h, err := g.d.StartClone(ctx, spec, dirs[j])
			if err != nil {
				b.Fatal(err)
			}
			c, err := vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(keys[j], nil))
			if err != nil {
				b.Fatal(err)
			}
			took[j] = append(took[j], time.Since(start))
			b.StopTimer()
			c.Close()
			g.d.Kill(ctx, h)
			b.StartTimer()
		}
	}
	small, big := median(took[0]), median(took[1])
	b.ReportMetric(float64(small.Milliseconds()), "512MiB-ms")
	b.ReportMetric(float64(big.Milliseconds()), "2GiB-ms")
	b.ReportMetric(float64(big)/float64(small), "2GiB/512MiB")
	b.Logf("clone to agent ready: 512 MiB %v (median %v), 2 GiB %v (median %v)", took[0], small, took[1], big)
}

// startClone starts spec as a clone of the template in dir (whose agent
// key is tplKey) and re-identifies it with the spec's name and MAC and ip;
// it returns the clone and its agent's new key. The caller kills it (also
// on failure: a handle is returned once the clone started).
func (g *agentGuest) startClone(tb testing.TB, ctx context.Context, dir string, tplKey ssh.PublicKey, spec hypervisor.Spec, ip netip.Prefix) (*hypervisor.Handle, ssh.PublicKey) {
	tb.Helper()
	h, err := g.d.StartClone(ctx, spec, dir)
	if err != nil {
		tb.Fatal(err)
	}
	ac, err := vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(tplKey, nil))
	if err != nil {
		b, _ := os.ReadFile(spec.ConsoleLog)
		q, _ := os.ReadFile(filepath.Join(spec.RunDir, qemuLog))
		g.d.Kill(context.Background(), h)
		tb.Fatalf("clone %s agent: %v\nconsole:\n%s\nqemu.log:\n%s", spec.ID, err, b, q)
	}
	defer ac.Close()
	owner := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(g.owner.PublicKey())))
	r, err := ac.Reidentify(ctx, vsockcli.Identity{Hostname: spec.Name, MachineID: vsockcli.NewMachineID(), MAC: spec.Net.MAC, IP: ip,
		Gateway: netip.MustParseAddr("10.77.0.1"), AuthorizedKeys: []string{owner}})
	if err != nil {
		g.d.Kill(context.Background(), h)
		tb.Fatal(err)
	}
	return h, r.AgentHostKey
}

// run executes cmd in the guest of h (its agent's key is key) and returns
// its output, trimmed; a failure or a non-zero exit fails tb.
func (g *agentGuest) run(tb testing.TB, ctx context.Context, h *hypervisor.Handle, key ssh.PublicKey, cmd string) string {
	tb.Helper()
	c, err := vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(key, nil))
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	code, err := c.Exec(ctx, vsockcli.ExecRequest{Command: cmd, Stdout: &out, Stderr: &out})
	if err != nil || code != 0 {
		tb.Fatalf("%q: exit %d, %v: %s", cmd, code, err, out.String())
	}
	return strings.TrimSpace(out.String())
}
