package engine

import (
	"os"
	"syscall"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/disk"
)

// ReserveBytes is the free space on the state filesystem below which
// create and copy are refused up front: a qcow2 overlay, the console log,
// the store's journal and a booting guest's first writes need room, and
// refusing before anything is made leaves nothing to undo. Running out
// part-way is still caught (diskFull) and undone.
const ReserveBytes = 64 << 20

// checkFreeSpace refuses with ResourceExhausted (exit 8) when the state
// filesystem has less than need bytes free. An unreadable free count is
// not a refusal: the operation then fails, cleanly, if space runs out.
func (l *Local) checkFreeSpace(what string, need int64) error {
	return CheckFreeSpace(l.cfg.StateDir, what, need)
}

// CheckFreeSpace is checkFreeSpace for the filesystem of dir (image
// builds use it too).
func CheckFreeSpace(dir, what string, need int64) error {
	free, err := disk.FreeBytes(dir)
	if err != nil || free >= need {
		return nil
	}
	return errs.New(errs.ResourceExhausted, "%s: no space left on the state filesystem (%s): %d MiB free, about %d MiB needed: free space and retry",
		what, dir, free>>20, (need+1<<20-1)>>20)
}

// allocatedBytes is the space file path takes on its filesystem (what a
// full copy of it needs), 0 when it cannot be read.
func allocatedBytes(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Blocks * 512
	}
	return st.Size()
}
