package guestagent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// schedPolicy returns the scheduling policy of a task (field 41 of
// /proc/PID/stat; 5 is SCHED_IDLE).
func schedPolicy(t *testing.T, stat string) int {
	t.Helper()
	b, err := os.ReadFile(stat)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	p, err := strconv.Atoi(f[41-3]) // fields after "pid (comm)" start at 3
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestStartIdle: a process started by startIdle runs in the idle
// scheduling class (it gets the CPU only when nothing else wants it), and
// no thread of the agent is left in that class.
func TestStartIdle(t *testing.T) {
	cmd := exec.Command("sleep", "5")
	wait, err := startIdle(nil, cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); wait() }()
	if p := schedPolicy(t, "/proc/"+strconv.Itoa(cmd.Process.Pid)+"/stat"); p != 5 {
		t.Errorf("child's scheduling policy %d, want 5 (SCHED_IDLE)", p)
	}
	var left []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		left = nil
		tasks, _ := filepath.Glob("/proc/self/task/*/stat")
		for _, s := range tasks {
			if _, err := os.Stat(s); err == nil && schedPolicy(t, s) != 0 {
				left = append(left, s)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("agent threads left in another scheduling class: %v", left)
	}
}

// TestWarmShell runs the root user's shell of a guest root the way a
// first command would (here the test host's /bin/sh, which changes
// nothing), idle, and waits for it.
func TestWarmShell(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/nonexistent:/bin/sh\n"), 0o644)
	took, err := runWarmShell(root, nil)
	if err != nil || took <= 0 {
		t.Fatalf("runWarmShell = %v, %v", took, err)
	}
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/false\n"), 0o644)
	if _, err := runWarmShell(root, nil); err == nil {
		t.Error("a shell that fails was reported warmed")
	}
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("nobody:x:65534:65534::/:/bin/sh\n"), 0o644)
	if _, err := runWarmShell(root, nil); err == nil {
		t.Error("no root user, yet warmed")
	}
}

// TestAfterReidentifyWarmsShell: once the reply is sent, the agent warms
// the shell (the guarded default does nothing outside a guest).
func TestAfterReidentifyWarmsShell(t *testing.T) {
	f := newReidFixture(t, signer(t))
	f.srv.afterReidentify()
	select {
	case root := <-f.warmed:
		if root != f.root {
			t.Errorf("warmed the shell of %q, want %q", root, f.root)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the shell was not warmed after re-identification")
	}
}
