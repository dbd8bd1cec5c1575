package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

type snapJSON struct {
	Name      string `json:"name"`
	VM        string `json:"vm"`
	Memory    bool   `json:"memory"`
	SizeBytes int64  `json:"size_bytes"`
}

// TestSnapshotsResizeRenameCopy is issue 3's proof on real VMs.
func TestSnapshotsResizeRenameCopy(t *testing.T) {
	setup(t)
	var v vmJSON
	mustJSON(t, &v, "create", "snappy", "--memory", "256")
	defer func() { minions(t, "", "destroy", "snappy", "--yes"); minions(t, "", "destroy", "renamed", "--yes") }()

	t.Run("disk-snapshot-restore", func(t *testing.T) {
		must(t, "exec", "snappy", "--", "sh", "-c", "echo before > /root/state && sync")
		var s snapJSON
		mustJSON(t, &s, "snapshot", "create", "snappy", "--name", "one")
		if s.Name != "one" || s.Memory {
			t.Fatalf("snapshot: %+v", s)
		}
		must(t, "exec", "snappy", "--", "sh", "-c", "echo after > /root/state && sync")
		// Restore is destructive: without a terminal it wants --yes.
		if r := minions(t, "", "snapshot", "restore", "snappy", "one"); r.code == 0 || !strings.Contains(r.stderr, "--yes") {
			t.Fatalf("restore without --yes: %s", r)
		}
		if out := must(t, "exec", "snappy", "cat", "/root/state"); out != "after\n" {
			t.Fatalf("a refused restore changed the vm: %q", out)
		}
		must(t, "snapshot", "restore", "snappy", "one", "--yes")
		if out := must(t, "exec", "snappy", "cat", "/root/state"); out != "before\n" {
			t.Fatalf("after restore: %q", out)
		}
		// Names are validated and unique; a default name is a timestamp.
		if r := minions(t, "", "snapshot", "create", "snappy", "--name", "one"); r.code != 4 {
			t.Fatalf("duplicate snapshot name: %s", r)
		}
		if r := minions(t, "", "snapshot", "create", "snappy", "--name", "../x"); r.code != 2 {
			t.Fatalf("bad snapshot name: %s", r)
		}
		var d snapJSON
		mustJSON(t, &d, "snapshot", "create", "snappy")
		if _, err := time.Parse("20060102-150405", d.Name); err != nil {
			t.Fatalf("default snapshot name %q: %v", d.Name, err)
		}
		must(t, "snapshot", "delete", "snappy", d.Name)
	})

	t.Run("memory-snapshot-resumes-processes", func(t *testing.T) {
		must(t, "exec", "snappy", "--", "sh", "-c", "(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done) >/dev/null 2>&1 &")
		time.Sleep(1 * time.Second)
		var s snapJSON
		mustJSON(t, &s, "snapshot", "create", "snappy", "--name", "mem", "--memory")
		if !s.Memory {
			t.Fatalf("memory snapshot: %+v", s)
		}
		saved := counter(t, "snappy")
		time.Sleep(2 * time.Second)
		must(t, "snapshot", "restore", "snappy", "mem", "--yes")
		after := counter(t, "snappy")
		// /tmp is in memory: the counter continues from where it was
		// saved, not from where it ran to, and keeps counting.
		if after < saved || after > saved+8 {
			t.Fatalf("counter after restore = %d, saved around %d", after, saved)
		}
		time.Sleep(1 * time.Second)
		if again := counter(t, "snappy"); again <= after {
			t.Fatalf("counter stopped after restore: %d then %d", after, again)
		}
	})

	t.Run("resize-disk", func(t *testing.T) {
		if r := minions(t, "", "resize", "snappy", "--disk", "3"); r.code == 0 || !strings.Contains(r.stderr, "stopped") {
			t.Fatalf("resize of a running vm: %s", r)
		}
		must(t, "stop", "snappy")
		if r := minions(t, "", "resize", "snappy", "--disk", "1"); r.code != 2 || !strings.Contains(r.stderr, "only grow") {
			t.Fatalf("shrink: %s", r)
		}
		var v vmJSON
		mustJSON(t, &v, "resize", "snappy", "--disk", "4", "--cpus", "2", "--memory", "384")
		must(t, "start", "snappy")
		out := must(t, "exec", "snappy", "--", "df", "-k", "/")
		f := strings.Fields(strings.Split(strings.TrimSpace(out), "\n")[1])
		kb, _ := strconv.Atoi(f[1])
		if kb < 3800000 {
			t.Fatalf("root filesystem is %d KiB after growing to 4 GiB:\n%s", kb, out)
		}
		if n := strings.TrimSpace(must(t, "exec", "snappy", "nproc")); n != "2" {
			t.Fatalf("nproc = %s after resize to 2", n)
		}
	})

	t.Run("rename-keeps-snapshots", func(t *testing.T) {
		must(t, "rename", "snappy", "renamed")
		var ss []snapJSON
		mustJSON(t, &ss, "snapshot", "list", "renamed")
		if len(ss) != 2 || ss[0].Name != "one" {
			t.Fatalf("snapshots after rename: %+v", ss)
		}
		if r := minions(t, "", "show", "snappy"); r.code != 3 {
			t.Fatalf("old name still resolves: %s", r)
		}
		if h := strings.TrimSpace(must(t, "exec", "renamed", "hostname")); h != "renamed" {
			t.Fatalf("guest hostname after rename = %q", h)
		}
		// The old name is free at once.
		if r := minions(t, "", "rename", "renamed", "snappy"); r.code != 0 {
			t.Fatalf("rename back: %s", r)
		}
		must(t, "rename", "snappy", "renamed")
	})

	t.Run("copy-is-independent", func(t *testing.T) {
		var c vmJSON
		mustJSON(t, &c, "cp", "renamed", "twin")
		defer minions(t, "", "destroy", "twin", "--yes")
		if c.Name != "twin" || c.IP == "" || c.IP == v.IP || c.ID == v.ID {
			t.Fatalf("copy: %+v (source %+v)", c, v)
		}
		if out := must(t, "exec", "twin", "cat", "/root/state"); out != "before\n" {
			t.Fatalf("copy lacks the source's data: %q", out)
		}
		must(t, "exec", "twin", "--", "sh", "-c", "echo twin-only > /root/mine && sync")
		if r := minions(t, "", "exec", "renamed", "cat", "/root/mine"); r.code == 0 {
			t.Fatalf("a write in the copy appeared in the source: %s", r)
		}
		m1 := must(t, "exec", "renamed", "cat", "/etc/machine-id")
		m2 := must(t, "exec", "twin", "cat", "/etc/machine-id")
		if strings.TrimSpace(m1) == "" || m1 == m2 {
			t.Fatalf("machine-ids: source %q copy %q", m1, m2)
		}
		if h := strings.TrimSpace(must(t, "exec", "twin", "hostname")); h != "twin" {
			t.Fatalf("copy hostname = %q", h)
		}
		// A default name when none is given.
		var d vmJSON
		mustJSON(t, &d, "cp", "renamed", "--from-snapshot", "one")
		defer minions(t, "", "destroy", d.Name, "--yes")
		if d.Name != "renamed-copy" {
			t.Fatalf("default copy name = %q", d.Name)
		}
	})
}

func counter(t *testing.T, vm string) int {
	t.Helper()
	out := must(t, "exec", vm, "cat", "/tmp/counter")
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("counter %q: %v", out, err)
	}
	return n
}
