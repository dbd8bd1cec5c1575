package jailexec

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
)

// cgroupRoot is where the host mounts its cgroup hierarchies.
const cgroupRoot = "/sys/fs/cgroup"

// Controllers are the v1 controllers a VM's cgroup exists in (package
// jail creates it in each); on a pure v2 host it is one directory.
var Controllers = []string{"cpu", "memory", "pids"}

// JoinCgroup moves pid into cgroup name (relative to the hierarchy root,
// as jail.CreateCgroup made it): on a pure v2 host the one directory, on
// a v1 or hybrid host the directory of each of Controllers whose
// hierarchy is mounted and holds it (jail.JoinCgroup is this function).
// A cgroup that exists in none is an error.
func JoinCgroup(name string, pid int) error {
	dirs, _, err := cgroupDirs(name)
	if err != nil {
		return err
	}
	return joinCgroupDirs(name, dirs, "cgroup.procs", pid)
}

// cgroupDirs is where cgroup name is: on a pure v2 host its one
// directory (v2 set), on a v1 or hybrid host the directory in each of
// Controllers' hierarchies that is mounted (which may not hold it).
func cgroupDirs(name string) (dirs []string, v2 bool, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil {
		return nil, false, errs.New(errs.FailedPrecondition, "join cgroup %s: no cgroup hierarchy mounted under %s: %v", name, cgroupRoot, err)
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return []string{filepath.Join(cgroupRoot, name)}, true, nil
	}
	mounts, err := V1Mounts()
	if err != nil {
		return nil, false, fmt.Errorf("join cgroup %s: %w", name, err)
	}
	for _, c := range Controllers {
		if m, ok := mounts[c]; ok {
			dirs = append(dirs, filepath.Join(m, name))
		}
	}
	return dirs, false, nil
}

// joinCgroupDirs writes id into file (cgroup.procs: a process; tasks:
// one thread, v1 only) of each of dirs that exists, the dirs of cgroup
// name. A cgroup that exists in none is an error.
func joinCgroupDirs(name string, dirs []string, file string, id int) error {
	joined := 0
	for _, d := range dirs {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := os.WriteFile(filepath.Join(d, file), []byte(strconv.Itoa(id)), 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", name, err)
		}
		joined++
	}
	if joined == 0 {
		return errs.New(errs.NotFound, "join cgroup %s: it does not exist (looked in %v)", name, dirs)
	}
	return nil
}

// V1Mounts maps each v1 controller to the mount point of its hierarchy,
// from /proc/self/mountinfo ("... - cgroup cgroup rw,cpu,cpuacct").
func V1Mounts() (map[string]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, af := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(af) < 3 || af[0] != "cgroup" {
			continue
		}
		for _, o := range strings.Split(af[2], ",") {
			if _, seen := out[o]; !seen {
				out[o] = unescapeMount(pf[4])
			}
		}
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
