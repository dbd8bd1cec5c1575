package engine

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKillByRunDir: a VM's processes whose handle was never recorded are
// found by their command lines (the agent relay keeps no pid file): one
// naming a file of the run dir after a '=' and one naming it as an
// argument are killed; one naming a sibling run dir whose name starts
// the same is not.
func TestKillByRunDir(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	root := t.TempDir()
	dir := filepath.Join(root, "0123456789ab")
	os.MkdirAll(dir, 0o700)
	start := func(argv0 string) *exec.Cmd {
		t.Helper()
		c := exec.Command("bash", "-c", `exec -a "$0" sleep 60`, argv0)
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(c.Process.Pid) + "/cmdline")
			if strings.HasPrefix(string(b), argv0) {
				return c
			}
			if time.Now().After(deadline) {
				t.Fatalf("%q never started: %q", argv0, b)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	relay := start("relay --listen=" + dir + "/vsock.sock")
	qemu := start(dir + "/qemu.log")
	other := start("relay --listen=" + dir + "cd/vsock.sock")
	exited := func(c *exec.Cmd) bool {
		var ws syscall.WaitStatus
		pid, _ := syscall.Wait4(c.Process.Pid, &ws, syscall.WNOHANG, nil)
		return pid == c.Process.Pid
	}
	killByRunDir(dir)
	for name, c := range map[string]*exec.Cmd{"relay": relay, "qemu": qemu} {
		deadline := time.Now().Add(5 * time.Second)
		for !exited(c) {
			if time.Now().After(deadline) {
				t.Fatalf("%s (naming the run dir) not killed", name)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if exited(other) || syscall.Kill(other.Process.Pid, 0) != nil {
		t.Error("the process of another run dir was killed")
	}
}
