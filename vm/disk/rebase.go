package disk

import (
	"context"
	"fmt"
	"path/filepath"
)

// SetBacking rewrites which file the qcow2 disk at path names as its
// backing file, without reading or changing any data (qemu-img rebase -u):
// for a disk moved together with an identical copy of its base, e.g. by a
// backup restored into another state directory. backing must be absolute;
// nothing checks that it holds what the old one held.
func SetBacking(ctx context.Context, path, backing, backingFormat string) error {
	if !filepath.IsAbs(backing) {
		return fmt.Errorf("set backing of %s: %s is not an absolute path", path, backing)
	}
	if _, err := qemuImg(ctx, "rebase", "-q", "-u", "-f", FormatQcow2, "-b", backing, "-F", backingFormat, path); err != nil {
		return fmt.Errorf("set backing of %s: %w", path, err)
	}
	return nil
}

// Rebase makes the qcow2 disk at path an overlay of backing instead of
// its current backing file, keeping what the guest reads the same: the
// clusters that differ between the old chain and backing are copied into
// the disk first, and the header names backing last (qemu-img rebase,
// safe mode), so an interrupted rebase leaves a disk that still reads as
// before through its old chain. The disk must not be open for writing
// (a running VM's is refused by qemu-img's lock). backing must be
// absolute and in the old chain's content below the layer it replaces.
func Rebase(ctx context.Context, path, backing, backingFormat string) error {
	if !filepath.IsAbs(backing) {
		return fmt.Errorf("rebase %s: %s is not an absolute path", path, backing)
	}
	if _, err := qemuImg(ctx, "rebase", "-q", "-f", FormatQcow2, "-b", backing, "-F", backingFormat, path); err != nil {
		return fmt.Errorf("rebase %s onto %s: %w", path, backing, err)
	}
	return nil
}
