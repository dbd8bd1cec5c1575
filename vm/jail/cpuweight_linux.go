package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// The CPU weight of a cgroup is relative to its siblings only: a parent
// such as "minions" holding every VM competes, as a whole, with each
// process of its own parent. Left at the kernel's default (one task's
// weight) it gives all VMs together the CPU share of a single host process,
// so on a busy host (a load of 15 from builds) every guest starves: RCU
// stalls, a console still empty after 90 s. balanceAncestors gives each
// ancestor the sum of its children's weights, which is what the VMs' busy
// threads weighed before they were put in cgroups.

// cpuWeightFile describes the CPU weight file of a hierarchy.
type cpuWeightFile struct {
	root string // the cpu hierarchy's mount point
	name string // cpu.shares (v1) or cpu.weight (v2)
	def  uint64 // the kernel's default: one nice 0 task
	max  uint64 // the largest value the kernel accepts
}

func cpuWeights() (cpuWeightFile, error) {
	v2, err := unified()
	if err != nil {
		return cpuWeightFile{}, err
	}
	if v2 {
		return cpuWeightFile{root: unifiedRoot, name: "cpu.weight", def: 100, max: 10000}, nil
	}
	mounts, err := v1Mounts()
	if err != nil {
		return cpuWeightFile{}, err
	}
	root, err := v1Dir(mounts, "cpu", "")
	if err != nil {
		return cpuWeightFile{}, err
	}
	return cpuWeightFile{root: root, name: "cpu.shares", def: SharesPerCPU, max: 262144}, nil
}

// v2Weight converts cgroup v1 shares to a v2 cpu.weight (1024 -> 100).
func v2Weight(shares uint64) uint64 {
	return min(max(shares*100/SharesPerCPU, 1), 10000)
}

// CgroupCPUWeight reads the CPU weight of cgroup name: cpu.shares on v1,
// cpu.weight on v2.
func CgroupCPUWeight(name string) (uint64, error) {
	w, err := cpuWeights()
	if err != nil {
		return 0, err
	}
	return readWeight(filepath.Join(w.root, name, w.name))
}

func readWeight(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return n, nil
}

// balanceMu serialises balanceAncestors within the process; a lock on the
// top ancestor's directory serialises it between processes (daemons and
// tests sharing a parent).
var balanceMu sync.Mutex

// balanceAncestors sets the CPU weight of each ancestor of cgroup name,
// deepest first, to the sum of its children's weights (at least the
// kernel's default, at most its maximum). Missing ancestors are skipped.
func balanceAncestors(name string) error {
	parts := strings.Split(strings.Trim(name, "/"), "/")
	if len(parts) < 2 {
		return nil // a child of the root: its weight is its own
	}
	w, err := cpuWeights()
	if err != nil {
		return err
	}
	balanceMu.Lock()
	defer balanceMu.Unlock()
	if fd, err := unix.Open(filepath.Join(w.root, parts[0]), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		defer unix.Close(fd)
		if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
			return fmt.Errorf("lock cgroup %s: %w", parts[0], err)
		}
	}
	for i := len(parts) - 1; i >= 1; i-- {
		dir := filepath.Join(append([]string{w.root}, parts[:i]...)...)
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("balance cpu weight of cgroup %s: %w", strings.Join(parts[:i], "/"), err)
		}
		var sum uint64
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			// A child being removed meanwhile simply does not count.
			if n, err := readWeight(filepath.Join(dir, e.Name(), w.name)); err == nil {
				sum += n
			}
		}
		v := min(max(sum, w.def), w.max)
		if err := writeExisting(filepath.Join(dir, w.name), strconv.FormatUint(v, 10)); err != nil {
			// Not there: the group went, or (v2) the cpu controller is
			// not enabled for it.
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return fmt.Errorf("balance cpu weight of cgroup %s: %w", strings.Join(parts[:i], "/"), err)
		}
	}
	return nil
}
