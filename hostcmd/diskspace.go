package hostcmd

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
)

// statfsFunc returns the bytes available to unprivileged users and the
// size of the filesystem holding path.
type statfsFunc func(path string) (free, total uint64, err error)

// statfs is statfsFunc for the real host.
func statfs(path string) (free, total uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, err
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}

// freeSpaceCheck is doctor's "free disk" line for the filesystem holding
// the state directory (its nearest existing ancestor before the first
// `minions init`): not OK below minMiB free. A full state filesystem makes
// create, snapshot, copy and image build fail with exit 8.
func freeSpaceCheck(stateDir string, minMiB int, fs statfsFunc) check {
	dir := stateDir
	for {
		if _, err := os.Stat(dir); err == nil || filepath.Dir(dir) == dir {
			break
		}
		dir = filepath.Dir(dir)
	}
	free, total, err := fs(dir)
	if err != nil {
		return check{What: "free disk", OK: false, Detail: fmt.Sprintf("statfs %s: %v", dir, err)}
	}
	pct := 0.0
	if total > 0 {
		pct = 100 * float64(free) / float64(total)
	}
	c := check{What: "free disk", OK: free >= uint64(minMiB)<<20,
		Detail: fmt.Sprintf("%d MiB free of %d MiB (%.0f%%) on the filesystem of %s", free>>20, total>>20, pct, stateDir)}
	if !c.OK {
		c.Detail += fmt.Sprintf(": below min_free_space_mib %d; VM creates, snapshots and image builds will fail when it fills", minMiB)
	}
	return c
}

// imageBuildReserve is the free space below which an image build on this
// host is refused before it starts (running out later is still exit 8,
// with the build's temporary directory removed).
const imageBuildReserve = 64 << 20

// checkImageSpace refuses an image build with ResourceExhausted when the
// state filesystem at stateDir has less than imageBuildReserve free.
func checkImageSpace(stateDir, osName string) error {
	free, _, err := statfs(stateDir)
	if err != nil || free >= imageBuildReserve {
		return nil
	}
	return errs.New(errs.ResourceExhausted, "build image %s: no space left on the state filesystem (%s): %d MiB free: free space and retry", osName, stateDir, free>>20)
}
