package hostcmd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/daemon/local"
)

// TestRAMChecks: doctor names this installation's RAM files that no VM or
// saved state names, and the memory dirs of gone installations (their
// record names a state dir that no longer exists) and unrecorded ones
// apart from live and empty ones; a clean host gets two ok lines.
func TestRAMChecks(t *testing.T) {
	root, err := os.MkdirTemp("/dev/shm", "doctor")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	state := t.TempDir()
	paths := local.Paths{State: state, Run: filepath.Join(state, "run")}
	mem := filepath.Join(root, "own")
	dir := func(name, owner string, files ...string) {
		t.Helper()
		d := filepath.Join(root, name)
		if err := os.MkdirAll(d, 0o711); err != nil {
			t.Fatal(err)
		}
		if owner != "" {
			// The record holds the state dir and its file system's
			// device (every state here is under the test's temp dir).
			var st unix.Stat_t
			if err := unix.Stat(state, &st); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(d, "installation"), []byte(fmt.Sprintf("%s\ndev %d\n", owner, st.Dev)), 0o600)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(d, f), make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	dir("own", state)
	dir("live", t.TempDir(), "0123456789ab.ram")
	dir("empty", "")
	checks := ramChecks(mem, paths)
	if len(checks) != 2 || !checks[0].OK || !checks[1].OK || !strings.Contains(checks[1].Detail, "2 other installations' memory dirs") {
		t.Fatalf("clean host: %+v", checks)
	}

	dir("own", state, "copy-0011223344556677.ram")
	dir("gone", filepath.Join(state, "gone"), "copy-8899aabbccddeeff.ram")
	dir("unrecorded", "", "0123456789cd.ram")
	checks = ramChecks(mem, paths)
	if len(checks) != 2 {
		t.Fatalf("checks %+v", checks)
	}
	if c := checks[0]; c.OK || !strings.Contains(c.Detail, "1 of them (1 MiB) named by no vm or saved state of this installation: copy-0011223344556677.ram") {
		t.Errorf("own leak: %+v", c)
	}
	if c := checks[1]; c.OK || !strings.Contains(c.Detail, "1 of installations that are gone: 1 files, 1 MiB") ||
		!strings.Contains(c.Detail, "1 without a record of their installation holding files no process uses: 1 files, 1 MiB") {
		t.Errorf("others: %+v", c)
	}
}
