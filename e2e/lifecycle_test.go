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
		must(t, "exec", "snappy", "--", "sh", "-c", "(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.2; done) >/dev/null 2>&1 &")
		// The counter file is replaced by rename, never seen empty (not
		// even by a snapshot taken mid-write).
		pollUntil(t, "the counter runs", 30*time.Second, func() bool { return counterOr0(t, "snappy") >= 3 })
		// The snapshot holds a value between these two readings.
		before := counter(t, "snappy")
		var s snapJSON
		mustJSON(t, &s, "snapshot", "create", "snappy", "--name", "mem", "--memory")
		if !s.Memory {
			t.Fatalf("memory snapshot: %+v", s)
		}
		saved := counter(t, "snappy")
		// Let it run well ahead of the snapshot.
		ranTo := 0
		pollUntil(t, "the counter runs ahead", 60*time.Second, func() bool {
			ranTo = counter(t, "snappy")
			return ranTo >= saved+20
		})
		must(t, "snapshot", "restore", "snappy", "mem", "--yes")
		after := counter(t, "snappy")
		// /tmp is in memory: the counter continues from where it was
		// saved, not from where it ran to, and keeps counting.
		if after < before || after >= ranTo {
			t.Fatalf("counter after restore = %d, saved between %d and %d, ran to %d", after, before, saved, ranTo)
		}
		pollUntil(t, "the counter counts after restore", 30*time.Second, func() bool { return counter(t, "snappy") > after })
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
		if v.CPUs != 2 || v.Memory != 384 {
			t.Fatalf("resize answered %+v, want 2 cpus 384 MiB", v)
		}
		must(t, "start", "snappy")
		// The guest sees the new memory: MemTotal is the size less what
		// the kernel keeps (it was 256 MiB).
		mem := must(t, "exec", "snappy", "--", "grep", "MemTotal", "/proc/meminfo")
		var memKB int
		if f := strings.Fields(mem); len(f) >= 2 {
			memKB, _ = strconv.Atoi(f[1])
		}
		if memKB < 320*1024 || memKB > 384*1024 {
			t.Fatalf("guest MemTotal after resize to 384 MiB: %q", mem)
		}
		var shown vmJSON
		mustJSON(t, &shown, "show", "snappy")
		if shown.CPUs != 2 || shown.Memory != 384 {
			t.Fatalf("show after resize: %+v", shown)
		}
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
		// From a snapshot: the copy holds the snapshot's data, not the
		// source's current data. A default name when none is given.
		must(t, "exec", "renamed", "--", "sh", "-c", "echo since-snapshot > /root/state && sync")
		var d vmJSON
		mustJSON(t, &d, "cp", "renamed", "--from-snapshot", "one")
		defer minions(t, "", "destroy", d.Name, "--yes")
		if d.Name != "renamed-copy" {
			t.Fatalf("default copy name = %q", d.Name)
		}
		if out := must(t, "exec", d.Name, "cat", "/root/state"); out != "before\n" {
			t.Fatalf("copy from snapshot one has %q in /root/state, want the snapshot's %q", out, "before\n")
		}
		if out := must(t, "exec", "renamed", "cat", "/root/state"); out != "since-snapshot\n" {
			t.Fatalf("copying from a snapshot changed the source: %q", out)
		}
	})
}

// pollUntil calls cond until it is true, failing the test after timeout.
func pollUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// counterOr0 is counter, with 0 while the counter file does not exist yet.
func counterOr0(t *testing.T, vm string) int {
	t.Helper()
	r := minions(t, "", "exec", vm, "cat", "/tmp/counter")
	n, _ := strconv.Atoi(strings.TrimSpace(r.stdout))
	return n
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
