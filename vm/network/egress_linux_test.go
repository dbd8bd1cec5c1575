package network

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// TestEgressNetns proves the egress rules in the kernel: a fake VM behind
// the bridge reaches the "internet" (a namespace beyond an uplink), the
// allow-listed address and the nameserver on port 53, and nothing else
// that is private: not cloud metadata, CGNAT, the host's LAN, nor any of
// the host's own addresses on a port that is not open.
func TestEgressNetns(t *testing.T) {
	if !inNetns(t) {
		return
	}
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.HostPorts = []uint16{allowedHostPort}
	cfg.DNS = netip.MustParseAddr("192.168.77.1")
	allow, err := ParseEgressRule("172.31.9.9")
	if err != nil {
		t.Fatal(err)
	}
	cfg.EgressAllow = []EgressRule{allow}
	m, err := New(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	m.adoptLinks = true
	if err := m.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, m, true)

	// The world beyond the host: a namespace on the host's "LAN" uplink
	// holding every target address.
	out := uniqueName("mnout")
	run(t, "ip", "netns", "add", out)
	t.Cleanup(func() { _ = run(t, "ip", "netns", "del", out) })
	run(t, "ip", "link", "add", "upl0", "type", "veth", "peer", "name", "eth0", "netns", out)
	run(t, "ip", "addr", "add", "192.168.77.2/24", "dev", "upl0")
	run(t, "ip", "link", "set", "upl0", "up")
	remote := []string{"169.254.169.254", "100.64.5.5", "172.31.9.9", "203.0.113.10", "10.99.0.5"}
	sh := func(args ...string) { run(t, "ip", append([]string{"netns", "exec", out, "ip"}, args...)...) }
	sh("link", "set", "lo", "up")
	sh("addr", "add", "192.168.77.1/24", "dev", "eth0")
	sh("link", "set", "eth0", "up")
	for _, a := range remote {
		sh("addr", "add", a+"/32", "dev", "lo")
		run(t, "ip", "route", "add", a+"/32", "via", "192.168.77.1")
	}
	// One more address of the host itself, as a public one would be (on
	// lo: not every kernel has dummy interfaces).
	run(t, "ip", "addr", "add", "198.51.100.7/32", "dev", "lo")

	serve(t, out, ":8080")
	serve(t, out, ":53")
	udpEcho(t, out, ":53")
	serve(t, "", fmt.Sprintf(":%d", allowedHostPort))
	serve(t, "", fmt.Sprintf(":%d", deniedHostPort))

	vm := newFakeVM(t, m, "0000000000e1", "10.210.0.2")
	gw := cfg.Gateway().String()
	// Links come up asynchronously: wait until the host itself gets
	// through, then give the first packets from the vm a few tries.
	if err := eventually(func() error { return dial("", "203.0.113.10:8080") }); err != nil {
		t.Fatalf("host -> 203.0.113.10:8080: %v (the scaffolding is broken)", err)
	}
	reach := []string{"203.0.113.10:8080", "172.31.9.9:8080", "192.168.77.1:53", net.JoinHostPort(gw, fmt.Sprint(allowedHostPort))}
	for _, addr := range reach {
		if err := eventually(func() error { return dial(vm.ns, addr) }); err != nil {
			t.Errorf("vm -> %s: %v (want reachable)", addr, err)
		}
	}
	if err := eventually(func() error { return udpExchange(vm.ns, "192.168.77.1:53") }); err != nil {
		t.Errorf("vm -> dns over udp: %v", err)
	}
	blocked := []string{"169.254.169.254:8080", "100.64.5.5:8080", "10.99.0.5:8080", "192.168.77.1:8080"}
	for _, host := range []string{gw, "198.51.100.7", "192.168.77.2"} {
		blocked = append(blocked, net.JoinHostPort(host, fmt.Sprint(deniedHostPort)))
	}
	for _, host := range []string{"198.51.100.7", "192.168.77.2"} {
		blocked = append(blocked, net.JoinHostPort(host, fmt.Sprint(allowedHostPort)))
	}
	for _, addr := range blocked {
		start := time.Now()
		if err := dial(vm.ns, addr); err == nil {
			t.Errorf("vm reached %s", addr)
		} else {
			t.Logf("vm -> %s: %v after %v", addr, err, time.Since(start).Round(time.Millisecond))
		}
	}
	if err := udpExchange(vm.ns, "192.168.77.1:54"); err == nil {
		t.Errorf("vm reached udp 192.168.77.1:54")
	}
	// A TAP that fell out of the bridge (the bridge was recreated, say)
	// reaches nothing on the host either. rp_filter is off in a fresh
	// namespace, so without the rule one-way packets would get in.
	got := udpSink(t, "198.51.100.7:5353")
	run(t, "ip", "link", "set", vm.port.TAP, "nomaster")
	vm.sh(t, "ip neigh flush dev eth0") // ask the host's tap for its mac
	s := sniff(t, vm.port.TAP)
	if err := udpSend(vm.ns, "198.51.100.7:5353", got); err == nil {
		t.Errorf("a datagram from a tap outside the bridge reached the host")
	}
	if !s.seen(vm.port.MAC, vm.port.IP) { // the control
		t.Errorf("the datagram never reached the host's tap: the test proves nothing")
	}
	s.close()
	if err := m.AddPort(ctx, vm.port); err != nil { // repairs
		t.Fatal(err)
	}

	// The host still reaches those addresses itself (the test's control).
	for _, addr := range []string{"169.254.169.254:8080", "100.64.5.5:8080", "192.168.77.1:8080"} {
		if err := dial("", addr); err != nil {
			t.Errorf("host -> %s: %v (the scaffolding is broken)", addr, err)
		}
	}
}

// eventually retries f for up to five seconds until it succeeds.
func eventually(f func() error) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// udpSink listens on addr (host namespace); the channel gets one value per
// datagram.
func udpSink(t *testing.T, addr string) chan struct{} {
	t.Helper()
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	got := make(chan struct{}, 64)
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			got <- struct{}{}
		}
	}()
	return got
}

// udpSend sends a datagram from ns to addr and waits half a second for
// the sink to get it.
func udpSend(ns, addr string, got chan struct{}) error {
	var err error
	inNS(ns, func() {
		var c net.Conn
		if c, err = net.Dial("udp4", addr); err != nil {
			return
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
	})
	if err != nil {
		return err
	}
	select {
	case <-got:
		return nil
	case <-time.After(500 * time.Millisecond):
		return fmt.Errorf("nothing arrived")
	}
}

// udpEcho answers every datagram to addr inside ns with "hi\n".
func udpEcho(t *testing.T, ns, addr string) {
	t.Helper()
	var pc net.PacketConn
	var err error
	inNS(ns, func() { pc, err = net.ListenPacket("udp4", addr) })
	if err != nil {
		t.Fatalf("listen udp %s in %q: %v", addr, ns, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte("hi\n"), from)
		}
	}()
}

// udpExchange sends a datagram from ns to addr and waits a second for
// "hi\n".
func udpExchange(ns, addr string) error {
	var err error
	inNS(ns, func() {
		var c net.Conn
		if c, err = net.Dial("udp4", addr); err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err = c.Write([]byte("q")); err != nil {
			return
		}
		buf := make([]byte, 16)
		var n int
		if n, err = c.Read(buf); err == nil && string(buf[:n]) != "hi\n" {
			err = fmt.Errorf("got %q", buf[:n])
		}
	})
	return err
}
