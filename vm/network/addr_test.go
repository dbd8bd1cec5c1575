package network

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestAllocate(t *testing.T) {
	full30 := addrs("10.0.0.2")
	tests := []struct {
		name   string
		subnet string
		used   []netip.Addr
		want   string
		class  *errs.Class
	}{
		{"empty", "10.210.0.0/16", nil, "10.210.0.2", nil},
		{"skips used", "10.210.0.0/16", addrs("10.210.0.2", "10.210.0.3"), "10.210.0.4", nil},
		{"fills hole", "10.210.0.0/16", addrs("10.210.0.2", "10.210.0.4"), "10.210.0.3", nil},
		{"crosses octet", "10.210.0.0/16", rangeAddrs("10.210.0.2", 254), "10.210.1.0", nil},
		{"gateway in used is ignored", "10.210.0.0/16", addrs("10.210.0.1"), "10.210.0.2", nil},
		{"slash 30 has one", "10.0.0.0/30", nil, "10.0.0.2", nil},
		{"slash 30 full", "10.0.0.0/30", full30, "", errs.ResourceExhausted},
		{"slash 24 full never broadcast", "192.168.7.0/24", rangeAddrs("192.168.7.2", 253), "", errs.ResourceExhausted},
		{"slash 24 last usable", "192.168.7.0/24", rangeAddrs("192.168.7.2", 252), "192.168.7.254", nil},
		{"ipv6", "fd00::/64", nil, "", errs.InvalidArgument},
		{"host bits", "10.210.0.1/16", nil, "", errs.InvalidArgument},
		{"too small", "10.0.0.0/31", nil, "", errs.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Allocate(netip.MustParsePrefix(tt.subnet), tt.used)
			if tt.class != nil {
				if !errors.Is(err, tt.class) {
					t.Fatalf("Allocate = %v, %v; want class %v", got, err, tt.class)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("Allocate = %v, %v; want %s", got, err, tt.want)
			}
		})
	}
	_, err := Allocate(netip.MustParsePrefix("10.0.0.0/30"), full30)
	if got, want := err.Error(), "out of addresses in 10.0.0.0/30"; got != want {
		t.Errorf("error text %q, want %q", got, want)
	}
}

func rangeAddrs(first string, n int) []netip.Addr {
	a := netip.MustParseAddr(first)
	out := make([]netip.Addr, 0, n)
	for range n {
		out = append(out, a)
		a = a.Next()
	}
	return out
}

func TestMAC(t *testing.T) {
	seen := map[string]string{}
	for _, id := range []string{"0123456789ab", "0123456789ac", "a", "zzzzzzzzzzzz"} {
		m := MAC(id)
		if len(m) != 6 || m[0]&0x02 == 0 || m[0]&0x01 != 0 {
			t.Errorf("MAC(%q) = %s: want locally administered unicast", id, m)
		}
		if MAC(id).String() != m.String() {
			t.Errorf("MAC(%q) not stable", id)
		}
		if other, ok := seen[m.String()]; ok {
			t.Errorf("MAC(%q) = MAC(%q) = %s", id, other, m)
		}
		seen[m.String()] = id
	}
	if got, want := MAC("0123456789ab").String(), MAC("0123456789ab").String(); got != want {
		t.Errorf("unstable")
	}
}

func TestTAPName(t *testing.T) {
	tests := []struct {
		id, want string
		ok       bool
	}{
		{"0123456789ab", "mn0123456789ab", true},
		{"abcdefghijklm", "mnabcdefghijklm", true},
		{"abcdefghijklmn", "", false},
		{"", "", false},
		{"ABC", "", false},
		{"a/b", "", false},
		{"a b", "", false},
	}
	for _, tt := range tests {
		got, err := TAPName(tt.id)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("TAPName(%q) = %q, %v; want %q ok=%v", tt.id, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("TAPName(%q) error class %v", tt.id, errs.ClassOf(err))
		}
		if len(got) > 15 {
			t.Errorf("TAPName(%q) = %q longer than 15", tt.id, got)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	mod := func(f func(*Config)) Config { c := DefaultConfig(); f(&c); return c }
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"default", DefaultConfig(), true},
		{"host ports", mod(func(c *Config) { c.HostPorts = []uint16{22, 443} }), true},
		{"long bridge", mod(func(c *Config) { c.Bridge = "abcdefghijklmnop" }), false},
		{"bridge slash", mod(func(c *Config) { c.Bridge = "a/b" }), false},
		{"empty bridge", mod(func(c *Config) { c.Bridge = "" }), false},
		{"ipv6 subnet", mod(func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") }), false},
		{"host bits", mod(func(c *Config) { c.Subnet = netip.MustParsePrefix("10.210.0.1/16") }), false},
		{"slash 31", mod(func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.0/31") }), false},
		{"no subnet", mod(func(c *Config) { c.Subnet = netip.Prefix{} }), false},
		{"bad table", mod(func(c *Config) { c.Table = "a b" }), false},
		{"port zero", mod(func(c *Config) { c.HostPorts = []uint16{0} }), false},
		{"dup port", mod(func(c *Config) { c.HostPorts = []uint16{22, 22} }), false},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if tt.ok != (err == nil) {
			t.Errorf("%s: Validate = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("%s: class %v", tt.name, errs.ClassOf(err))
		}
	}
	if gw := DefaultConfig().Gateway(); gw != netip.MustParseAddr("10.210.0.1") {
		t.Errorf("gateway %s", gw)
	}
}

func TestPortValidate(t *testing.T) {
	sub := DefaultSubnet
	good := Port{TAP: "mnabc", IP: netip.MustParseAddr("10.210.0.2"), MAC: MAC("abc")}
	tests := []struct {
		name string
		p    Port
		ok   bool
	}{
		{"good", good, true},
		{"gateway", Port{good.TAP, netip.MustParseAddr("10.210.0.1"), good.MAC}, false},
		{"network", Port{good.TAP, netip.MustParseAddr("10.210.0.0"), good.MAC}, false},
		{"broadcast", Port{good.TAP, netip.MustParseAddr("10.210.255.255"), good.MAC}, false},
		{"outside", Port{good.TAP, netip.MustParseAddr("10.211.0.2"), good.MAC}, false},
		{"multicast mac", Port{good.TAP, good.IP, []byte{1, 0, 0x5e, 0, 0, 1}}, false},
		{"short mac", Port{good.TAP, good.IP, []byte{2, 0, 0}}, false},
		{"long tap", Port{"mnabcdefghijklmn", good.IP, good.MAC}, false},
		{"no prefix", Port{"tap0", good.IP, good.MAC}, false},
		{"only prefix", Port{"mn", good.IP, good.MAC}, false},
	}
	for _, tt := range tests {
		if err := tt.p.Validate(sub); tt.ok != (err == nil) {
			t.Errorf("%s: Validate = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}
