package network

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
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
