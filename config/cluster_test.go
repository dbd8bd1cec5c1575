package config

import (
	"errors"
	"flag"
	"net"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
)

// TestClusterSubnet: cluster_subnet defaults to 10.88.0.0/16, is parsed
// into the hosts' range, and one overlapping the control plane's own
// subnet (or not carvable into /24s) is refused with the fix in the
// message.
func TestClusterSubnet(t *testing.T) {
	c, err := loadTOML(t, ``)
	if err != nil || c.ClusterSubnet != "10.88.0.0/16" || c.ClusterPrefix().String() != "10.88.0.0/16" {
		t.Fatalf("default: %q %v", c.ClusterSubnet, err)
	}
	c, err = loadTOML(t, `cluster_subnet = "10.99.0.0/20"`)
	if err != nil || c.ClusterPrefix().String() != "10.99.0.0/20" {
		t.Fatalf("set: %q %v", c.ClusterSubnet, err)
	}
	for _, tc := range []struct{ toml, has string }{
		{"subnet = \"10.88.4.0/24\"", "overlaps subnet 10.88.4.0/24"},
		{"subnet = \"10.0.0.0/8\"\ncluster_subnet = \"10.50.0.0/16\"", "overlaps"},
		{"cluster_subnet = \"10.99.0.0/25\"", "/24 or larger"},
		{"cluster_subnet = \"10.99.0.0\"", "cluster_subnet"},
		{"cluster_subnet = \"fd00::/48\"", "IPv4"},
	} {
		_, err := loadTOML(t, tc.toml)
		if !errors.Is(err, errs.InvalidArgument) || !strings.Contains(err.Error(), tc.has) {
			t.Errorf("%s: %v, want %q", tc.toml, err, tc.has)
		}
	}
}

// TestJoinReach: a join command naming an address other hosts reach is
// refused while the API or the fabric listens on loopback only; a
// loopback advertise address (one machine) is fine.
func TestJoinReach(t *testing.T) {
	tcp := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	for _, tc := range []struct {
		name      string
		cfg       Config
		api, nats net.Addr
		has       string // "" : no problem
	}{
		{name: "one machine", cfg: Config{}, api: tcp("127.0.0.1:3000"), nats: tcp("127.0.0.1:4222")},
		{name: "advertised, all listening", cfg: Config{Advertise: "203.0.113.7"}, api: tcp("0.0.0.0:3000"), nats: tcp("[::]:4222")},
		{name: "public ip, listening there", cfg: Config{PublicIP: "203.0.113.7"}, api: tcp("203.0.113.7:3000"), nats: tcp("203.0.113.7:4222")},
		{name: "api on loopback", cfg: Config{Advertise: "203.0.113.7"}, api: tcp("127.0.0.1:3000"), nats: tcp("0.0.0.0:4222"),
			has: `the API listens on 127.0.0.1:3000 only: other hosts cannot reach http://203.0.113.7:3000; set bind = "0.0.0.0:3000"`},
		{name: "nats on loopback", cfg: Config{PublicIP: "203.0.113.7"}, api: tcp("0.0.0.0:3000"), nats: tcp("127.0.0.1:4222"),
			has: `set nats_bind = "0.0.0.0:4222"`},
		{name: "external nats", cfg: Config{Advertise: "cp.example.com"}, api: tcp("0.0.0.0:3000"), nats: nil},
		{name: "no api", cfg: Config{Advertise: "203.0.113.7"}, api: nil, nats: tcp("0.0.0.0:4222")},
	} {
		got := tc.cfg.JoinReach(tc.api, tc.nats)
		if tc.has == "" && got != "" || tc.has != "" && !strings.Contains(got, tc.has) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.has)
		}
	}
}

// TestClusterSubnetFlag: serve's --cluster-subnet sets the range, and one
// overlapping --subnet is refused.
func TestClusterSubnetFlag(t *testing.T) {
	conf := writeFile(t, "config.toml", "")
	parse := func(args ...string) (Config, error) {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		ServeFlags(fs)
		if err := fs.Parse(append([]string{"--config", conf}, args...)); err != nil {
			t.Fatal(err)
		}
		return Effective(fs, "", "")
	}
	if c, err := parse("--cluster-subnet", "10.99.0.0/18"); err != nil || c.ClusterPrefix().String() != "10.99.0.0/18" {
		t.Fatalf("--cluster-subnet: %q %v", c.ClusterSubnet, err)
	}
	if _, err := parse("--cluster-subnet", "10.210.8.0/21"); !errors.Is(err, errs.InvalidArgument) || !strings.Contains(err.Error(), "overlaps subnet 10.210.0.0/16") {
		t.Fatalf("overlapping the default subnet: %v", err)
	}
}
