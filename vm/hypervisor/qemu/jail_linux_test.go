package qemu

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/vm/jail"
	"github.com/minionsdev/minions/vm/jail/jailexec"
)

// procUID returns the real uid of pid (/proc/PID/status).
func procUID(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			return f[1]
		}
	}
	t.Fatalf("no Uid line for pid %d", pid)
	return ""
}

// procCgroups returns the cgroup paths of pid, one per line of
// /proc/PID/cgroup.
func procCgroups(t *testing.T, pid int) []string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if parts := strings.SplitN(sc.Text(), ":", 3); len(parts) == 3 {
			out = append(out, strings.TrimPrefix(parts[2], "/"))
		}
	}
	return out
}

// TestJailedVM checks a real VM's QEMU and relay: both run as the uid
// derived from the CID, in the VM's cgroup whose memory limit is guest
// memory plus the overhead, in a mount namespace that is not the host's;
// Kill removes the cgroup.
func TestJailedVM(t *testing.T) {
	d, newSpec := vmFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec := newSpec(t)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), h)
	wantUID := fmt.Sprint(jail.DefaultUIDBase + spec.VsockCID)
	cg := "minions-test/" + spec.ID
	if h.UID == 0 || fmt.Sprint(h.UID) != wantUID || h.Cgroup != cg {
		t.Fatalf("handle uid %d cgroup %q, want %s and %s", h.UID, h.Cgroup, wantUID, cg)
	}
	if len(h.Helpers) != 1 {
		t.Fatalf("helpers %+v", h.Helpers)
	}
	hostNS, _ := os.Readlink("/proc/self/ns/mnt")
	for name, pid := range map[string]int{"qemu": h.PID, "relay": h.Helpers[0].PID} {
		if got := procUID(t, pid); got != wantUID {
			t.Errorf("%s runs as uid %s, want %s", name, got, wantUID)
		}
		found := false
		for _, p := range procCgroups(t, pid) {
			found = found || p == cg
		}
		if !found {
			t.Errorf("%s is not in cgroup %s: %v", name, cg, procCgroups(t, pid))
		}
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); ns == hostNS {
			t.Errorf("%s shares the host's mount namespace", name)
		}
	}
	// The relay's Go runtime starts with one P (relayEnv).
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", h.Helpers[0].PID))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(strings.TrimRight(string(env), "\x00"), "\x00"); !slices.Contains(got, "GOMAXPROCS=1") || !slices.Contains(got, jailexec.CleanEnv[0]) {
		t.Errorf("relay environment %q, want the clean one with GOMAXPROCS=1", got)
	}
	if got, err := jail.CgroupMemoryMax(cg); err != nil || got != int64(spec.MemoryMiB+jail.DefaultMemoryOverheadMiB)<<20 {
		t.Errorf("memory max = %d, %v; want %d MiB", got, err, spec.MemoryMiB+jail.DefaultMemoryOverheadMiB)
	}
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatal(err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := jail.CgroupMemoryMax(cg); err == nil {
		t.Errorf("cgroup %s left after Kill", cg)
	}
}

// TestRunDirFilesAreChecked: in a run dir the VM's uid owns, the driver
// trusts only a machine.json and console FIFO that are still root's.
func TestRunDirFilesAreChecked(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	if err := writeFileAtomic(filepath.Join(dir, machineFile), []byte(`{"id":"x"}`)); err != nil {
		t.Fatal(err)
	}
	if m, err := readMachine(dir); err != nil || m.ID != "x" {
		t.Fatalf("readMachine = %+v, %v", m, err)
	}
	if err := os.Chown(filepath.Join(dir, machineFile), 2_000_000_099, 2_000_000_099); err != nil {
		t.Fatal(err)
	}
	if _, err := readMachine(dir); err == nil {
		t.Error("a machine.json owned by the VM's uid was trusted")
	}
	fifo := filepath.Join(dir, "console.fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := shareFIFO(fifo, 2_000_000_099); err != nil {
		t.Fatal(err)
	}
	if err := checkFIFO(fifo); err != nil {
		t.Errorf("the driver's fifo: %v", err)
	}
	os.Remove(fifo)
	if err := os.Symlink("/etc/shadow", fifo); err != nil {
		t.Fatal(err)
	}
	if err := checkFIFO(fifo); err == nil {
		t.Error("a symlink in place of the fifo was accepted")
	}
	if err := shareFIFO(fifo, 2_000_000_099); err == nil {
		t.Error("shareFIFO followed a symlink")
	}
}
