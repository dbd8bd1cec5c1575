package main

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestNoRegexpAtInit: every package of this module is linked into the one
// minions binary, so a regular expression compiled in a package-level
// variable is compiled at every start of every command (`minions version`
// included). Counted repetitions are the costly kind: `{0,127}` compiled
// into about a thousand allocations. Compile them on first use
// (sync.OnceValue); GODEBUG=inittrace=1 shows what is left (docs/costs.md).
func TestNoRegexpAtInit(t *testing.T) {
	atInit := regexp.MustCompile(`(?m)^(var\s+\w+|\t\w+)\s*=\s*regexp\.MustCompile\(`)
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "e2e" || strings.HasPrefix(d.Name(), ".")) && path != "." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range atInit.FindAll(b, -1) {
			t.Errorf("%s: %s...: a regular expression compiled at package init (make it lazy)", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// heavyAtStart are modules that once came into the minions binary for
// little and ran their package init at every start of every command
// (`minions create` included, before QEMU runs): a cgroup library and what
// it pulled in (protobuf, eBPF, D-Bus, logrus). vm/jail writes the cgroup
// file system itself. Then what only the daemon needs: the NATS server and
// client (fabric), the SSH front door and the dashboard (wish, Bubble
// Tea), the HTTPS proxy with its ACME client and DNS providers (certmagic,
// acmez, zap, miekg/dns): the lean minions binary does not link them
// (minions-daemon does).
var heavyAtStart = []string{
	"github.com/nats-io/nats-server",
	"github.com/nats-io/nats.go",
	"github.com/charmbracelet/wish",
	"github.com/charmbracelet/bubbletea",
	"github.com/charmbracelet/lipgloss",
	"github.com/caddyserver/certmagic",
	"github.com/mholt/acmez",
	"go.uber.org/zap",
	"github.com/miekg/dns",
	"github.com/minionsdev/minions/proxy",
	"github.com/containerd/cgroups",
	"github.com/cilium/ebpf",
	"google.golang.org/protobuf",
	"github.com/godbus/dbus",
	"github.com/sirupsen/logrus",
	"github.com/coreos/go-systemd",
}

// Start-up budget of the minions binary, from GODEBUG=inittrace=1: the
// packages whose init does work and what those inits allocate. Measured
// 2026-12-06 (this test binary: main's imports plus testing's): 134
// packages, 130 KB since the lean binary hands the daemon's commands to
// minions-daemon and config no longer links the proxy (before: 191
// packages, 655 KB; before vm/jail dropped containerd/cgroups: 220).
// Raise them only for a dependency worth its cost at every command's
// start (docs/costs.md).
const (
	maxInitPackages = 138
	maxInitBytes    = 140 << 10
)

// TestStartupInits runs this test binary (it links everything main
// imports) again with GODEBUG=inittrace=1 and holds the package inits to
// the budget above; none of heavyAtStart may be linked at all.
func TestStartupInits(t *testing.T) {
	if os.Getenv("MINIONS_INITTRACE_CHILD") != "" {
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestStartupInits$")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1", "MINIONS_INITTRACE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	line := regexp.MustCompile(`(?m)^init (\S+) @\S+ ms, \S+ ms clock, (\d+) bytes, \d+ allocs$`)
	pkgs, bytes := 0, 0
	for _, m := range line.FindAllStringSubmatch(string(out), -1) {
		pkgs++
		n, _ := strconv.Atoi(m[2])
		bytes += n
		for _, h := range heavyAtStart {
			if m[1] == h || strings.HasPrefix(m[1], h+"/") {
				t.Errorf("package %s runs its init at every start (%s bytes): keep %s out of the binary", m[1], m[2], h)
			}
		}
	}
	if pkgs == 0 {
		t.Fatalf("no inittrace lines in:\n%s", out)
	}
	t.Logf("%d packages with init work, %d bytes allocated by them", pkgs, bytes)
	if pkgs > maxInitPackages {
		t.Errorf("%d packages run init work at start (budget %d)", pkgs, maxInitPackages)
	}
	if bytes > maxInitBytes {
		t.Errorf("package inits allocate %d bytes at start (budget %d)", bytes, maxInitBytes)
	}
}
