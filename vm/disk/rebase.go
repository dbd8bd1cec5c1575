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
