package guestagent

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A minimal rtnetlink client: link up, add an address, add a default
// route. Enough for the agent to configure lo and eth0 without the ip
// binary or a netlink library.

var nlSeq atomic.Uint32

func nlAttr(typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b := make([]byte, (l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1))
	binary.NativeEndian.PutUint16(b[0:], uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

func structBytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// nlRequest sends one request with NLM_F_ACK and waits for its ack.
func nlRequest(typ uint16, flags uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	tv := unix.NsecToTimeval(int64(2 * time.Second))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	seq := nlSeq.Add(1)
	msg := make([]byte, unix.SizeofNlMsghdr+len(body))
	hdr := unix.NlMsghdr{
		Len:   uint32(len(msg)),
		Type:  typ,
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK | flags,
		Seq:   seq,
	}
	copy(msg, structBytes(&hdr))
	copy(msg[unix.SizeofNlMsghdr:], body)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscallParseNetlink(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return fmt.Errorf("netlink: short error message")
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}

type nlMessage struct {
	Header unix.NlMsghdr
	Data   []byte
}

func syscallParseNetlink(b []byte) ([]nlMessage, error) {
	var out []nlMessage
	for len(b) >= unix.SizeofNlMsghdr {
		var h unix.NlMsghdr
		copy(structBytes(&h), b)
		if int(h.Len) < unix.SizeofNlMsghdr || int(h.Len) > len(b) {
			return nil, fmt.Errorf("netlink: bad message length %d", h.Len)
		}
		out = append(out, nlMessage{Header: h, Data: b[unix.SizeofNlMsghdr:h.Len]})
		b = b[(int(h.Len)+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1):]
	}
	return out, nil
}

// LinkUp sets the interface up.
func LinkUp(ifc *net.Interface) error {
	msg := unix.IfInfomsg{Family: unix.AF_UNSPEC, Index: int32(ifc.Index), Flags: unix.IFF_UP, Change: unix.IFF_UP}
	if err := nlRequest(unix.RTM_NEWLINK, 0, structBytes(&msg)); err != nil {
		return fmt.Errorf("set %s up: %w", ifc.Name, err)
	}
	return nil
}

// AddAddr adds an IPv4 address to the interface (EEXIST is success).
func AddAddr(ifc *net.Interface, p netip.Prefix) error {
	if !p.Addr().Is4() {
		return fmt.Errorf("add address %s: only IPv4 is supported", p)
	}
	msg := unix.IfAddrmsg{Family: unix.AF_INET, Prefixlen: uint8(p.Bits()), Index: uint32(ifc.Index)}
	a := p.Addr().As4()
	body := append(structBytes(&msg), nlAttr(unix.IFA_LOCAL, a[:])...)
	body = append(body, nlAttr(unix.IFA_ADDRESS, a[:])...)
	if p.Bits() < 31 {
		bc := broadcast(p).As4()
		body = append(body, nlAttr(unix.IFA_BROADCAST, bc[:])...)
	}
	err := nlRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
	if err != nil && err != unix.EEXIST {
		return fmt.Errorf("add address %s to %s: %w", p, ifc.Name, err)
	}
	return nil
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

// AddDefaultRoute adds (or replaces) the IPv4 default route via gw on ifc.
func AddDefaultRoute(ifc *net.Interface, gw netip.Addr) error {
	msg := unix.RtMsg{
		Family:   unix.AF_INET,
		Table:    unix.RT_TABLE_MAIN,
		Protocol: unix.RTPROT_BOOT,
		Scope:    unix.RT_SCOPE_UNIVERSE,
		Type:     unix.RTN_UNICAST,
	}
	g := gw.As4()
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(ifc.Index))
	body := append(structBytes(&msg), nlAttr(unix.RTA_GATEWAY, g[:])...)
	body = append(body, nlAttr(unix.RTA_OIF, oif)...)
	if err := nlRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, body); err != nil {
		return fmt.Errorf("add default route via %s: %w", gw, err)
	}
	return nil
}

// ConfigureNetwork brings lo up and, when ip is valid, waits up to wait for
// eth0 to appear and gives it ip, the default route via gw (if valid) and
// /etc/resolv.conf (if dns is valid).
func ConfigureNetwork(ip netip.Prefix, gw, dns netip.Addr, wait time.Duration) error {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return fmt.Errorf("configure network: %w", err)
	}
	if err := LinkUp(lo); err != nil {
		return fmt.Errorf("configure network: %w", err)
	}
	if !ip.IsValid() {
		return nil
	}
	deadline := time.Now().Add(wait)
	var eth *net.Interface
	for {
		if eth, err = net.InterfaceByName("eth0"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("configure network: eth0 did not appear: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := AddAddr(eth, ip); err != nil {
		return fmt.Errorf("configure network: %w", err)
	}
	if err := LinkUp(eth); err != nil {
		return fmt.Errorf("configure network: %w", err)
	}
	if gw.IsValid() {
		if err := AddDefaultRoute(eth, gw); err != nil {
			return fmt.Errorf("configure network: %w", err)
		}
	}
	if dns.IsValid() {
		if err := os.WriteFile("/etc/resolv.conf", []byte("nameserver "+dns.String()+"\n"), 0o644); err != nil {
			return fmt.Errorf("configure network: %w", err)
		}
	}
	return nil
}
