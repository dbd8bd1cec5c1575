package e2e

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// mirrorHostCgroups mounts the host's cgroup hierarchies (as init sees
// them) at the same places in this mount namespace. `ip netns exec`
// remounts /sys for the new network namespace, which drops the cgroup
// mounts under /sys/fs/cgroup; the VM jail needs them. Mounting a
// hierarchy again attaches to the same one, so cgroups created here are
// the host's.
func mirrorHostCgroups() error {
	own, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	if strings.Contains(string(own), " - cgroup") {
		return nil // already there
	}
	host, err := os.ReadFile("/proc/1/mountinfo")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(host), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || (f[4] != "/sys/fs/cgroup" && !strings.HasPrefix(f[4], "/sys/fs/cgroup/")) {
			continue
		}
		mp, fstype := f[4], g[0]
		var opts []string
		for _, o := range strings.Split(g[2], ",") {
			if o != "rw" && o != "ro" {
				opts = append(opts, o)
			}
		}
		if fstype != "tmpfs" && fstype != "cgroup" && fstype != "cgroup2" {
			continue
		}
		if err := os.MkdirAll(mp, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(fstype, mp, fstype, 0, strings.Join(opts, ",")); err != nil {
			return fmt.Errorf("mount %s %s (%s): %w", fstype, mp, strings.Join(opts, ","), err)
		}
	}
	return nil
}
