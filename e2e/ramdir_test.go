package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/vm/hypervisor/qemu"
)

// The RAM files of the installations this run makes.
//
// Each installation (state dir) keeps its VMs' RAM files in a directory of
// its own on the machine's tmpfs (local.MemoryDir: /dev/shm/minions/<hash
// of the state dir>), which nothing removes when the state dir goes: a
// test run that left them there held gigabytes of host memory until the
// next reboot. So every installation a test makes is noted here, and when
// it ends (endInstallation: the multi-host teardown, the end of the run
// for the others) its memory dir is checked and removed:
//   - a RAM file that nothing in the installation's state and run dirs
//     names (qemu.UnownedRAMFiles) was leaked by the product: the test
//     fails (unless it failed already: a crash it provoked may leave one);
//   - the RAM files of VMs the test ended without destroying them (named
//     by their run dirs, or kept by their saved state) are the test's own:
//     they are removed with the directory.
// Only the directories of this run's own installations are looked at: a
// concurrent run's on the same machine are never touched.

var installations struct {
	mu sync.Mutex
	m  map[string]string // state dir -> run dir ("" inside the state dir)
}

// noteInstallation records the installation with state dir state (and run
// dir run, "" for the default inside it) for the check at the end of the
// run. Idempotent.
func noteInstallation(state, run string) {
	installations.mu.Lock()
	defer installations.mu.Unlock()
	if installations.m == nil {
		installations.m = map[string]string{}
	}
	installations.m[state] = run
}

// noteTestInstallation notes the installation at state (run dir inside
// it) made by test t, checked and removed when t ends (before its
// temporary directories go). Idempotent.
func noteTestInstallation(t testing.TB, state string) {
	installations.mu.Lock()
	_, noted := installations.m[state]
	installations.mu.Unlock()
	if noted {
		return
	}
	noteInstallation(state, "")
	t.Cleanup(func() { checkInstallation(t, state, "") })
}

// endInstallation checks the memory dir of the installation at state (run
// dir run) and removes it, with whatever is left in it. It returns the RAM
// files nothing in the installation names, with their sizes.
func endInstallation(state, run string) []string {
	installations.mu.Lock()
	delete(installations.m, state)
	installations.mu.Unlock()
	mem := local.MemoryDir(state)
	defer os.RemoveAll(mem)
	roots := []string{state}
	if run != "" {
		roots = append(roots, run)
	}
	left, err := qemu.UnownedRAMFiles(mem, roots...)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", mem, err)}
	}
	var out []string
	for _, p := range left {
		if st, err := os.Stat(p); err == nil {
			out = append(out, fmt.Sprintf("%s (%d MiB, state %s)", p, st.Size()>>20, state))
		}
	}
	return out
}

// checkInstallation is endInstallation for test t: leaked RAM files fail
// it, unless it failed already.
func checkInstallation(t testing.TB, state, run string) {
	t.Helper()
	if left := endInstallation(state, run); len(left) > 0 && !t.Failed() {
		t.Errorf("ram files leaked on the tmpfs (named by no vm or saved state of the installation): %v", left)
	}
}

// endInstallations is endInstallation for every installation still
// noted, at the end of the run; it returns the leaks.
func endInstallations() []string {
	installations.mu.Lock()
	states := make(map[string]string, len(installations.m))
	for s, r := range installations.m {
		states[s] = r
	}
	installations.mu.Unlock()
	var leaks []string
	for s, r := range states {
		leaks = append(leaks, endInstallation(s, r)...)
	}
	sort.Strings(leaks)
	return leaks
}

// TestEndInstallation: the check finds a RAM file nothing names in an
// installation's memory dir, leaves the VM's file a run dir names
// unreported, and removes the directory either way.
func TestEndInstallation(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: the memory dirs are root's")
	}
	state := t.TempDir()
	mem := local.MemoryDir(state)
	if err := os.MkdirAll(mem, 0o711); err != nil {
		t.Skip("no /dev/shm/minions:", err)
	}
	for _, f := range []string{"0123456789ab.ram", "copy-0011223344556677.ram"} {
		if err := os.WriteFile(filepath.Join(mem, f), []byte("ram"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := filepath.Join(state, "run", "vms", "0123456789ab")
	if err := os.MkdirAll(run, 0o700); err != nil {
		t.Fatal(err)
	}
	machine := fmt.Sprintf(`{"id":"0123456789ab","mem_file":%q}`, filepath.Join(mem, "0123456789ab.ram"))
	if err := os.WriteFile(filepath.Join(run, "machine.json"), []byte(machine), 0o600); err != nil {
		t.Fatal(err)
	}
	noteInstallation(state, "")
	left := endInstallation(state, "")
	if want := filepath.Join(mem, "copy-0011223344556677.ram"); len(left) != 1 || !strings.HasPrefix(left[0], want+" ") {
		t.Errorf("leaks %v, want %s only", left, want)
	}
	if _, err := os.Stat(mem); err == nil {
		t.Errorf("%s is left", mem)
	}
	installations.mu.Lock()
	_, noted := installations.m[state]
	installations.mu.Unlock()
	if noted {
		t.Error("the ended installation is still noted")
	}
}

// pathExists reports whether p exists (without following a last link).
func pathExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
