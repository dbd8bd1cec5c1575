package network

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from golden (run with -update after checking):\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func testPorts() []Port {
	return []Port{
		{TAP: "mn0000000000b2", IP: netip.MustParseAddr("10.210.0.3"), MAC: MAC("0000000000b2")},
		{TAP: "mn0000000000a1", IP: netip.MustParseAddr("10.210.0.2"), MAC: MAC("0000000000a1")},
	}
}

func TestRulesetGolden(t *testing.T) {
	custom := Config{
		Bridge: "br-test", Subnet: netip.MustParsePrefix("192.168.50.0/24"), Table: "mtest",
		UplinkNAT: false, HostPorts: []uint16{8443, 22},
	}
	tests := []struct {
		file  string
		cfg   Config
		ports []Port
	}{
		{"default.nft", DefaultConfig(), nil},
		{"default_ports.nft", DefaultConfig(), testPorts()},
		{"custom_nonat.nft", custom, []Port{{TAP: "mnx", IP: netip.MustParseAddr("192.168.50.9"), MAC: MAC("x")}}},
		{"egress.nft", egressConfig(t), nil},
		{"egress_dns_gateway.nft", func() Config { c := DefaultConfig(); c.DNS = c.Gateway(); return c }(), nil},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			if err := tt.cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			golden(t, tt.file, Ruleset(tt.cfg, tt.ports))
		})
	}
}

// Every rule's comment differs when its text differs, and the rendering
// is independent of the order ports are given in.
func TestRulesetStable(t *testing.T) {
	p := testPorts()
	a := Ruleset(DefaultConfig(), p)
	b := Ruleset(DefaultConfig(), []Port{p[1], p[0]})
	if a != b {
		t.Errorf("port order changes the ruleset")
	}
	seen := map[string]string{}
	for _, tb := range desiredTables(DefaultConfig(), p) {
		for _, c := range tb.chains {
			for _, r := range c.rules {
				if prev, ok := seen[r.comment()]; ok && prev != r.text {
					t.Errorf("comment collision %q / %q", prev, r.text)
				}
				seen[r.comment()] = r.text
			}
		}
	}
}

// egressConfig has a nameserver on the host's LAN and an allow-list with
// each form of rule.
func egressConfig(t *testing.T) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DNS = netip.MustParseAddr("192.168.1.53")
	for _, s := range []string{"172.31.9.9", "10.1.0.0/16 tcp/5432", "100.64.1.1 udp", "169.254.169.254/32 tcp/80"} {
		r, err := ParseEgressRule(s)
		if err != nil {
			t.Fatal(err)
		}
		cfg.EgressAllow = append(cfg.EgressAllow, r)
	}
	return cfg
}

// The default ruleset refuses every address in DeniedEgress from the
// bridge before it accepts the rest, and nothing in the host's input chain
// is open to the bridge but replies, ping and HostPorts on the gateway.
func TestRulesetDeniesPrivateEgress(t *testing.T) {
	rs := Ruleset(DefaultConfig(), nil)
	fwd := rs[strings.Index(rs, "chain forward"):]
	accept := strings.Index(fwd, `iifname "minions0" ip saddr 10.210.0.0/16 accept`)
	if accept < 0 {
		t.Fatalf("no accept of the vm subnet in forward:\n%s", fwd)
	}
	for _, want := range []string{"169.254.169.254", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "224.0.0.0/4", "127.0.0.0/8"} {
		p := DeniedEgress[slices.IndexFunc(DeniedEgress, func(p netip.Prefix) bool {
			a, err := netip.ParseAddr(want)
			if err != nil {
				return p == netip.MustParsePrefix(want)
			}
			return p.Contains(a)
		})]
		rule := fmt.Sprintf(`iifname "minions0" ip daddr %s counter reject`, p)
		if i := strings.Index(fwd, rule); i < 0 || i > accept {
			t.Errorf("%s: %q missing or after the accept:\n%s", want, rule, fwd)
		}
	}
	in := rs[strings.Index(rs, "chain input"):strings.Index(rs, "chain forward")]
	if n := strings.Count(in, " accept\n"); n != 3 {
		t.Errorf("input chain accepts %d kinds of packet from the bridge, want 3:\n%s", n, in)
	}
}

func TestEgressRuleParse(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" means an error
	}{
		{"172.31.9.9", "172.31.9.9/32"},
		{" 10.1.0.0/16  tcp/5432 ", "10.1.0.0/16 tcp/5432"},
		{"100.64.1.1 udp", "100.64.1.1/32 udp"},
		{"10.1.0.1/16", ""},        // host bits
		{"fd00::1", ""},            // IPv6
		{"10.1.2.3 sctp", ""},      // protocol
		{"10.1.2.3 tcp/0", ""},     // port 0
		{"10.1.2.3 tcp/70000", ""}, // port range
		{"10.1.2.3 /53", ""},       // port without protocol
		{"", ""},
		{"10.1.2.3 tcp/1 x", ""},
		{"example.com", ""},
	} {
		r, err := ParseEgressRule(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("ParseEgressRule(%q) = %v, want an error", tc.in, r)
		case tc.want == "" && !errors.Is(err, errs.InvalidArgument):
			t.Errorf("ParseEgressRule(%q) error %v is not InvalidArgument", tc.in, err)
		case tc.want != "" && err != nil:
			t.Errorf("ParseEgressRule(%q): %v", tc.in, err)
		case tc.want != "" && r.String() != tc.want:
			t.Errorf("ParseEgressRule(%q) = %q, want %q", tc.in, r, tc.want)
		}
	}
}

func TestConfigValidateEgress(t *testing.T) {
	r, _ := ParseEgressRule("172.31.9.9")
	for name, mod := range map[string]func(*Config){
		"dns loopback":     func(c *Config) { c.DNS = netip.MustParseAddr("127.0.0.53") },
		"dns ipv6":         func(c *Config) { c.DNS = netip.MustParseAddr("fd00::53") },
		"dns a vm address": func(c *Config) { c.DNS = netip.MustParseAddr("10.210.0.9") },
		"duplicate rule":   func(c *Config) { c.EgressAllow = []EgressRule{r, r} },
		"invalid rule":     func(c *Config) { c.EgressAllow = []EgressRule{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Port: 53}} },
		"too many rules":   func(c *Config) { c.EgressAllow = make([]EgressRule, MaxEgressAllow+1) },
	} {
		c := DefaultConfig()
		mod(&c)
		if err := c.Validate(); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("%s: Validate = %v, want InvalidArgument", name, err)
		}
	}
	c := DefaultConfig()
	c.DNS = c.Gateway()
	c.EgressAllow = []EgressRule{r}
	if err := c.Validate(); err != nil {
		t.Errorf("gateway as dns: %v", err)
	}
}
