package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/jail/jailexec"
)

// The cgroup file system is written directly (mkdir, control files,
// rmdir): a cgroup library (github.com/containerd/cgroups) brought 48
// packages into the minions binary (protobuf, eBPF, D-Bus, logrus), whose
// package init every command paid for at start, and its v1 set-up read the
// mount table once per controller.

// unifiedRoot is where a pure cgroup v2 host mounts its hierarchy.
const unifiedRoot = "/sys/fs/cgroup"

// controllers are the ones a VM's cgroup is limited by.
var controllers = jailexec.Controllers

// ErrNoController is wrapped by the errors of CreateCgroup (class
// errs.FailedPrecondition) when a controller the jail limits a VM by is
// not enabled where the VM's group would be.
var ErrNoController = errors.New("cgroup controller not enabled on this host")

// CgroupInfo describes the host's cgroups for doctor.
type CgroupInfo struct {
	// Version is "v2" on a unified host, "v1" on a legacy or hybrid host
	// (v1 controllers; a v2 hierarchy may be mounted without them).
	Version string `json:"version"`
	// Controllers are the ones the jail uses that are available.
	Controllers []string `json:"controllers"`
	// Detail is a human description.
	Detail string `json:"detail"`
}

// Missing returns the controllers the jail needs that info lacks.
func (i CgroupInfo) Missing() []string {
	var out []string
	for _, c := range controllers {
		if !slices.Contains(i.Controllers, c) {
			out = append(out, c)
		}
	}
	return out
}

// unified reports whether the host runs a pure cgroup v2 hierarchy (the
// file system type of /sys/fs/cgroup).
func unified() (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(unifiedRoot, &st); err != nil {
		return false, errs.New(errs.FailedPrecondition, "no cgroup hierarchy mounted under %s", unifiedRoot)
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC, nil
}

// hybrid reports whether a v1 host also mounts the v2 hierarchy (without
// the controllers) at /sys/fs/cgroup/unified.
func hybrid() bool {
	var st unix.Statfs_t
	return unix.Statfs(filepath.Join(unifiedRoot, "unified"), &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// Cgroups inspects the host's cgroups.
func Cgroups() (CgroupInfo, error) {
	v2, err := unified()
	if err != nil {
		return CgroupInfo{}, err
	}
	if v2 {
		b, err := os.ReadFile(filepath.Join(unifiedRoot, "cgroup.controllers"))
		if err != nil {
			return CgroupInfo{}, fmt.Errorf("read cgroup v2 controllers: %w", err)
		}
		have := strings.Fields(string(b))
		info := CgroupInfo{Version: "v2", Detail: "unified hierarchy at " + unifiedRoot}
		for _, c := range controllers {
			if slices.Contains(have, c) {
				info.Controllers = append(info.Controllers, c)
			}
		}
		return info, nil
	}
	mounts, err := v1Mounts()
	if err != nil {
		return CgroupInfo{}, err
	}
	info := CgroupInfo{Version: "v1", Detail: "v1 controllers"}
	if hybrid() {
		info.Detail += " (hybrid: the v2 hierarchy is mounted without them)"
	}
	for _, c := range controllers {
		if _, ok := mounts[c]; ok {
			info.Controllers = append(info.Controllers, c)
		}
	}
	slices.Sort(info.Controllers)
	return info, nil
}

// v1Mounts maps each of controllers that is mounted (v1) to its
// hierarchy's mount point. A mount point must be a cgroup file system
// where it is looked at: one hidden under another mount (a tmpfs over
// /sys/fs/cgroup) is still listed in the mount table. None at all is an
// errs.FailedPrecondition.
func v1Mounts() (map[string]string, error) {
	all, err := jailexec.V1Mounts()
	if err != nil {
		return nil, fmt.Errorf("cgroup v1 hierarchy: %w", err)
	}
	out := map[string]string{}
	for _, c := range controllers {
		var st unix.Statfs_t
		if m, ok := all[c]; ok && unix.Statfs(m, &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC {
			out[c] = m
		}
	}
	if len(out) == 0 {
		return nil, errs.New(errs.FailedPrecondition, "cgroup v1 hierarchy: none of the controllers %s is mounted", strings.Join(controllers, ", "))
	}
	return out, nil
}

// v1Dir is the directory of cgroup name in controller c's v1 hierarchy.
func v1Dir(mounts map[string]string, c, name string) (string, error) {
	m, ok := mounts[c]
	if !ok {
		return "", errs.New(errs.FailedPrecondition, "no cgroup v1 %s controller", c)
	}
	return filepath.Join(m, name), nil
}

// writeControl writes one control file of a cgroup directory. A file
// that is not there is os.ErrNotExist (the cgroup file system refuses to
// create one with EACCES: it is never created).
func writeControl(dir, file, value string) error {
	if err := writeExisting(filepath.Join(dir, file), value); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	return nil
}

// writeExisting writes value to the existing file path.
func writeExisting(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// CreateCgroup creates (or updates) the cgroup name (relative to the
// hierarchy root, e.g. "minions/<vm id>") with limits l, on v1 in the cpu,
// memory and pids hierarchies, and raises its ancestors' CPU weight to the
// sum of their children's (see balanceAncestors). A host lacking one of
// these controllers is an errs.FailedPrecondition; on v2, where a
// controller must also be passed down by each ancestor, one that is not
// offered where the group would be wraps ErrNoController, and nothing is
// left created.
func CreateCgroup(name string, l Limits) error {
	v2, err := unified()
	if err != nil {
		return err
	}
	if v2 {
		info, err := Cgroups()
		if err != nil {
			return err
		}
		if m := info.Missing(); len(m) > 0 {
			return errs.New(errs.FailedPrecondition, "create cgroup %s: %w: the cgroup v2 hierarchy at %s does not offer %s (they are bound to cgroup v1, or not delegated)",
				name, ErrNoController, unifiedRoot, strings.Join(m, ", "))
		}
		if err := retryPruned(func() error { return createV2(name, l, controllers) }); err != nil {
			return fmt.Errorf("create cgroup %s: %w", name, err)
		}
		return balanceAncestors(name)
	}
	mounts, err := v1Mounts()
	if err != nil {
		return err
	}
	if len(mounts) < len(controllers) {
		return errs.New(errs.FailedPrecondition, "create cgroup %s: cgroup v1 controllers missing (have %d of cpu, memory, pids)", name, len(mounts))
	}
	if err := retryPruned(func() error { return createV1(mounts, name, l) }); err != nil {
		return fmt.Errorf("create cgroup %s: %w", name, err)
	}
	return balanceAncestors(name)
}

// retryPruned runs create again when it failed on a missing directory: a
// PruneCgroup of the parent (another VM of the installation stopping)
// may remove it between its mkdirs.
func retryPruned(create func() error) error {
	var err error
	for range 5 {
		if err = create(); !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return err
}

// createV2 makes the v2 group (and its missing ancestors), enables ctrls
// (CreateCgroup: all of controllers) for it in each ancestor's
// cgroup.subtree_control and writes its limits of those controllers.
// Only the immediate parent's subtree_control must take (an ancestor may
// refuse a write that is already in effect). A controller the parent
// does not offer (the kernel's ENOENT for the subtree_control write or a
// control file) wraps ErrNoController, not os.ErrNotExist. On an error
// the directories it made are removed again.
func createV2(name string, l Limits, ctrls []string) (err error) {
	parts := strings.Split(strings.Trim(name, "/"), "/")
	var made []string
	defer func() {
		if err != nil {
			for i := len(made) - 1; i >= 0; i-- {
				unix.Rmdir(made[i]) // a sibling made meanwhile keeps it
			}
		}
	}()
	for i := range parts {
		d := filepath.Join(append([]string{unifiedRoot}, parts[:i+1]...)...)
		switch err := unix.Mkdir(d, 0o755); {
		case err == nil:
			made = append(made, d)
			stamp(d)
		case !errors.Is(err, unix.EEXIST):
			return &os.PathError{Op: "mkdir", Path: d, Err: err}
		}
	}
	dir := filepath.Join(unifiedRoot, name)
	if len(ctrls) > 0 {
		enable := "+" + strings.Join(ctrls, " +")
		var lastErr error
		var parent string
		for i := range parts {
			parent = filepath.Join(append([]string{unifiedRoot}, parts[:i]...)...)
			lastErr = writeControl(parent, "cgroup.subtree_control", enable)
		}
		if lastErr != nil {
			return noController(parent, ctrls, lastErr)
		}
	}
	type kv struct{ ctrl, file, value string }
	var w []kv
	if l.CPUShares > 0 {
		w = append(w, kv{"cpu", "cpu.weight", strconv.FormatUint(v2Weight(l.CPUShares), 10)})
	}
	w = append(w, kv{"cpu", "cpu.max", strconv.FormatInt(l.CPUQuotaUs, 10) + " " + strconv.FormatUint(l.CPUPeriodUs, 10)},
		kv{"memory", "memory.max", strconv.FormatInt(l.MemoryBytes, 10)})
	if l.PidsMax != 0 {
		w = append(w, kv{"pids", "pids.max", pidsMax(l.PidsMax)})
	}
	for _, x := range w {
		if !slices.Contains(ctrls, x.ctrl) {
			continue
		}
		if err := writeControl(dir, x.file, x.value); err != nil {
			return noController(dir, []string{x.ctrl}, err)
		}
	}
	return nil
}

// noController returns err, a failed write to a control file of v2
// group dir: ErrNoController if the kernel's ENOENT meant that one of
// ctrls is not offered to dir (its cgroup.controllers), else err as is
// (a directory removed meanwhile stays an os.ErrNotExist).
func noController(dir string, ctrls []string, err error) error {
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	b, rerr := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if rerr != nil {
		return err
	}
	have := strings.Fields(string(b))
	var missing []string
	for _, c := range ctrls {
		if !slices.Contains(have, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return err
	}
	return errs.New(errs.FailedPrecondition, "%w: %s is not offered %s (its parent does not pass them on in cgroup.subtree_control, or they are bound to cgroup v1)",
		ErrNoController, dir, strings.Join(missing, ", "))
}

// createV1 makes the group in the cpu, memory and pids hierarchies and
// writes its limits: CPU shares, CFS period and quota; memory limit; pids.
func createV1(mounts map[string]string, name string, l Limits) error {
	for _, c := range controllers {
		dir, err := v1Dir(mounts, c, name)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		stamp(dir)
		switch c {
		case "cpu":
			if l.CPUShares > 0 {
				err = writeControl(dir, "cpu.shares", strconv.FormatUint(l.CPUShares, 10))
			}
			if err == nil {
				err = writeControl(dir, "cpu.cfs_period_us", strconv.FormatUint(l.CPUPeriodUs, 10))
			}
			if err == nil {
				err = writeControl(dir, "cpu.cfs_quota_us", strconv.FormatInt(l.CPUQuotaUs, 10))
			}
		case "memory":
			err = writeControl(dir, "memory.limit_in_bytes", strconv.FormatInt(l.MemoryBytes, 10))
		case "pids":
			if l.PidsMax > 0 {
				err = writeControl(dir, "pids.max", pidsMax(l.PidsMax))
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// stamp looks the new cgroup directory dir up once. The cgroup file
// system (kernfs) gives a directory its times when the kernel first looks
// it up, not at mkdir: a group nothing looked into (a v2 group without
// controllers, a v1 pids group without a limit) would otherwise be as old
// as the first stat of it, which SweepCgroups reads as its age. (An inode
// the kernel evicts gets a new time when looked up again: a group can
// only look younger than it is, never older.)
func stamp(dir string) {
	var st unix.Stat_t
	_ = unix.Stat(dir, &st)
}

// pidsMax renders a pids limit: "max" for no limit (negative).
func pidsMax(n int64) string {
	if n < 0 {
		return "max"
	}
	return strconv.FormatInt(n, 10)
}

// JoinCgroup moves process pid into cgroup name (every v1 hierarchy of
// the jail's controllers, or the v2 group).
func JoinCgroup(name string, pid int) error {
	return jailexec.JoinCgroup(name, pid)
}

// DeleteCgroup removes cgroup name once it is empty, waiting up to two
// seconds for exiting processes to leave it, and lowers its ancestors' CPU
// weight (see balanceAncestors). A missing cgroup is not an error
// (idempotent).
func DeleteCgroup(name string) error {
	v2, err := unified()
	if err != nil {
		return err
	}
	del := func() error {
		if v2 {
			return removeGroup(filepath.Join(unifiedRoot, name))
		}
		mounts, err := v1Mounts()
		if err != nil {
			return err
		}
		var failed []error
		for _, c := range controllers {
			if m, ok := mounts[c]; ok {
				if err := removeGroup(filepath.Join(m, name)); err != nil {
					failed = append(failed, fmt.Errorf("%s: %w", c, err))
				}
			}
		}
		return errors.Join(failed...)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := del()
		if err == nil {
			return balanceAncestors(name)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("delete cgroup %s: %w", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CgroupMemoryMax reads the memory limit of cgroup name in bytes (-1 for
// no limit).
func CgroupMemoryMax(name string) (int64, error) {
	v2, err := unified()
	if err != nil {
		return 0, err
	}
	file := filepath.Join(unifiedRoot, name, "memory.max")
	if !v2 {
		mounts, err := v1Mounts()
		if err != nil {
			return 0, err
		}
		dir, err := v1Dir(mounts, "memory", name)
		if err != nil {
			return 0, err
		}
		file = filepath.Join(dir, "memory.limit_in_bytes")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return -1, nil
	}
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil {
		return 0, fmt.Errorf("parse %s: %w", file, err)
	}
	return n, nil
}

// removeGroup removes the cgroup directory dir and the groups below it,
// deepest first, once no process is left in any of them. A missing dir is
// not an error.
func removeGroup(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return err
		}
		if len(strings.TrimSpace(string(b))) > 0 {
			return fmt.Errorf("cgroup %s still holds processes", p)
		}
		dirs = append(dirs, p)
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil // removed meanwhile
	}
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove cgroup %s: %w", dirs[i], err)
		}
	}
	return nil
}
