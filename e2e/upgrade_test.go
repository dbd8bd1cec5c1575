package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestUpgradeReadopt is issue 17's upgrade proof: a daemon from binary A
// runs two VMs; it is stopped with SIGTERM, the minions binary on disk is
// replaced by a newer build B (another version string, and a newer guest
// agent), and B's daemon re-adopts both VMs with the same QEMU processes;
// exec works in both through their old agents; `status` says the agent is
// older than the host's and is upgraded on the next restart; after a
// restart the VM runs the new agent and the warning is gone.
func TestUpgradeReadopt(t *testing.T) {
	setup(t)
	const next = "vNEXT-upgrade-test"
	bin := filepath.Join(binDir, "minions")
	daemonA := filepath.Join(binDir, "minions-daemon")
	agentA := filepath.Join(binDir, "minions-agent")

	// Build B before touching anything: the main binary and an agent with
	// the new version, in a scratch directory next to the real ones.
	scratch := t.TempDir()
	newBin, newAgent := filepath.Join(scratch, "minions"), filepath.Join(scratch, "minions-agent")
	newDaemon := filepath.Join(scratch, "minions-daemon")
	for _, b := range [][3]string{
		{newBin, ".", "-X github.com/minionsdev/minions/cli.Version=" + next},
		{newDaemon, "./cmd/minions-daemon", "-X github.com/minionsdev/minions/cli.Version=" + next},
		{newAgent, "./guestagent/cmd/minions-agent", "-X github.com/minionsdev/minions/guestagent.Version=" + next},
	} {
		cmd := exec.Command("go", "build", "-ldflags", b[2], "-o", b[0], b[1])
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b[1], err, out)
		}
	}
	// Keep A's binaries to put back for the other tests in this run.
	for _, p := range []string{bin, daemonA, agentA} {
		saved := p + ".a"
		if err := os.Link(p, saved); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Rename(saved, p) })
	}

	d := runDaemonForTest(t, freePort(t))
	defer func() { d.stop(t, syscall.SIGTERM) }()
	names := []string{"up1", "up2"}
	before := map[string]vmJSON{}
	for _, n := range names {
		var v vmJSON
		mustJSON(t, &v, "create", n, "--memory", "256")
		defer minions(t, "", "destroy", n, "--yes")
		before[n] = v
	}
	var st agentStatusJSON
	mustJSON(t, &st, "status", "up1")
	if st.AgentOutdated || st.AgentWarning != "" {
		t.Fatalf("same agent as the host reported outdated: %+v", st)
	}
	old := st.AgentVersion

	d.stop(t, syscall.SIGTERM)
	// Replace the binaries the way a package manager does: new files
	// renamed over the old paths (the relays still run the old inode).
	for _, p := range [][2]string{{newBin, bin}, {newDaemon, daemonA}, {newAgent, agentA}} {
		copyFile(t, p[0], p[1]+".new", 0o755)
		if err := os.Rename(p[1]+".new", p[1]); err != nil {
			t.Fatal(err)
		}
	}
	d = runDaemonForTest(t, freePort(t))

	var ver map[string]any
	mustJSON(t, &ver, "version")
	if ver["version"] != next {
		t.Fatalf("version after the upgrade: %v", ver)
	}
	var after []vmJSON
	mustJSON(t, &after, "list")
	for _, n := range names {
		found := false
		for _, v := range after {
			if v.Name == n {
				found = true
				if v.Status != "running" || v.PID != before[n].PID || v.IP != before[n].IP {
					t.Errorf("%s after the upgrade: %+v, before %+v", n, v, before[n])
				}
			}
		}
		if !found {
			t.Errorf("%s not listed after the upgrade: %+v", n, after)
		}
		if out := must(t, "exec", n, "--", "echo", "hi-"+n); strings.TrimSpace(out) != "hi-"+n {
			t.Errorf("exec in %s after the upgrade: %q", n, out)
		}
		st = agentStatusJSON{}
		mustJSON(t, &st, "status", n)
		if st.AgentVersion != old || !st.AgentOutdated || !strings.Contains(st.AgentWarning, "upgraded on the next restart") {
			t.Errorf("status of %s with an old agent: %+v", n, st)
		}
	}
	if r := minions(t, "", "status", "up1"); !strings.Contains(r.stdout+r.stderr, "older than the host's") {
		t.Errorf("status without --json shows no warning: %s", r)
	}
	if t.Failed() {
		t.Fatalf("daemon log:\n%s", tail(d.log.String(), 40))
	}

	// The next restart boots the new agent.
	must(t, "restart", "up2")
	st = agentStatusJSON{}
	mustJSON(t, &st, "status", "up2")
	if st.AgentVersion != next || st.AgentOutdated || st.AgentWarning != "" {
		t.Errorf("status after restart: %+v", st)
	}
	if out := must(t, "exec", "up2", "--", "echo", "ok"); strings.TrimSpace(out) != "ok" {
		t.Errorf("exec after restart: %q", out)
	}
}

type agentStatusJSON struct {
	AgentVersion  string `json:"agent_version"`
	AgentOutdated bool   `json:"agent_outdated"`
	AgentWarning  string `json:"agent_warning"`
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}
