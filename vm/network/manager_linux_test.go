package network

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/vishvananda/netlink"
)

const (
	allowedHostPort = 47001
	deniedHostPort  = 47002
	vmPort          = 8080
	vmOtherPort     = 9999
)

func testManager(t *testing.T) *Manager {
	t.Helper()
	cfg := DefaultConfig()
	cfg.HostPorts = []uint16{allowedHostPort}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	m.adoptLinks = true // veth pairs stand in for VMs
	return m
}

// nftState is the kernel's ruleset with handles and without counter
// values: equal before and after an operation means nothing was rewritten.
func nftState(t *testing.T) string {
	t.Helper()
	out := run(t, "nft", "-a", "list", "ruleset")
	return regexp.MustCompile(`counter packets \d+ bytes \d+`).ReplaceAllString(out, "counter")
}

func mustCheck(t *testing.T, m *Manager, wantOK bool) Report {
	t.Helper()
	r, err := m.Check(context.Background())
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if r.OK() != wantOK {
		t.Fatalf("Check OK = %v, want %v:\n%s", r.OK(), wantOK, r)
	}
	return r
}

func TestManagerNetns(t *testing.T) {
	if !inNetns(t) {
		return
	}
	ctx := context.Background()
	m := testManager(t)
	gw := m.Config().Gateway().String()

	// Before Setup: AddPort refuses, Check reports what is missing.
	if err := m.AddPort(ctx, Port{TAP: "mnx", IP: netip.MustParseAddr("10.210.0.9"), MAC: MAC("x")}); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("AddPort before Setup = %v, want FailedPrecondition", err)
	}
	if r := mustCheck(t, m, false); len(r.Problems()) < 3 {
		t.Fatalf("Check before setup found too little:\n%s", r)
	}

	start := time.Now()
	if err := m.Setup(ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Logf("first Setup took %v", time.Since(start))
	start = time.Now()
	mustCheck(t, m, true)
	t.Logf("Check took %v", time.Since(start))

	t.Run("setup twice changes nothing", func(t *testing.T) {
		before := nftState(t)
		links := run(t, "ip", "addr", "show", "minions0")
		start := time.Now()
		if err := m.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("second Setup (no change) took %v", time.Since(start))
		if after := nftState(t); after != before {
			t.Fatalf("second Setup changed the ruleset:\n--- before\n%s--- after\n%s", before, after)
		}
		if after := run(t, "ip", "addr", "show", "minions0"); after != links {
			t.Fatalf("second Setup changed the bridge:\n%s\n%s", links, after)
		}
	})

	vm1 := newFakeVM(t, m, "000000000001", "10.210.0.2")
	vm2 := newFakeVM(t, m, "000000000002", "10.210.0.3")
	for _, vm := range []*fakeVM{vm1, vm2} {
		serve(t, vm.ns, ":8080")
		serve(t, vm.ns, ":9999")
	}
	serve(t, "", ":47001")
	serve(t, "", ":47002")
	mustCheck(t, m, true)

	t.Run("kernel state matches Ruleset", func(t *testing.T) {
		ports, err := m.Ports(ctx)
		if err != nil || len(ports) != 2 {
			t.Fatalf("Ports = %v, %v", ports, err)
		}
		// The registered identities are exactly what Ruleset renders.
		for _, p := range ports {
			if !strings.Contains(Ruleset(m.Config(), ports), portElem(p).text) {
				t.Errorf("%s not rendered", p)
			}
		}
		out := run(t, "nft", "list", "set", "bridge", "minions", "ports")
		for _, vm := range []*fakeVM{vm1, vm2} {
			if !strings.Contains(out, vm.port.MAC.String()) || !strings.Contains(out, vm.port.IP.String()) {
				t.Errorf("nft set lacks %s:\n%s", vm.port, out)
			}
		}
	})

	t.Run("host reaches every vm on any port", func(t *testing.T) {
		for _, vm := range []*fakeVM{vm1, vm2} {
			if out, err := exec.Command("busybox", "ping", "-c", "1", "-W", "2", vm.port.IP.String()).CombinedOutput(); err != nil {
				t.Errorf("host ping %s: %v\n%s", vm.port.IP, err, out)
			}
			for _, port := range []string{"8080", "9999"} {
				if err := dial("", net.JoinHostPort(vm.port.IP.String(), port)); err != nil {
					t.Errorf("host -> %s:%s: %v", vm.port.IP, port, err)
				}
			}
		}
	})

	t.Run("vm reaches gateway ping and allowed host port only", func(t *testing.T) {
		for _, vm := range []*fakeVM{vm1, vm2} {
			if !vm.ping(gw) {
				t.Errorf("%s cannot ping gateway", vm.port.TAP)
			}
			if err := dial(vm.ns, net.JoinHostPort(gw, "47001")); err != nil {
				t.Errorf("%s -> allowed host port: %v", vm.port.TAP, err)
			}
			if err := dial(vm.ns, net.JoinHostPort(gw, "47002")); err == nil {
				t.Errorf("%s reached a host port that is not allowed", vm.port.TAP)
			}
		}
	})

	vmToVMBlocked := func(t *testing.T) {
		t.Helper()
		for _, pair := range [][2]*fakeVM{{vm1, vm2}, {vm2, vm1}} {
			from, to := pair[0], pair[1]
			if from.ping(to.port.IP.String()) {
				t.Errorf("%s pinged %s", from.port.TAP, to.port.TAP)
			}
			if err := dial(from.ns, net.JoinHostPort(to.port.IP.String(), "8080")); err == nil {
				t.Errorf("%s reached %s over TCP", from.port.TAP, to.port.TAP)
			}
		}
	}
	t.Run("vm cannot reach vm", vmToVMBlocked)

	t.Run("vm cannot reach vm without port isolation", func(t *testing.T) {
		for _, vm := range []*fakeVM{vm1, vm2} {
			l, _ := netlink.LinkByName(vm.port.TAP)
			if err := netlink.LinkSetIsolated(l, false); err != nil {
				t.Fatal(err)
			}
		}
		vmToVMBlocked(t)
		r := mustCheck(t, m, false)
		if !strings.Contains(r.String(), "not isolated") {
			t.Errorf("Check missed lost isolation:\n%s", r)
		}
		// AddPort again is idempotent and repairs it.
		for _, vm := range []*fakeVM{vm1, vm2} {
			if err := m.AddPort(ctx, vm.port); err != nil {
				t.Fatal(err)
			}
		}
		mustCheck(t, m, true)
	})

	t.Run("vm cannot reach vm without nftables tables", func(t *testing.T) {
		deleteTables(t, m.Config().Table)
		vmToVMBlocked(t) // port isolation alone
		r := mustCheck(t, m, false)
		if !strings.Contains(r.String(), "missing") {
			t.Errorf("Check missed the tables:\n%s", r)
		}
		// Setup restores the tables and, from the interface aliases, the
		// port registrations.
		if err := m.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		mustCheck(t, m, true)
		if ports, _ := m.Ports(ctx); len(ports) != 2 {
			t.Fatalf("ports after restore: %v", ports)
		}
		if !vm1.ping(gw) {
			t.Errorf("vm1 cannot ping gateway after restore")
		}
	})

	t.Run("spoofed ip gets nothing through", func(t *testing.T) {
		s := sniff(t, m.Config().Bridge)
		// Control: honest traffic is seen by the sniffer.
		if !vm1.ping(gw) {
			t.Fatal("vm1 cannot ping gateway")
		}
		if !s.seen(vm1.port.MAC, vm1.port.IP) {
			t.Fatal("sniffer saw no frame from vm1: the test cannot see drops")
		}
		s.reset()
		vm1.sh(t, "ip addr add "+vm2.port.IP.String()+"/32 dev eth0")
		vm1.sh(t, "ip neigh flush dev eth0")
		if vm1.try("busybox ping -c 2 -W 1 -I " + vm2.port.IP.String() + " " + gw) {
			t.Errorf("ping from vm1 with vm2's address answered")
		}
		// vm1's MAC with vm2's address: frames vm2 sends itself (late
		// retransmits from the tests before) are legitimate.
		if s.seen(vm1.port.MAC, vm2.port.IP) {
			t.Errorf("a frame with vm2's address entered the bridge from vm1")
		}
		vm1.sh(t, "ip addr del "+vm2.port.IP.String()+"/32 dev eth0")
		// An address nobody owns.
		s.reset()
		vm1.sh(t, "ip addr add 10.210.0.77/32 dev eth0")
		if vm1.try("busybox ping -c 2 -W 1 -I 10.210.0.77 " + gw) {
			t.Errorf("ping from vm1 with an unowned address answered")
		}
		if s.seen(nil, netip.MustParseAddr("10.210.0.77")) {
			t.Errorf("a frame with an unowned address entered the bridge")
		}
		vm1.sh(t, "ip addr del 10.210.0.77/32 dev eth0")
	})

	t.Run("spoofed mac gets nothing through", func(t *testing.T) {
		s := sniff(t, m.Config().Bridge)
		for _, mac := range []net.HardwareAddr{{0x02, 0, 0, 0, 0, 0x99}, vm2.port.MAC} {
			s.reset()
			vm1.sh(t, "ip link set eth0 address "+mac.String())
			vm1.sh(t, "ip neigh flush dev eth0")
			if vm1.ping(gw) {
				t.Errorf("vm1 with mac %s pinged the gateway", mac)
			}
			if err := dial(vm1.ns, net.JoinHostPort(gw, "47001")); err == nil {
				t.Errorf("vm1 with mac %s reached an allowed host port", mac)
			}
			if s.seen(mac, netip.Addr{}) {
				t.Errorf("a frame from %s entered the bridge through vm1's port", mac)
			}
		}
		vm1.sh(t, "ip link set eth0 address "+vm1.port.MAC.String())
		vm1.sh(t, "ip neigh flush dev eth0")
		if !vm1.ping(gw) {
			t.Errorf("vm1 cannot ping gateway with its own mac again")
		}
	})

	t.Run("addport conflicts", func(t *testing.T) {
		err := m.AddPort(ctx, Port{TAP: "mnother", IP: vm1.port.IP, MAC: MAC("other")})
		if !errors.Is(err, errs.AlreadyExists) {
			t.Errorf("AddPort with vm1's IP = %v, want AlreadyExists", err)
		}
		err = m.AddPort(ctx, Port{TAP: "mnother", IP: netip.MustParseAddr("10.210.0.50"), MAC: vm1.port.MAC})
		if !errors.Is(err, errs.AlreadyExists) {
			t.Errorf("AddPort with vm1's MAC = %v, want AlreadyExists", err)
		}
		if _, err := netlink.LinkByName("mnother"); err == nil {
			t.Errorf("failed AddPort left its tap behind")
		}
		if err := m.AddPort(ctx, Port{TAP: "mnother", IP: netip.MustParseAddr("10.211.0.50"), MAC: MAC("o")}); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("AddPort outside subnet = %v", err)
		}
	})

	t.Run("real tap", func(t *testing.T) {
		p := Port{TAP: "mn0000000000aa", IP: netip.MustParseAddr("10.210.0.10"), MAC: MAC("0000000000aa")}
		m.adoptLinks = false
		defer func() { m.adoptLinks = true }()
		// A non-TAP interface with the name is refused.
		run(t, "ip", "link", "add", p.TAP, "type", "veth", "peer", "name", "mnpeer")
		if err := m.AddPort(ctx, p); !errors.Is(err, errs.AlreadyExists) {
			t.Fatalf("AddPort over a dummy = %v, want AlreadyExists", err)
		}
		run(t, "ip", "link", "del", p.TAP)
		for i := range 2 { // idempotent
			start := time.Now()
			if err := m.AddPort(ctx, p); err != nil {
				t.Fatal(err)
			}
			t.Logf("AddPort (tap, call %d) took %v", i+1, time.Since(start))
		}
		l, err := netlink.LinkByName(p.TAP)
		if err != nil {
			t.Fatal(err)
		}
		tap, ok := l.(*netlink.Tuntap)
		br, _ := netlink.LinkByName("minions0")
		pi, _ := netlink.LinkGetProtinfo(l)
		if !ok || tap.Mode != netlink.TUNTAP_MODE_TAP || tap.NonPersist || l.Attrs().MasterIndex != br.Attrs().Index || !pi.Isolated {
			t.Fatalf("tap %+v isolated=%v", l, pi.Isolated)
		}
		mustCheck(t, m, true)
		// New identity for the same TAP replaces the old one.
		p2 := p
		p2.IP = netip.MustParseAddr("10.210.0.11")
		if err := m.AddPort(ctx, p2); err != nil {
			t.Fatal(err)
		}
		out := run(t, "nft", "list", "set", "bridge", "minions", "ports")
		if strings.Contains(out, "10.210.0.10") || !strings.Contains(out, "10.210.0.11") {
			t.Errorf("identity not replaced:\n%s", out)
		}
		for i := range 2 { // idempotent
			start := time.Now()
			if err := m.RemovePort(ctx, p.TAP); err != nil {
				t.Fatal(err)
			}
			t.Logf("RemovePort (call %d) took %v", i+1, time.Since(start))
		}
		if _, err := netlink.LinkByName(p.TAP); err == nil {
			t.Errorf("RemovePort left the tap")
		}
		out = run(t, "nft", "list", "set", "bridge", "minions", "ports")
		if strings.Contains(out, p.TAP) {
			t.Errorf("RemovePort left elements:\n%s", out)
		}
		if !strings.Contains(out, vm1.port.TAP) || !strings.Contains(out, vm2.port.TAP) {
			t.Errorf("RemovePort removed other ports:\n%s", out)
		}
		mustCheck(t, m, true)
	})

	t.Run("remove port", func(t *testing.T) {
		if err := m.RemovePort(ctx, vm2.port.TAP); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName(vm2.port.TAP); err == nil {
			t.Errorf("link still there")
		}
		ports, err := m.Ports(ctx)
		if err != nil || len(ports) != 1 || ports[0].TAP != vm1.port.TAP {
			t.Errorf("Ports after remove = %v, %v", ports, err)
		}
		mustCheck(t, m, true)
		if !vm1.ping(gw) {
			t.Errorf("vm1 lost connectivity when vm2 was removed")
		}
	})

	t.Run("teardown leaves nothing", func(t *testing.T) {
		for range 2 {
			if err := m.Teardown(ctx); err != nil {
				t.Fatal(err)
			}
		}
		links, err := netlink.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if l.Attrs().Name == "minions0" || strings.HasPrefix(l.Attrs().Name, TAPPrefix) {
				t.Errorf("left %s", l.Attrs().Name)
			}
		}
		if out := run(t, "nft", "list", "ruleset"); strings.TrimSpace(out) != "" {
			t.Errorf("ruleset not empty:\n%s", out)
		}
		mustCheck(t, m, false)
	})
}

func deleteTables(t *testing.T, name string) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyBridge, Name: name})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

// The golden files are real nft syntax the kernel accepts.
func TestGoldenFilesLoad(t *testing.T) {
	if !inNetns(t) {
		return
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed")
	}
	files, _ := filepath.Glob("testdata/*.nft")
	if len(files) == 0 {
		t.Fatal("no golden files")
	}
	for _, f := range files {
		run(t, "nft", "-c", "-f", f)
	}
}

// The bridge and the uplink NAT: a "wan" namespace behind the host sees
// VM traffic from the host's address and cannot open connections to VMs.
func TestUplinkNATNetns(t *testing.T) {
	if !inNetns(t) {
		return
	}
	ctx := context.Background()
	m := testManager(t)
	if err := m.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Teardown(ctx)
	vm := newFakeVM(t, m, "000000000003", "10.210.0.5")
	serve(t, vm.ns, ":8080")

	wan := uniqueName("mnwan")
	run(t, "ip", "netns", "add", wan)
	defer exec.Command("ip", "netns", "del", wan).Run()
	run(t, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", wan)
	run(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
	run(t, "ip", "link", "set", "up0", "up")
	w := &fakeVM{ns: wan}
	w.sh(t, "ip link set lo up")
	w.sh(t, "ip addr add 192.0.2.2/24 dev eth0")
	w.sh(t, "ip link set eth0 up")
	w.sh(t, "ip route add 10.210.0.0/16 via 192.0.2.1")

	// The wan side records who connects.
	var seen []string
	var ln net.Listener
	var err error
	inNS(wan, func() { ln, err = net.Listen("tcp4", ":80") })
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		got <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Write([]byte("hi\n"))
		c.Close()
	}()
	if err := dial(vm.ns, "192.0.2.2:80"); err != nil {
		t.Fatalf("vm -> wan: %v", err)
	}
	seen = append(seen, <-got)
	if seen[0] != "192.0.2.1" {
		t.Errorf("wan saw %s, want the host's 192.0.2.1 (masquerade)", seen[0])
	}
	if !vm.ping("192.0.2.2") {
		t.Errorf("vm cannot ping wan")
	}
	// New connections from outside to a VM are dropped.
	if err := dial(wan, "10.210.0.5:8080"); err == nil {
		t.Errorf("wan opened a connection to the vm")
	}
	if w.ping("10.210.0.5") {
		t.Errorf("wan pinged the vm")
	}
}
