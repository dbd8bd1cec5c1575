package network

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/testenv"
)

const envNetnsChild = "MINIONS_NETWORK_TEST_NETNS"

// inNetns runs the calling top-level test again in a fresh network
// namespace (via `ip netns exec` on the test binary) and returns false; in
// that child it returns true and the test body runs there. Needs root.
func inNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envNetnsChild) == t.Name() {
		run(t, "ip", "link", "set", "lo", "up")
		return true
	}
	if os.Geteuid() != 0 {
		testenv.SkipUnlessCI(t, "needs root (network namespaces, netlink, nftables)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.SkipUnlessCI(t, "needs ip(8) for test scaffolding")
	}
	ns := uniqueName("mnt")
	run(t, "ip", "netns", "add", ns)
	defer exec.Command("ip", "netns", "del", ns).Run()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := []string{"netns", "exec", ns, os.Args[0], "-test.run", "^" + t.Name() + "$", "-test.count=1", "-test.timeout=170s"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = append(os.Environ(), envNetnsChild+"="+t.Name())
	out, err := cmd.CombinedOutput()
	t.Logf("in netns %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("test in netns %s: %v", ns, err)
	}
	return false
}

func uniqueName(prefix string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s%d%s", prefix, os.Getpid()%100000, hex.EncodeToString(b))
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// fakeVM is a stand-in for a VM: a network namespace with eth0, whose peer
// (named like a TAP) is registered through Manager.AddPort.
type fakeVM struct {
	ns   string
	port Port
}

func newFakeVM(t *testing.T, m *Manager, id string, ip string) *fakeVM {
	t.Helper()
	tap, err := TAPName(id)
	if err != nil {
		t.Fatal(err)
	}
	vm := &fakeVM{ns: uniqueName("mnvm"), port: Port{TAP: tap, IP: netip.MustParseAddr(ip), MAC: MAC(id)}}
	run(t, "ip", "netns", "add", vm.ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", vm.ns).Run() })
	run(t, "ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", vm.ns)
	bits := m.Config().Subnet.Bits()
	vm.sh(t, "ip link set lo up")
	vm.sh(t, "ip link set eth0 address "+vm.port.MAC.String())
	vm.sh(t, fmt.Sprintf("ip addr add %s/%d dev eth0", ip, bits))
	vm.sh(t, "ip link set eth0 up")
	vm.sh(t, "ip route add default via "+m.Config().Gateway().String())
	if err := m.AddPort(context.Background(), vm.port); err != nil {
		t.Fatalf("AddPort %s: %v", tap, err)
	}
	return vm
}

// sh runs a command line inside the VM's namespace and fails the test on
// error.
func (vm *fakeVM) sh(t *testing.T, line string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", vm.ns}, strings.Fields(line)...)...)
}

// try runs a command line inside the VM's namespace and reports success.
func (vm *fakeVM) try(line string) bool {
	return exec.Command("ip", append([]string{"netns", "exec", vm.ns}, strings.Fields(line)...)...).Run() == nil
}

func (vm *fakeVM) ping(dst string) bool {
	return vm.try("busybox ping -c 1 -W 1 " + dst)
}

// inNS runs f on an OS thread moved into the named namespace (empty: the
// current one). The thread is discarded afterwards.
func inNS(ns string, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if ns != "" {
			fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				panic(err)
			}
			defer unix.Close(fd)
			if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
				panic(err)
			}
		}
		f()
	}()
	<-done
}

// serve listens on addr inside ns and answers every connection with "hi".
func serve(t *testing.T, ns, addr string) {
	t.Helper()
	var ln net.Listener
	var err error
	inNS(ns, func() { ln, err = net.Listen("tcp4", addr) })
	if err != nil {
		t.Fatalf("listen %s in %q: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hi\n"))
			c.Close()
		}
	}()
}

// dial reports whether a TCP connection from ns to addr gets "hi".
func dial(ns, addr string) error {
	var err error
	inNS(ns, func() {
		var c net.Conn
		c, err = net.DialTimeout("tcp4", addr, time.Second)
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		var line string
		line, err = bufio.NewReader(c).ReadString('\n')
		if err == nil && line != "hi\n" {
			err = fmt.Errorf("got %q", line)
		}
	})
	return err
}

// sniffer records the frames the bridge passes up to the host.
type sniffer struct {
	fd     int
	mu     sync.Mutex
	frames [][]byte
	stop   chan struct{}
	done   chan struct{}
}

func sniff(t *testing.T, ifname string) *sniffer {
	t.Helper()
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	proto := htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	s := &sniffer{fd: fd, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 65536)
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			s.mu.Lock()
			s.frames = append(s.frames, append([]byte(nil), buf[:n]...))
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *sniffer) close() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	<-s.done
	unix.Close(s.fd)
}

// seen waits up to a second for a frame from mac with IPv4 or ARP sender
// address ip to have gone up the bridge (the reader runs behind the
// traffic). Either may be zero to match anything.
func (s *sniffer) seen(mac net.HardwareAddr, ip netip.Addr) bool {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if s.seenNow(mac, ip) {
			return true
		}
	}
	return false
}

// seenNow reports whether a frame from mac with IPv4 or ARP sender address ip
// went up the bridge. Either may be zero to match anything.
func (s *sniffer) seenNow(mac net.HardwareAddr, ip netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.frames {
		if len(f) < 14 || (mac != nil && net.HardwareAddr(f[6:12]).String() != mac.String()) {
			continue
		}
		var src []byte
		switch binary.BigEndian.Uint16(f[12:14]) {
		case unix.ETH_P_IP:
			if len(f) >= 14+20 {
				src = f[14+12 : 14+16]
			}
		case unix.ETH_P_ARP:
			if len(f) >= 14+28 {
				src = f[14+14 : 14+18]
			}
		default:
			continue
		}
		if !ip.IsValid() || (src != nil && netip.AddrFrom4([4]byte(src)) == ip) {
			return true
		}
	}
	return false
}

func (s *sniffer) reset() {
	s.mu.Lock()
	s.frames = nil
	s.mu.Unlock()
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
