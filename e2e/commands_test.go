package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDoctor: `minions doctor --json` answers one entry per check with
// what, ok and detail, exits 0 even when some checks fail (it reports, it
// does not judge), and on this installation finds what the other tests
// use: QEMU, the guest agent, the kernel and the minimal image.
func TestDoctor(t *testing.T) {
	setup(t)
	r := minions(t, "", "doctor", "--json")
	if r.code != 0 {
		t.Fatalf("doctor --json: %s", r)
	}
	var raw []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || len(raw) == 0 {
		t.Fatalf("doctor --json output %q: %v", r.stdout, err)
	}
	got := map[string]bool{}
	for _, c := range raw {
		what, ok1 := c["what"].(string)
		ok, ok2 := c["ok"].(bool)
		_, ok3 := c["detail"].(string)
		if !ok1 || !ok2 || !ok3 || what == "" {
			t.Fatalf("doctor entry without what/ok/detail: %v", c)
		}
		got[what] = ok
	}
	for _, what := range []string{"kvm", "hypervisor", "qemu-system-x86_64", "qemu-img", "mkfs.ext4", "agent channel",
		"guest agent", "guest kernel", "images", "default image"} {
		ok, present := got[what]
		if !present {
			t.Errorf("doctor has no %q check: %v", what, got)
			continue
		}
		if what != "kvm" && !ok { // this host has no usable KVM; the rest is set up
			t.Errorf("doctor: %q not ok on the test installation:\n%s", what, r.stdout)
		}
	}
	// The text form marks the failing lines and says so on stderr.
	txt := minions(t, "", "doctor")
	if txt.code != 0 || !strings.Contains(txt.stdout, "guest kernel") {
		t.Fatalf("doctor: %s", txt)
	}
	bad := 0
	for _, ok := range got {
		if !ok {
			bad++
		}
	}
	if bad > 0 && !strings.Contains(txt.stderr, "need attention") {
		t.Fatalf("doctor with %d failing checks says nothing on stderr: %s", bad, txt)
	}
}

// TestHostCommands boots one VM and drives the host-side commands that
// talk to it directly: `minions ssh` in a real terminal, `minions vsock`
// ping/status/exec, and `minions image bake` next to a VM using the image.
func TestHostCommands(t *testing.T) {
	setup(t)
	var v vmJSON
	mustJSON(t, &v, "create", "hostcmds", "--memory", "256")
	defer minions(t, "", "destroy", "hostcmds", "--yes")

	t.Run("ssh", func(t *testing.T) {
		// A shell around the client reports its exit status on the screen
		// (tmux's pane_dead_status is empty when a pane's process dies by a
		// signal, or when the pane is reaped before it is read).
		term := openTerminal(t, t.TempDir(), 100, 30, "sh", "-c",
			`MINIONS_STATE_DIR="$1" "$2" ssh hostcmds; echo "minions-ssh-exit=$?"; sleep 3600`,
			"sh", stateDir, filepath.Join(binDir, "minions"))
		term.waitText(60*time.Second, "#")
		// A PTY of the terminal's size, the VM's shell, typed input.
		term.typ("stty size; hostname; echo sum-$((6*7))")
		term.keys("Enter")
		term.waitText(30*time.Second, "30 100", "\nhostcmds", "sum-42")
		// The window size follows the terminal.
		term.tmux("resize-window", "-t", "t", "-x", "120", "-y", "40")
		term.typ("clear; stty size")
		term.keys("Enter")
		term.waitText(30*time.Second, "40 120")
		// The guest shell's exit status is the command's.
		term.typ("exit 7")
		term.keys("Enter")
		term.waitText(30*time.Second, "minions-ssh-exit=7")
		if r := minions(t, "", "ssh", "no-such-vm"); r.code != 3 {
			t.Fatalf("ssh to a missing vm: %s", r)
		}
	})

	t.Run("vsock", func(t *testing.T) {
		out := must(t, "vsock", "hostcmds", "ping")
		if !strings.HasPrefix(out, "pong from agent ") || !strings.Contains(out, "boot ") {
			t.Fatalf("vsock ping: %q", out)
		}
		var st struct {
			Hostname  string   `json:"hostname"`
			Kernel    string   `json:"kernel"`
			UptimeS   float64  `json:"uptime_s"`
			MemTotal  uint64   `json:"mem_total"`
			DiskTotal uint64   `json:"disk_total"`
			Addrs     []string `json:"addrs"`
		}
		out = must(t, "vsock", "hostcmds", "status")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("vsock status %q: %v", out, err)
		}
		if st.Hostname != "hostcmds" || st.Kernel == "" || st.UptimeS <= 0 || st.MemTotal < 128<<20 || st.MemTotal > 256<<20 ||
			st.DiskTotal == 0 || !strings.Contains(strings.Join(st.Addrs, " "), v.IP) {
			t.Fatalf("vsock status: %+v (vm %+v)", st, v)
		}
		if out := must(t, "vsock", "hostcmds", "exec", "echo", "via", "agent"); out != "via agent\n" {
			t.Fatalf("vsock exec: %q", out)
		}
		if r := minions(t, "", "vsock", "hostcmds", "exec", "exit 5"); r.code == 0 {
			t.Fatalf("vsock exec of a failing command: %s", r)
		}
		if r := minions(t, "", "vsock", "hostcmds", "frobnicate"); r.code != 2 {
			t.Fatalf("vsock with an unknown verb: %s", r)
		}
		if r := minions(t, "", "vsock", "no-such-vm", "ping"); r.code != 3 {
			t.Fatalf("vsock to a missing vm: %s", r)
		}
	})

	t.Run("image-bake", func(t *testing.T) {
		type imageJSON struct {
			Ref         string `json:"ref"`
			OS          string `json:"os"`
			Version     string `json:"version"` // a sortable timestamp
			AgentSHA256 string `json:"agent_sha256"`
			Path        string `json:"path"`
			Default     bool   `json:"default"`
		}
		var before []imageJSON
		mustJSON(t, &before, "image", "list")
		src := ""
		for _, im := range before {
			if im.OS == "minimal" && im.Version > src {
				src = im.Version
			}
		}
		if src == "" {
			t.Fatalf("no minimal image: %+v", before)
		}
		var srcPath string
		for _, im := range before {
			if im.OS == "minimal" && im.Version == src {
				srcPath = im.Path
			}
		}
		srcSum := fileSum(t, srcPath)
		var b imageJSON
		mustJSON(t, &b, "image", "bake", "minimal")
		defer minions(t, "", "image", "rm", b.Ref)
		if b.OS != "minimal" || b.Version <= src || b.AgentSHA256 != fileSum(t, filepath.Join(binDir, "minions-agent")) {
			t.Fatalf("image bake: %+v (source minimal@%s)", b, src)
		}
		if fileSum(t, srcPath) != srcSum {
			t.Fatal("bake changed the source image")
		}
		var after []imageJSON
		mustJSON(t, &after, "image", "list")
		if len(after) != len(before)+1 {
			t.Fatalf("image list after bake: %+v", after)
		}
		// The VM made from the source image is untouched and still runs.
		if out := must(t, "exec", "hostcmds", "echo", "still"); out != "still\n" {
			t.Fatalf("vm after bake: %q", out)
		}
		if r := minions(t, "", "image", "bake", "no-such-image"); r.code != 3 && r.code != 2 {
			t.Fatalf("bake of a missing image: %s", r)
		}
		must(t, "image", "rm", b.Ref)
		var final []imageJSON
		mustJSON(t, &final, "image", "list")
		if len(final) != len(before) {
			t.Fatalf("image list after rm of the baked version: %+v", final)
		}
	})
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
