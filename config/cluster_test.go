package config

import (
	"errors"
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
