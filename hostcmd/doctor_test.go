package hostcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minionsdev/minions/cli"
)

// runCLI runs the host CLI with this package's commands.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &cli.Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader(""), Getenv: func(string) string { return "" }, Extra: Commands()}
	code := cli.Run(context.Background(), env, args)
	return code, out.String(), errb.String()
}

func TestDoctorDNS(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "config.toml")
	os.WriteFile(conf, []byte("domain = \"vms.example.com\"\npublic_ip = \"198.51.100.4\"\n"), 0o644)
	dnsLine := func(t *testing.T, args ...string) check {
		t.Helper()
		code, out, errb := runCLI(t, append([]string{"doctor", "--json", "--state-dir", filepath.Join(dir, "s")}, args...)...)
		if code != 0 {
			t.Fatalf("doctor %v: exit %d: %s %s", args, code, out, errb)
		}
		var checks []check
		if err := json.Unmarshal([]byte(out), &checks); err != nil {
			t.Fatalf("doctor --json: %v\n%s", err, out)
		}
		for _, c := range checks {
			if c.What == "dns" {
				return c
			}
		}
		t.Fatalf("doctor has no dns line:\n%s", out)
		return check{}
	}
	c := dnsLine(t, "--config", "/dev/null", "--domain", "example.com", "--public-ip", "203.0.113.7")
	if !c.OK || c.Detail != "create A records example.com and *.example.com -> 203.0.113.7" {
		t.Errorf("with --public-ip: %+v", c)
	}
	c = dnsLine(t, "--config", conf)
	if !c.OK || c.Detail != "create A records vms.example.com and *.vms.example.com -> 198.51.100.4" {
		t.Errorf("from the config file: %+v", c)
	}
	c = dnsLine(t, "--config", conf, "--public-ip", "2001:db8::7")
	if !c.OK || c.Detail != "create AAAA records vms.example.com and *.vms.example.com -> 2001:db8::7" {
		t.Errorf("an IPv6 flag over the file: %+v", c)
	}
	c = dnsLine(t, "--config", "/dev/null", "--domain", "example.com")
	if c.OK || !strings.Contains(c.Detail, "pass --public-ip") {
		t.Errorf("a domain without a public IP: %+v", c)
	}
	c = dnsLine(t, "--config", "/dev/null")
	if !c.OK || !strings.Contains(c.Detail, "no domain") {
		t.Errorf("no domain: %+v", c)
	}
	if code, _, errb := runCLI(t, "doctor", "--config", "/dev/null", "--public-ip", "my-host"); code != 2 || !strings.Contains(errb, "want an IP address") {
		t.Errorf("doctor --public-ip my-host: exit %d %s", code, errb)
	}
}
