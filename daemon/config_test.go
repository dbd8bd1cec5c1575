package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
)

func loadTOML(t *testing.T, text string) (Config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path, true)
	if err != nil {
		return c, err
	}
	c.Defaults()
	return c, c.Validate()
}

// dns and egress_allow come from the file into the network Open builds.
func TestConfigEgress(t *testing.T) {
	c, err := loadTOML(t, `
dns = "192.168.1.53"
egress_allow = ["172.31.9.9", "10.1.0.0/16 tcp/5432"]
`)
	if err != nil {
		t.Fatal(err)
	}
	o := OpenOptions(c, Paths{}, nil)
	if o.DNS.String() != "192.168.1.53" || len(o.EgressAllow) != 2 ||
		o.EgressAllow[0].String() != "172.31.9.9/32" || o.EgressAllow[1].String() != "10.1.0.0/16 tcp/5432" {
		t.Fatalf("options: dns %v, egress %v", o.DNS, o.EgressAllow)
	}
	if out := c.TOML(); !strings.Contains(out, "egress_allow") || !strings.Contains(out, `"10.1.0.0/16 tcp/5432"`) {
		t.Errorf("config show lacks the allow-list:\n%s", out)
	}

	for _, bad := range []string{
		`dns = "resolver.example"`,
		`dns = "fd00::53"`,
		`egress_allow = ["10.1.0.1/16"]`,
		`egress_allow = ["10.1.2.3 sctp"]`,
		`egress_allow = ["10.1.2.3 tcp/99999"]`,
	} {
		if _, err := loadTOML(t, bad); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument", bad, err)
		}
	}
}
