package e2e

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// bridgeSniffer records the IPv4 and ARP frames a bridge passes up to the
// host: a frame the bridge's nftables rules drop never shows here.
type bridgeSniffer struct {
	fd     int
	mu     sync.Mutex
	frames [][]byte
	stop   chan struct{}
	done   chan struct{}
}

func sniffBridge(t *testing.T, ifname string) *bridgeSniffer {
	t.Helper()
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	proto := uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8 // network byte order
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	s := &bridgeSniffer{fd: fd, stop: make(chan struct{}), done: make(chan struct{})}
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
	t.Cleanup(func() {
		close(s.stop)
		<-s.done
		unix.Close(fd)
	})
	return s
}

func (s *bridgeSniffer) reset() {
	s.mu.Lock()
	s.frames = nil
	s.mu.Unlock()
}

// seen waits up to a second for a frame from mac whose IPv4 source (or ARP
// sender) address is ip.
func (s *bridgeSniffer) seen(mac string, ip string) bool {
	want := netip.MustParseAddr(ip)
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		s.mu.Lock()
		for _, f := range s.frames {
			if len(f) < 14 || !strings.EqualFold(net.HardwareAddr(f[6:12]).String(), mac) {
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
			}
			if src != nil && netip.AddrFrom4([4]byte(src)) == want {
				s.mu.Unlock()
				return true
			}
		}
		s.mu.Unlock()
	}
	return false
}
