package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// A VM's cgroup is removed when its VM stops (DeleteCgroup), but a
// process killed between making a cgroup and recording whose it is (kill
// -9 of a daemon mid-create, a test tearing an installation down by
// killing its processes), or a removal that timed out while a process
// was still leaving, leaves an empty group behind for good: on cgroup v1
// one directory per controller. An installation whose VMs' groups sit in
// a group of its own (Config.Installation) can find and remove those:
// SweepCgroups. Groups of other installations are never looked at.

// groupDirs returns the directories of cgroup name: the v2 group, or one
// per mounted v1 controller the jail uses.
func groupDirs(name string) ([]string, error) {
	v2, err := unified()
	if err != nil {
		return nil, err
	}
	if v2 {
		return []string{filepath.Join(unifiedRoot, name)}, nil
	}
	mounts, err := v1Mounts()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range controllers {
		if m, ok := mounts[c]; ok {
			out = append(out, filepath.Join(m, name))
		}
	}
	return out, nil
}

// SweepCgroups removes the child groups of group (an installation's own,
// Config.InstallationCgroup) that keep does not claim, that were made
// before cutoff and that hold no process (nor do groups below them), in
// every hierarchy, then lowers the ancestors' CPU weight. keep is asked
// with a child's name (a VM ID). A group still holding processes stays.
// It returns the names of the groups removed, sorted. A missing group is
// nothing to sweep. It is safe against a concurrent CreateCgroup of a VM
// keep claims, or of one made after cutoff.
func SweepCgroups(group string, keep func(name string) bool, cutoff time.Time) ([]string, error) {
	if group == "" || filepath.Clean(group) != group || filepath.IsAbs(group) {
		return nil, fmt.Errorf("sweep cgroups: %q is not a clean relative group", group)
	}
	dirs, err := groupDirs(group)
	if err != nil {
		return nil, err
	}
	// A child's newest directory tells its age: on v1 it has one per
	// hierarchy.
	newest := map[string]time.Time{}
	for _, d := range dirs {
		entries, err := os.ReadDir(d)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sweep cgroups of %s: %w", group, err)
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			st, err := os.Stat(filepath.Join(d, e.Name()))
			if err != nil {
				continue // removed meanwhile
			}
			if t, ok := newest[e.Name()]; !ok || st.ModTime().After(t) {
				newest[e.Name()] = st.ModTime()
			}
		}
	}
	var removed []string
	var failed []error
	for name, made := range newest {
		if keep(name) || !made.Before(cutoff) {
			continue
		}
		var errList []error
		for _, d := range dirs {
			if err := removeGroup(filepath.Join(d, name)); err != nil {
				errList = append(errList, err)
			}
		}
		if len(errList) > 0 {
			failed = append(failed, errList...)
			continue
		}
		removed = append(removed, name)
		if err := balanceAncestors(group + "/" + name); err != nil {
			failed = append(failed, err)
		}
	}
	slices.Sort(removed)
	return removed, errors.Join(failed...)
}

// PruneCgroup removes group (an installation's own, which stops holding
// anything when its last VM stops) in every hierarchy where it holds no
// child group and no process, then lowers its ancestors' CPU weight. A
// group still in use, or missing, is not an error. CreateCgroup makes the
// group again when it is next needed.
func PruneCgroup(group string) error {
	dirs, err := groupDirs(group)
	if err != nil {
		return err
	}
	var failed []error
	pruned := false
	for _, d := range dirs {
		switch err := unix.Rmdir(d); {
		case err == nil:
			pruned = true
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EBUSY), errors.Is(err, unix.ENOTEMPTY):
		default:
			failed = append(failed, fmt.Errorf("prune cgroup %s: %w", d, err))
		}
	}
	if pruned {
		if err := balanceAncestors(group); err != nil {
			failed = append(failed, err)
		}
	}
	return errors.Join(failed...)
}
