package announce

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/creack/pty"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/internal/errs"
)

func TestLogFormat(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	file, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	var buf bytes.Buffer
	for _, c := range []struct {
		name, format string
		w            any
		want         string
	}{
		{"auto on a terminal", "", tty, LogText},
		{"auto on a terminal, spelled out", "auto", tty, LogText},
		{"auto to a file", "", file, LogJSON},
		{"auto to a buffer", "auto", &buf, LogJSON},
		{"text to a file", "text", file, LogText},
		{"json on a terminal", "json", tty, LogJSON},
	} {
		var got string
		var err error
		switch w := c.w.(type) {
		case *os.File:
			got, err = Format(c.format, w)
		case *bytes.Buffer:
			got, err = Format(c.format, w)
		}
		if err != nil || got != c.want {
			t.Errorf("%s: Format(%q) = %q, %v; want %q", c.name, c.format, got, err, c.want)
		}
	}
	if _, err := Format("xml", tty); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("Format(xml) = %v, want InvalidArgument", err)
	}
	cfg := config.Config{LogFormat: "pretty"}
	cfg.Defaults()
	if err := cfg.Validate(); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("config log_format pretty: %v, want InvalidArgument", err)
	}

	// The text logger writes key=value lines, the JSON one objects.
	var text, js bytes.Buffer
	NewLogger(&text, LogText).Info("proxy listening", "http", "127.0.0.1:8080")
	NewLogger(&js, LogJSON).Info("proxy listening", "http", "127.0.0.1:8080")
	if !strings.Contains(text.String(), `level=INFO msg="proxy listening" http=127.0.0.1:8080`) || strings.HasPrefix(text.String(), "{") {
		t.Errorf("text log line: %q", text.String())
	}
	var rec map[string]any
	if err := json.Unmarshal(js.Bytes(), &rec); err != nil || rec["msg"] != "proxy listening" {
		t.Errorf("json log line %q: %v", js.String(), err)
	}
}

func TestBanner(t *testing.T) {
	paths := struct{ State, Run string }{"/var/lib/minions", "/run/minions"}
	in := Input{Version: "v1", PublicIP: "203.0.113.7", SSH: "0.0.0.0:2222", API: "127.0.0.1:3000",
		Socket: "/run/minions/minions.sock", Metrics: "127.0.0.1:9090", StateDir: paths.State, RunDir: paths.Run,
		Proxy: Proxy{Domain: "example.com", HTTPSPort: 443, HTTPPort: 80}}
	var out bytes.Buffer
	b := NewBanner(in)
	b.print(&out)
	for _, want := range []string{
		"Minions v1 is ready.",
		"dashboard  ssh -p 2222 203.0.113.7\n",
		"VM shell   ssh -p 2222 VM@203.0.113.7\n",
		"HTTP API   http://127.0.0.1:3000 (and the unix socket /run/minions/minions.sock)\n",
		"web proxy  https://VM.example.com\n",
		"DNS        A records example.com and *.example.com -> 203.0.113.7\n",
		"metrics    http://127.0.0.1:9090/metrics\n",
		"state      /var/lib/minions\n",
		"runtime    /run/minions\n",
		"logs       stderr",
		"warning: KVM is not usable here",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("banner lacks %q:\n%s", want, out.String())
		}
	}

	// Local mode, SSH on one address, KVM, under systemd, no public IP.
	in = Input{Version: "v1", SSH: "192.0.2.5:22", Socket: "/s", StateDir: paths.State, RunDir: paths.Run, KVM: true, Systemd: true,
		Proxy: Proxy{HTTPPort: 8080}, API: "0.0.0.0:3000"}
	b = NewBanner(in)
	if b.Host != "192.0.2.5" || b.Dashboard != "ssh 192.0.2.5" || b.VMShell != "ssh VM@192.0.2.5" ||
		b.Proxy != "http://VM.localhost:8080" || b.DNS != "" || b.Warning != "" ||
		b.Logs != "journalctl -u minions" || b.API != "http://192.0.2.5:3000" {
		t.Errorf("local banner: %+v", b)
	}
	// An API served over TLS is an https URL.
	in.APITLS = true
	if b = NewBanner(in); b.API != "https://192.0.2.5:3000" {
		t.Errorf("tls api in the banner: %q", b.API)
	}
	// A domain without --public-ip says where the records must point.
	b = NewBanner(Input{SSH: "0.0.0.0:2222", Proxy: Proxy{Domain: "example.com", HTTPSPort: 8443}, StateDir: paths.State, RunDir: paths.Run})
	if b.Proxy != "https://VM.example.com:8443" || !strings.Contains(b.DNS, "-> this host's public IP (pass --public-ip") {
		t.Errorf("banner without public ip: %+v", b)
	}
	if host, _ := os.Hostname(); host != "" && b.Host != host {
		t.Errorf("host without public ip on 0.0.0.0 = %q, want the host name %q", b.Host, host)
	}

	// Not on a terminal: one structured record.
	var js bytes.Buffer
	NewBanner(Input{Version: "v1", PublicIP: "203.0.113.7", SSH: "0.0.0.0:2222", StateDir: paths.State, RunDir: paths.Run}).
		Announce(NewLogger(&js, LogJSON), &js, LogJSON)
	var rec map[string]any
	if err := json.Unmarshal(js.Bytes(), &rec); err != nil {
		t.Fatalf("banner as json %q: %v", js.String(), err)
	}
	if rec["msg"] != "minions ready" || rec["host"] != "203.0.113.7" || rec["dashboard"] != "ssh -p 2222 203.0.113.7" || rec["state_dir"] != "/var/lib/minions" {
		t.Errorf("banner record: %v", rec)
	}
}
