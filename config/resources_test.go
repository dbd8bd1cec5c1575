package config

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/vm/consolelog"
)

func loadConfigText(t *testing.T, text string) (Config, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(p, []byte(text), 0o600)
	c, err := Load(p, true)
	if err != nil {
		return c, err
	}
	c.Defaults()
	return c, c.Validate()
}

func TestResourceConfig(t *testing.T) {
	c, err := loadConfigText(t, "")
	if err != nil {
		t.Fatal(err)
	}
	r := c.Resources()
	if r.DefaultQuota != service.DefaultSignupQuota || r.MemoryOvercommit != 1.5 || r.ConsoleLogMaxBytes != consolelog.DefaultMaxBytes {
		t.Fatalf("defaults = %+v", r)
	}
	c, err = loadConfigText(t, "memory_overcommit = 1.0\nconsole_log_max_bytes = 1048576\n[default_quota]\nmax_vms = 2\nmax_memory_mib = 2048\n")
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Resources(); r.DefaultQuota != (service.Quota{MaxVMs: 2, MaxMemoryMiB: 2048}) || r.MemoryOvercommit != 1 || r.ConsoleLogMaxBytes != 1<<20 {
		t.Fatalf("configured = %+v", r)
	}
	c, err = loadConfigText(t, "placement = \"binpack\"\ncpu_overcommit = 2\n")
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Resources().Placement; p.Policy != "binpack" || p.CPUOvercommit != 2 || p.MemoryOvercommit != 1.5 {
		t.Fatalf("placement = %+v", p)
	}
	for _, bad := range []string{"placement = \"random\"\n", "cpu_overcommit = -2\n", "memory_overcommit = -1\n", "console_log_max_bytes = 100\n", "[default_quota]\nmax_vms = -1\n"} {
		if _, err := loadConfigText(t, bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}
