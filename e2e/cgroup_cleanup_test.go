package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A test that ends by killing its installations' processes (the
// several-hosts harness, TestMain's clean-up) ends VMs without their
// driver: their cgroups stayed behind, one empty group per VM left
// running (seen: ~70 under /sys/fs/cgroup/cpu/minions after two days of
// TestMultiHostMoveCrash runs, whose VM still runs when it ends). The
// harness notes the VM cgroups of each process it kills and removes them
// once the processes are gone.

// vmCgroups returns the cgroup directories (one per v1 hierarchy, or the
// v2 group) of process pid that are VM cgroups of the jail
// (/minions/...).
func vmCgroups(pid int) []string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/minions/") {
			continue
		}
		if parts[1] == "" {
			out = append(out, filepath.Join("/sys/fs/cgroup", parts[2]))
			continue
		}
		for _, c := range append(strings.Split(parts[1], ","), parts[1]) {
			d := filepath.Join("/sys/fs/cgroup", c, parts[2])
			if _, err := os.Stat(d); err == nil {
				out = append(out, d)
			}
		}
	}
	return out
}

// removeCgroupDirs removes the cgroup directories dirs (and their parent
// group, an installation's, when that is left empty), waiting up to two
// seconds each for killed processes to leave.
func removeCgroupDirs(dirs []string) {
	seen := map[string]bool{}
	for _, d := range dirs {
		if seen[d] {
			continue
		}
		seen[d] = true
		deadline := time.Now().Add(2 * time.Second)
		for {
			err := unix.Rmdir(d)
			if err == nil || err == unix.ENOENT || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if p := filepath.Dir(d); filepath.Base(filepath.Dir(p)) == "minions" {
			unix.Rmdir(p) // fails while it holds other groups
		}
	}
}
