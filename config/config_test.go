package config

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
	c, err := Load(path, true)
	if err != nil {
		return c, err
	}
	c.Defaults()
	return c, c.Validate()
}

// dns and egress_allow come from the file as the network wants them.
func TestConfigEgress(t *testing.T) {
	c, err := loadTOML(t, `
dns = "192.168.1.53"
egress_allow = ["172.31.9.9", "10.1.0.0/16 tcp/5432"]
`)
	if err != nil {
		t.Fatal(err)
	}
	dns, allow, err := c.Egress()
	if err != nil || dns.String() != "192.168.1.53" || len(allow) != 2 ||
		allow[0].String() != "172.31.9.9/32" || allow[1].String() != "10.1.0.0/16 tcp/5432" {
		t.Fatalf("egress: dns %v, allow %v, %v", dns, allow, err)
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

// TestConfigJailAndSandbox: both default to on; only known values pass.
func TestConfigJailAndSandbox(t *testing.T) {
	var c Config
	c.Defaults()
	if c.Jail != "on" || c.Sandbox != "on" || c.Validate() != nil {
		t.Fatalf("defaults: jail %q sandbox %q: %v", c.Jail, c.Sandbox, c.Validate())
	}
	for _, bad := range []Config{{Jail: "auto"}, {Sandbox: "maybe"}} {
		bad.Defaults()
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	off := Config{Jail: "off", Sandbox: "off"}
	off.Defaults()
	if err := off.Validate(); err != nil {
		t.Errorf("off: %v", err)
	}
	low := Config{JailUIDBase: 100}
	low.Defaults()
	if err := low.Validate(); err == nil {
		t.Error("jail_uid_base 100 (system uids) accepted")
	}
	if j := (&Config{JailUIDBase: 500000, JailMemoryOverheadMiB: 64}).JailConfig(); j.UIDBase != 500000 || j.MemoryOverheadMiB != 64 {
		t.Errorf("jail config %+v", j)
	}
}

func TestConfigPublicIP(t *testing.T) {
	for ip, ok := range map[string]bool{"": true, "203.0.113.7": true, "2001:db8::1": true, "example.com": false, "1.2.3": false} {
		cfg := Config{PublicIP: ip}
		cfg.Defaults()
		if err := cfg.Validate(); (err == nil) != ok {
			t.Errorf("public_ip %q: %v", ip, err)
		}
	}
}
